"""Evaluation: launch/evaluate.py and launch/sweep.py end to end, the library's three modes in-process.

Tiny fixtures: six 64x64 crops of scikit-image's astronaut as sources; references are the same crops slightly
altered (so PSNR/SSIM are finite and non-trivial), with one reference missing, one corrupt and one of another
size. A small random generator is exported once; a 4-step training run (2 checkpoints) is made once per module.
Two subprocess runs (evaluate CLI, sweep CLI); everything else calls wespe.evaluation.evaluate directly.
"""

import csv
import json
import math
import os
import re
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import script_server
from flax import nnx
from PIL import Image

import wespe
from wespe import config as configs
from wespe import image_io, metrics
from wespe.evaluation import evaluate, sweep
from wespe.inference import export, loading
from wespe.inference.enhance import enhance
from wespe.models import Generator
from wespe.training import loop

REPO = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = REPO.parent / "shared" / "dped_pretrained"
NAMES = [f"{i:02d}" for i in range(6)]


def _run(script, *args, timeout=120):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return script_server.run([sys.executable, str(REPO / "launch" / script), *map(str, args)], cwd=REPO, env=env,
                             timeout=timeout)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    import skimage.data
    root = tmp_path_factory.mktemp("eval")
    photo = skimage.data.astronaut()
    source, reference = root / "source", root / "reference"
    source.mkdir(), reference.mkdir()
    rng = np.random.default_rng(0)
    crops = {}
    for i, name in enumerate(NAMES):
        crop = photo[40 + 70 * i:104 + 70 * i, 60 + 50 * i:124 + 50 * i]
        crops[name] = crop
        Image.fromarray(crop).save(source / f"{name}.png")
    for name in NAMES[:3]:  # altered copies: brighter plus noise
        altered = np.clip(crops[name].astype(np.int16) + 12 + rng.integers(-8, 9, crops[name].shape), 0, 255)
        Image.fromarray(altered.astype(np.uint8)).save(reference / f"{name}.jpg", quality=95)
    Image.fromarray(crops["03"][:48]).save(reference / "03.png")  # size mismatch
    (reference / "04.png").write_bytes(b"this is not a png")  # corrupt
    # 05: no reference at all
    generator = Generator(width=8, num_blocks=1, init="he")  # "he": a non-constant output
    checkpoint = export.save_generator(generator, root / "generator.npz")
    return {"root": root, "source": source, "reference": reference, "generator": generator,
            "checkpoint": checkpoint}


@pytest.fixture(scope="module")
def run_workdir(tmp_path_factory, data):
    """A 4-step training run with checkpoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp("run")
    folders = []
    for side, seed in (("phone", 1), ("dslr", 2)):
        folder = root / side
        folder.mkdir()
        rng = np.random.default_rng(seed)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        folders.append(folder)
    c = configs.wespe_paper()
    c.vgg_weights, c.content_layer = "random", "relu1_2"
    c.batch_size, c.patch_size = 2, 16
    c.generator.width, c.generator.num_blocks = 4, 1
    c.discriminator.head = "global_pool"
    c.num_steps, c.checkpoint_every, c.log_every, c.sample_every, c.num_sample_crops = 4, 2, 1, 1000, 2
    c.data.source, c.data.target = str(folders[0]), str(folders[1])
    workdir = root / "workdir"
    assert loop.run_training(c, workdir).status == "finished"
    assert loading.checkpoint_steps(workdir) == [2, 4]
    return workdir


def _enhanced(generator, path):
    return image_io.to_uint8(enhance(generator, image_io.read_image(path)[0]))


def _float(images):
    return np.stack(images).astype(np.float32) / 255.0


# ------------------------------------------------------------------------------------------- CLI, model mode

def test_cli_model_mode_with_reference(data, tmp_path):
    out = tmp_path / "ev"
    proc = _run("evaluate.py", f"--checkpoint={data['checkpoint']}", f"--source={data['source']}",
                f"--reference={data['reference']}", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("results.json", "results.csv", "results.md", "best_worst.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in saved["rows"]}
    assert sorted(rows) == ["00", "01", "02"]
    reasons = {s["name"]: s["reason"] for s in saved["skipped"]}
    assert sorted(reasons) == ["03", "04", "05"]
    assert "size mismatch" in reasons["03"]
    assert "cannot" in reasons["04"] or "not an image" in reasons["04"]
    assert "no reference" in reasons["05"]
    for name in ("03", "04", "05"):
        assert f"skipped {name}" in proc.stdout

    # aggregates equal the metrics recomputed directly on the same enhanced images
    enhanced = [_enhanced(data["generator"], data["source"] / f"{n}.png") for n in rows]
    references = [image_io.read_image(data["reference"] / f"{n}.jpg")[0] for n in rows]
    a, b = _float(enhanced), _float(references)
    np.testing.assert_allclose([rows[n]["psnr"] for n in rows], np.asarray(metrics.psnr(a, b)), rtol=1e-5)
    np.testing.assert_allclose([rows[n]["ssim_rgb"] for n in rows], np.asarray(metrics.ssim(a, b)), rtol=1e-5)
    np.testing.assert_allclose([rows[n]["ssim_luma"] for n in rows],
                               np.asarray(metrics.ssim(a, b, channel="luma")), rtol=1e-5)
    np.testing.assert_allclose([rows[n]["entropy"] for n in rows], np.asarray(metrics.entropy(np.stack(enhanced))),
                               rtol=1e-6)
    agg = saved["aggregates"]
    mse = np.mean([rows[n]["mse"] for n in rows])  # equal sizes: pooled MSE = mean MSE
    assert agg["psnr_pooled"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-9)
    assert agg["psnr_pooled"] == pytest.approx(float(metrics.psnr_pooled(a, b)), rel=1e-4)
    assert agg["psnr_mean"] == pytest.approx(np.mean([rows[n]["psnr"] for n in rows]), rel=1e-9)
    assert agg["psnr_pooled"] <= agg["psnr_mean"] + 1e-9  # Jensen
    assert agg["ssim_rgb_mean"] == pytest.approx(np.mean([rows[n]["ssim_rgb"] for n in rows]))
    assert 0 < agg["ssim_rgb_mean"] < 1 and 5 < agg["psnr_pooled"] < 60
    assert agg["num_evaluated"] == 3 and agg["num_skipped"] == 3
    # 64 px patches (< 176): MS-SSIM as the DPED code computes it on its 100 px test patches, flagged in a note.
    np.testing.assert_allclose([rows[n]["ms_ssim"] for n in rows], np.asarray(metrics.ms_ssim(a, b)), rtol=1e-5)
    assert all("shrunken filter" in rows[n]["note"] for n in rows)
    assert agg["ms_ssim_mean"] == pytest.approx(np.mean([rows[n]["ms_ssim"] for n in rows]))
    assert agg["num_ms_ssim"] == 3

    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["status"] for r in table] == ["ok"] * 3 + ["skipped"] * 3 + ["aggregate"] * 2
    assert float(table[-1]["psnr"]) == pytest.approx(agg["psnr_pooled"])
    md = (out / "results.md").read_text()
    assert "PSNR, pooled MSE / DPED (dB)" in md and f"{agg['psnr_pooled']:.4f}" in md and "`04`" in md
    assert json.loads(json.dumps(saved))["protocol"]["psnr_pooled"].startswith("DPED convention")


# ------------------------------------------------------------------------------------- outputs mode, in-process

def test_outputs_mode_identical_images(data, tmp_path):
    same = tmp_path / "same"
    same.mkdir()
    for name in NAMES[:3]:
        (same / f"{name}.jpg").write_bytes((data["reference"] / f"{name}.jpg").read_bytes())
    result = evaluate.evaluate(None, data["source"], data["reference"], outputs_folder=same, progress=False)
    assert [r["name"] for r in result.rows] == NAMES[:3] and not result.skipped
    for row in result.rows:
        assert row["psnr"] == math.inf and row["mse"] == 0.0
        assert row["ssim_rgb"] == pytest.approx(1.0, abs=1e-6) and row["ssim_luma"] == pytest.approx(1.0, abs=1e-6)
        assert row["input_entropy"] is not None  # inputs paired from --source
    assert result.aggregates["psnr_pooled"] == math.inf
    paths = evaluate.write_results(result, tmp_path / "ev")
    assert json.loads(paths["json"].read_text())["aggregates"]["psnr_mean"] == math.inf
    assert "| PSNR, pooled MSE / DPED (dB) | inf |" in paths["md"].read_text()

    with pytest.raises(ValueError, match="outputs_folder"):
        evaluate.evaluate(None, data["source"])


# ------------------------------------------------------------------------------------------ no-reference mode

def test_no_reference_mode(data, tmp_path):
    (data["root"] / "bad_sources").mkdir(exist_ok=True)
    sources = [data["source"], data["root"] / "bad_sources"]
    (data["root"] / "bad_sources" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    result = evaluate.evaluate(data["generator"], sources, progress=False)
    assert [r["name"] for r in result.rows] == NAMES
    assert [s["name"] for s in result.skipped] == ["broken"]
    for row in result.rows:
        assert row["psnr"] is None and row["ssim_rgb"] is None
        assert 0 < row["entropy"] <= 8 and row["bpp"] > 0 and 0 < row["input_entropy"] <= 8
    agg = result.aggregates
    assert agg["psnr_pooled"] is None and agg["entropy_mean"] == pytest.approx(
        np.mean([r["entropy"] for r in result.rows]))
    assert list(result.thumbnails) == sorted(NAMES, key=lambda n: -next(
        r["entropy"] for r in result.rows if r["name"] == n))  # 6 images: all, by entropy
    paths = evaluate.write_results(result, tmp_path / "ev")
    assert paths["png"].is_file()
    md = paths["md"].read_text()
    assert "entropy (bits), mean" in md and "PSNR" not in md

    limited = evaluate.evaluate(data["generator"], data["source"], limit=2, save_enhanced_to=tmp_path / "enh",
                                  progress=False)
    assert [r["name"] for r in limited.rows] == NAMES[:2]
    assert sorted(p.name for p in (tmp_path / "enh").iterdir()) == ["00.png", "01.png"]
    assert limited.rows[0]["entropy"] == result.rows[0]["entropy"]


def test_cli_results_inside_the_photo_folder_are_not_scored(data, tmp_path):
    """--output_dir inside --source holding an earlier run's best_worst.png and enhanced/: only the six photos
    are scored (and enhanced/ does not nest); --output_dir equal to --source is refused before the model loads."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in NAMES:
        (photos / f"{name}.png").write_bytes((data["source"] / f"{name}.png").read_bytes())
    (photos / "ev" / "enhanced").mkdir(parents=True)
    (photos / "ev" / "best_worst.png").write_bytes((data["source"] / "00.png").read_bytes())
    (photos / "ev" / "enhanced" / "00.png").write_bytes((data["source"] / "00.png").read_bytes())
    proc = _run("evaluate.py", f"--checkpoint={data['checkpoint']}", f"--source={photos}",
                f"--output_dir={photos / 'ev'}", "--save_enhanced")
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((photos / "ev" / "results.json").read_text())
    assert [r["name"] for r in saved["rows"]] == NAMES and not saved["skipped"]
    assert sorted(p.name for p in (photos / "ev" / "enhanced").iterdir()) == [f"{n}.png" for n in NAMES]

    proc = _run("evaluate.py", "--checkpoint=no_such.npz", f"--source={photos}", f"--output_dir={photos}")
    assert proc.returncode == 2 and "no_such" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: --output_dir={photos} is the --source folder")


# ---------------------------------------------------------------------------------------------------- sweeps

def test_sweep_over_run_checkpoints(data, run_workdir, tmp_path, capsys):
    out = tmp_path / "sweep"
    proc = _run("sweep.py", f"--sweep={REPO / 'experiments/sweeps/run_checkpoints.py'}", f"--workdir={run_workdir}",
                f"--source={data['source']}", f"--reference={data['reference']}", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Restoring checkpoints is quiet: no library INFO lines (absl's "I<mmdd> ..." prefix) without --verbosity.
    assert not [line for line in proc.stderr.splitlines() if re.match(r"I\d{4} ", line)], proc.stderr[-2000:]
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["cell"], r["step"], r["status"]) for r in rows] == [("run_step2", "2", "ok"), ("run_step4", "4", "ok")]
    assert all(float(r["psnr_pooled"]) > 0 and r["num_evaluated"] == "3" for r in rows)
    assert (out / "metric_vs_step.png").is_file() and (out / "sweep.md").is_file()
    assert (out / "run_step4" / "results.json").is_file()

    # resumable: finished cells are not recomputed
    cells = sweep.expand_cells(sweep.load_sweep(REPO / "experiments/sweeps/run_checkpoints.py"),
                                    {"workdir": str(run_workdir), "source": str(data["source"]),
                                     "reference": str(data["reference"])})
    mtime = (out / "run_step2" / "results.json").stat().st_mtime_ns
    again = sweep.run_sweep(cells, out, progress=False)
    assert "skipped run_step2" in capsys.readouterr().out
    assert [r["psnr_pooled"] for r in again] == [pytest.approx(float(r["psnr_pooled"])) for r in rows]
    assert (out / "run_step2" / "results.json").stat().st_mtime_ns == mtime

    # a training workdir as --checkpoint: its latest checkpoint
    generator, what = loading.generator_for_flags(checkpoint=run_workdir)
    assert "step 4" in what
    exported = loading.load_exported_generator(run_workdir / "generator.npz")  # written at the run's end: step 4
    restored, saved = nnx.state(generator, nnx.Param), nnx.state(exported, nnx.Param)
    for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(saved), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # the library call reads the same checkpoint (a workdir is a checkpoint before it is its generator.npz)
    library = nnx.state(wespe.load_generator(run_workdir), nnx.Param)
    for x, y in zip(jax.tree.leaves(library), jax.tree.leaves(saved), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.skipif(not SHARED_WEIGHTS.is_dir(), reason="official DPED weights not present in ../shared")
def test_dped_pretrained_sweep_no_reference(data, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in NAMES[:2]:
        (photos / f"{name}.png").write_bytes((data["source"] / f"{name}.png").read_bytes())
    cells = sweep.expand_cells(sweep.load_sweep(REPO / "experiments/sweeps/dped_pretrained.py"),
                                    {"source": str(photos), "weights_dir": str(SHARED_WEIGHTS)})
    assert [c["name"] for c in cells] == ["dped_iphone", "dped_blackberry", "dped_sony"]
    rows = sweep.run_sweep(cells, tmp_path / "sweep", progress=False)
    assert [r["status"] for r in rows] == ["ok"] * 3, [r["error"] for r in rows]
    assert all(r["num_evaluated"] == 2 and r["psnr_pooled"] is None and r["entropy_mean"] > 0 for r in rows)
    assert (tmp_path / "sweep" / "models.png").is_file()
    assert not (tmp_path / "sweep" / "metric_vs_step.png").exists()
