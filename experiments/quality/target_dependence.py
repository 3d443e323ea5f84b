"""How much the no-reference ranking of a finished quality benchmark depends on which target photos it is fitted to.

    python experiments/quality/target_dependence.py --run_dir=runs/quality
    python experiments/quality/target_dependence.py --run_dir=runs/quality_unseen

Reads a benchmark's output folder (launch/quality.py or unseen_camera.py; nothing is trained or enhanced) and ranks
its methods (input, baselines, every trained run; not the oracle rows) by the NIQE-style distance and the colour
distance of wespe.evaluation.no_reference against two target folders of the same clean camera:

* ``training halves``: the benchmark's own target (the clean halves of its five training photos, other scenes
  than the test photos), the outputs scored whole: the numbers of the benchmark's rank agreement;
* ``test halves``: the other half of each clean test photo (the same scenes, no pixel shared), the outputs cut to
  the half that is not in the target (the left one for the 1st and 3rd photo, the right one for the 2nd, as the
  training photos alternate) and their PSNR taken on that half.

Prints the Spearman of each ranking with PSNR and the rows' numbers. What it shows (experiments/results/
evaluation.md): the same outputs rank differently against two small folders of one camera; colour follows PSNR
when the target shows the same scenes and not when it shows others.
"""

import json
from pathlib import Path

import numpy as np
from absl import flags

from wespe import cli, image_io, metrics
from wespe.evaluation import no_reference, quality_benchmark

flags.DEFINE_string("run_dir", None, "A finished quality benchmark's --output_dir (results.json, data/, methods/).")
flags.mark_flag_as_required("run_dir")
FLAGS = flags.FLAGS
COLUMNS = ("niqe_set", "color_distance")


def method_rows(run_dir: Path) -> list[dict]:
    """Every scoring of a method (not the oracle rows): name, seed, whole-photo PSNR and its outputs' folder."""
    results = json.loads((run_dir / "results.json").read_text())
    rows = []
    for name, m in results["methods"].items():
        if m["kind"] == "oracle":
            continue
        for scoring in m["per_seed"]:
            rows.append({"name": name, "seed": scoring["seed"], "psnr": scoring["psnr_mean"],
                         "folder": quality_benchmark.outputs_folder(run_dir, name, m["kind"], scoring["seed"])})
    return rows


def read_folder(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: image_io.read_image(p)[0] for p in sorted(folder.glob("*.png"))}


def half(image: np.ndarray, k: int, scored: bool) -> np.ndarray:
    """The k-th test photo's target half (``scored`` False: the right one for even k) or the other half."""
    cut = image.shape[1] // 2
    left = (k % 2 == 1) != scored  # target: right half for even k; scored: the other one
    return np.ascontiguousarray(image[:, :cut] if left else image[:, cut:])


def main(argv):
    cli.start(argv, tune_malloc=False)
    run_dir = Path(FLAGS.run_dir)
    rows = method_rows(run_dir)
    clean = read_folder(run_dir / "data" / "test" / "clean")
    order = list(clean)
    targets = {"training halves": no_reference.fit_target_model(run_dir / "data" / "target"),
               "test halves": no_reference.fit_target_model({n: half(clean[n], k, False)
                                                             for k, n in enumerate(order)})}
    for row in rows:
        outputs = read_folder(row["folder"])
        scored = {n: half(outputs[n], k, True) for k, n in enumerate(order)}
        row["psnr_half"] = float(np.mean([metrics.psnr(scored[n] / 255.0, half(clean[n], k, True) / 255.0)
                                          for k, n in enumerate(order)]))  # evaluate's PSNR, on the half
        row["training halves"] = no_reference.report(outputs, targets["training halves"])
        row["test halves"] = no_reference.report(scored, targets["test halves"])

    def closer(report, key):
        value = no_reference.niqe_rank_key(report) if key == "niqe_set" else report[key]
        return None if value is None else -value

    print(f"# Target dependence: {run_dir}\n\n| target | rows | " + " | ".join(f"{c} vs PSNR" for c in COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for target, psnr_key in (("training halves", "psnr"), ("test halves", "psnr_half")):
        rhos = []
        for key in COLUMNS:
            pairs = [(r[psnr_key], v) for r in rows if (v := closer(r[target], key)) is not None]
            rhos.append(quality_benchmark.spearman([p for p, _ in pairs], [v for _, v in pairs]))
        print(f"| {target} ({targets[target].describe()}) | {len(rows)} | "
              + " | ".join("-" if v is None else f"{v:+.3f}" for v in rhos) + " |")
    print("\n| method | seed | PSNR | PSNR (scored half) | " + " | ".join(
        f"{c} ({t})" for t in targets for c in COLUMNS) + " |")
    print("|---|---|---|---|" + "---|" * (2 * len(COLUMNS)))
    for r in rows:
        cells = [r[t][c] for t in targets for c in COLUMNS]
        print(f"| {r['name']} | {'-' if r['seed'] is None else r['seed']} | {r['psnr']:.2f} | {r['psnr_half']:.2f} | "
              + " | ".join("flat" if v is None and r[t]["niqe_all_flat"] else "-" if v is None else f"{v:.3f}"
                           for v, t in zip(cells, [t for t in targets for _ in COLUMNS])) + " |")
    return 0


if __name__ == "__main__":
    cli.run(main)
