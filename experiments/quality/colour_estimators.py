"""wespe_plus's colour start, fitted by each estimator of wespe.training.color_pool, on seven cameras (no training).

    python experiments/quality/colour_estimators.py --output_dir=runs/colour_estimators

The colour start is the generator before its first step: a per-channel colour map fitted to the two unpaired training
sets, applied to a Gaussian base layer (wespe.evaluation.baselines.base_colour_path). Each row prepares the quality
benchmark's photos (wespe.evaluation.quality_data) with a camera family of
wespe.training.synthetic_camera.CAMERA_FAMILIES, a split and a data seed, fits the map with every estimator
(wespe.color_map.ESTIMATORS) and scores the held-out photos (PSNR mean per image and SSIM on RGB, wespe.metrics, as
launch/quality.py does), beside the input and the true set-level map (the inverse of the family's centre camera: what a
fit to many photos would approach) and the per-channel map that matches the two sets' colour distributions best
(``w2_affine``: what a colour adversary that matched them exactly would reach with G's affine colour path). The first
three rows are the cameras the estimators were chosen on (launch/quality.py and experiments/quality/unseen_camera.py's
data); the last four were drawn afterwards to check them. Writes results.json and results.md to --output_dir.
"""

import json
from pathlib import Path

import numpy as np
from absl import app, flags

from wespe import cli, color_map, metrics
from wespe.evaluation import quality_data
from wespe.evaluation.baselines import apply_uint8, base_colour_path
from wespe.image_io import read_image
from wespe.training import color_pool, synthetic_camera

# name -> (camera family, split, data seed)
SETTINGS = {
    "benchmark": ("benchmark", quality_data.SPLIT, 0),
    "cool_overexposed": ("cool_overexposed", quality_data.UNSEEN_SPLIT, 7),
    "noisy_phone": ("noisy_phone", quality_data.UNSEEN_SPLIT, 11),
    "warm_contrasty": ("warm_contrasty", quality_data.UNSEEN_SPLIT, 3),
    "dim": ("dim", quality_data.UNSEEN_SPLIT, 3),
    "benchmark_camera_unseen_split": ("benchmark", quality_data.UNSEEN_SPLIT, 3),
    "benchmark_camera_data_seed_5": ("benchmark", quality_data.SPLIT, 5),
}

flags.DEFINE_string("output_dir", None, "Where the prepared photos and the results go.")
flags.DEFINE_list("settings", list(SETTINGS), "Which rows of SETTINGS to run.")
flags.DEFINE_integer("max_side", None, "Downscale every photo first to at most this many px a side (quick tests).")
flags.mark_flag_as_required("output_dir")
FLAGS = flags.FLAGS


def prepare(root: Path, family: str, split: dict, data_seed: int, max_side: int | None) -> quality_data.BenchmarkData:
    """The benchmark's folders with ``family``'s cameras (draw_camera reads
    wespe.training.synthetic_camera.CAMERA_RANGES)."""
    saved = dict(synthetic_camera.CAMERA_RANGES)
    synthetic_camera.CAMERA_RANGES.update(synthetic_camera.CAMERA_FAMILIES[family])
    try:
        return quality_data.prepare(root, data_seed, split=split, max_side=max_side)
    finally:
        synthetic_camera.CAMERA_RANGES.update(saved)


def w2_affine(source: np.ndarray, target: np.ndarray, levels: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the affine map ``a x + b`` whose image of the source pool is closest to the target pool in
    Wasserstein-2: for 1-D distributions W2^2 = integral of (a Q_s(u) + b - Q_t(u))^2 du over quantile levels u, so
    (a, b) is the least-squares line from the source's quantiles to the target's (``levels`` mid-point levels)."""
    u = (np.arange(levels) + 0.5) / levels
    gains, bias = np.zeros(3), np.zeros(3)
    for c in range(3):
        qs, qt = np.quantile(source[:, c], u), np.quantile(target[:, c], u)
        gains[c], bias[c] = np.polyfit(qs, qt, 1)
    return np.diag(gains).astype(np.float32), bias.astype(np.float32)


def score(method, data: quality_data.BenchmarkData) -> dict:
    """Mean PSNR and RGB SSIM of ``method`` (float RGB -> float RGB, quantised to 8 bits) on the test photos."""
    psnrs, ssims = [], []
    for clean_path in sorted(Path(data.test_clean).glob("*.png")):
        clean, _ = read_image(clean_path)
        degraded, _ = read_image(Path(data.test_degraded) / clean_path.name)
        output = apply_uint8(method, degraded)
        a, b = output.astype(np.float32)[None] / 255, clean.astype(np.float32)[None] / 255
        psnrs.append(float(metrics.psnr(a, b)[0]))
        ssims.append(float(metrics.ssim(a, b, channel="rgb")[0]))
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims))}


def main(argv):
    cli.start(argv, tune_malloc=False)
    unknown = sorted(set(FLAGS.settings) - set(SETTINGS))
    if unknown:
        raise app.UsageError(f"--settings: unknown {unknown}; expected some of {list(SETTINGS)}")
    out = Path(FLAGS.output_dir)
    rows = {}
    for name in FLAGS.settings:
        family, split, data_seed = SETTINGS[name]
        data = prepare(out / name, family, split, data_seed, FLAGS.max_side)
        pools = color_pool.build_color_pools(data.source, data.target, band=True)
        centre = synthetic_camera.centre_camera(synthetic_camera.CAMERA_FAMILIES[family])
        true_map = synthetic_camera.colour_inverse(centre)
        row = {"family": family, "split": {k: list(v) for k, v in split.items()}, "data_seed": data_seed,
               "input": score(lambda x: x, data)}
        for estimator in color_map.ESTIMATORS:
            matrix, bias = color_map.fitted_colour_map(pools, estimator)
            row[estimator] = {**score(base_colour_path(matrix, bias), data),
                              "gains": np.diag(matrix).round(4).tolist(), "bias": bias.round(4).tolist()}
        w2_map = w2_affine(pools["source"], pools["target"])
        row["w2_affine"] = {**score(base_colour_path(*w2_map), data), "gains": np.diag(w2_map[0]).round(4).tolist(),
                            "bias": w2_map[1].round(4).tolist()}
        row["true_set_colour"] = {**score(base_colour_path(*true_map), data),
                                  "gains": np.diag(true_map[0]).round(4).tolist(),
                                  "bias": true_map[1].round(4).tolist()}
        rows[name] = row
        print(name, {k: v for k, v in row.items() if isinstance(v, dict) and "psnr" in v}, flush=True)
    columns = ["input", *color_map.ESTIMATORS, "w2_affine", "true_set_colour"]
    lines = ["# wespe_plus's colour start by estimator (PSNR dB / SSIM on the held-out photos, no training)", "",
             "Rerun: `python experiments/quality/colour_estimators.py --output_dir=runs/colour_estimators`", "",
             "| camera (family, data seed) | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        cells = [f"{row[c]['psnr']:.2f} / {row[c]['ssim']:.4f}" for c in columns]
        lines.append(f"| {name} ({row['family']}, {row['data_seed']}) | " + " | ".join(cells) + " |")
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    cli.run(main)
