"""wespe.evaluation.evaluate in process, on small photos written here: pairing by name, the pooled aggregates against a
float64 NumPy version, skipped photos, and the files written. (The command line and real generators:
tests/test_evaluate_cli.py.)"""

import csv
import json
import math
import os

import numpy as np
import pytest
from PIL import Image
from test_enhance_cli import random_generator

from wespe import image_paths
from wespe.errors import UserError
from wespe.evaluation import evaluate


def _png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


@pytest.fixture
def photos(tmp_path):
    """references/{a,b,sub/c}.png, outputs/ = references plus deterministic noise (one with the wrong size, one
    without a reference), as uint8."""
    rng = np.random.default_rng(0)
    refs, outs = {}, {}
    for name, (h, w) in {"a": (40, 48), "b": (36, 30), "sub/c": (50, 50)}.items():
        ref = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out = np.clip(ref.astype(int) + rng.integers(-20, 21, ref.shape), 0, 255).astype(np.uint8)
        refs[name], outs[name] = ref, out
        _png(tmp_path / "references" / f"{name}.png", ref)
        _png(tmp_path / "outputs" / f"{name}.png", out)
    _png(tmp_path / "outputs" / "wrong_size.png", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    _png(tmp_path / "references" / "wrong_size.png", rng.integers(0, 256, (21, 20, 3), dtype=np.uint8))
    _png(tmp_path / "outputs" / "orphan.png", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    return tmp_path, refs, outs


def test_index_images_keys_by_relative_path_and_reports_duplicates(tmp_path):
    _png(tmp_path / "f" / "x.png", np.zeros((4, 4, 3), np.uint8))
    _png(tmp_path / "f" / "d" / "y.jpg", np.zeros((4, 4, 3), np.uint8))
    _png(tmp_path / "f" / "d" / "y.png", np.zeros((4, 4, 3), np.uint8))
    index, duplicates = image_paths.index_images(tmp_path / "f")
    assert list(index) == ["d/y", "x"]
    assert [d["name"] for d in duplicates] == ["d/y"] and "same name without extension" in duplicates[0]["reason"]
    assert list(image_paths.index_images([tmp_path / "f" / "x.png"])[0]) == ["x"]
    with pytest.raises(FileNotFoundError, match="nope does not exist"):
        image_paths.index_images(tmp_path / "nope")


@pytest.fixture
def tricky(tmp_path):
    """Two folders that exercise every case of the pairing rule: same relative path (``x``, ``sub/y``), a folder
    nested on one side only (``deep/z`` <-> ``z``: the stem fallback), a name two files of a side share (``a.jpg``
    + ``a.png``) and a stem two nested files share (``one/w``, ``two/w``)."""
    rng = np.random.default_rng(3)
    image = lambda: rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    for name in ("x.png", "sub/y.png", "a.jpg", "a.png", "deep/z.png", "one/w.png", "two/w.png"):
        _png(tmp_path / "left" / name, image())
    for name in ("x.png", "sub/y.png", "a.png", "z.png", "w.png"):
        _png(tmp_path / "right" / name, image())
    return tmp_path / "left", tmp_path / "right"


def test_one_pairing_rule_for_training_and_evaluation(tricky):
    left, right = tricky
    pairs, unpaired_left, unpaired_right = image_paths.match_pairs(image_paths.keyed_images(left),
                                                                   image_paths.keyed_images(right))
    as_names = lambda paths, root: [p.relative_to(root).as_posix() for p in paths]
    assert [(a.relative_to(left).as_posix(), b.relative_to(right).as_posix()) for a, b in pairs] == [
        ("deep/z.png", "z.png"), ("sub/y.png", "sub/y.png"), ("x.png", "x.png")]
    assert as_names(unpaired_left, left) == ["a.jpg", "a.png", "one/w.png", "two/w.png"]
    assert as_names(unpaired_right, right) == ["a.png", "w.png"]

    from wespe.training import scan  # training's paired mode pairs the same files
    scans = scan.scan_training_folders(left, right, 16, progress=False)
    assert scan.pair_files(scans).matched == pairs

    # Evaluation scores the first of a duplicated name (a.jpg, reporting a.png) and pairs by the same rule: it
    # gained the stem fallback (deep/z was "no reference image named deep/z.*" before) and an ambiguous stem
    # (one/w, two/w against w) still pairs neither.
    result = evaluate.evaluate(None, reference_folder=right, outputs_folder=left, progress=False)
    assert sorted(r["name"] for r in result.rows) == ["a", "deep/z", "sub/y", "x"]
    skipped = {s["name"]: s["reason"] for s in result.skipped}
    assert "same name without extension" in skipped["a"]
    assert "no reference image named one/w.*" in skipped["one/w"] and "two/w" in skipped


def test_an_ambiguous_reference_is_reported_not_paired(tmp_path):
    for name in ("out/a.png", "ref/a.png", "ref/a.jpg"):
        _png(tmp_path / name, np.zeros((8, 8, 3), np.uint8))
    result = evaluate.evaluate(None, reference_folder=tmp_path / "ref", outputs_folder=tmp_path / "out",
                               progress=False)
    assert not result.rows and "ambiguous reference" in result.skipped[0]["reason"]


def test_outputs_mode_scores_against_numpy_and_skips_what_it_cannot_pair(photos):
    root, refs, outs = photos
    result = evaluate.evaluate(None, reference_folder=root / "references", outputs_folder=root / "outputs",
                                 progress=False)
    rows = {r["name"]: r for r in result.rows}
    assert sorted(rows) == ["a", "b", "sub/c"]
    skipped = {s["name"]: s["reason"] for s in result.skipped}
    assert "size mismatch" in skipped["wrong_size"] and "no reference image" in skipped["orphan"]
    squared, pixels = 0.0, 0
    for name in rows:
        diff = outs[name].astype(np.float64) / 255 - refs[name].astype(np.float64) / 255
        mse = np.mean(diff ** 2)
        assert rows[name]["mse"] == pytest.approx(mse, rel=1e-12)
        assert rows[name]["psnr"] == pytest.approx(10 * math.log10(1 / mse), abs=1e-3)
        squared, pixels = squared + mse * diff.shape[0] * diff.shape[1], pixels + diff.shape[0] * diff.shape[1]
    a = result.aggregates
    assert a["mse_pooled"] == pytest.approx(squared / pixels, rel=1e-12)
    assert a["psnr_pooled"] == pytest.approx(10 * math.log10(pixels / squared), rel=1e-12)
    assert a["psnr_mean"] == pytest.approx(np.mean([rows[n]["psnr"] for n in rows]))
    assert (a["num_evaluated"], a["num_skipped"], a["num_ms_ssim"]) == (3, 2, 3)
    assert result.summary().startswith("3 evaluated, 2 skipped: PSNR")


def test_identical_photos_and_aggregate_edge_cases(photos):
    root, _, _ = photos
    result = evaluate.evaluate(None, reference_folder=root / "references", outputs_folder=root / "references",
                                 progress=False)
    assert result.aggregates["psnr_pooled"] == math.inf and result.aggregates["ssim_rgb_mean"] == pytest.approx(1)
    empty = evaluate.aggregate([], num_skipped=4)
    assert empty["psnr_pooled"] is None and empty["psnr_mean"] is None and empty["num_skipped"] == 4


def test_no_reference_mode_ranks_by_entropy(photos):
    root, _, _ = photos
    result = evaluate.evaluate(None, outputs_folder=root / "outputs", progress=False)
    assert not result.has_reference and result.ranking_metric == "entropy"
    assert len(result.rows) == 5 and all(r["psnr"] is None and r["entropy"] > 0 for r in result.rows)


def test_write_results_files_agree(photos, tmp_path):
    root, _, _ = photos
    result = evaluate.evaluate(None, reference_folder=root / "references", outputs_folder=root / "outputs",
                                 progress=False)
    paths = evaluate.write_results(result, tmp_path / "ev")
    saved = json.loads(paths["json"].read_text())
    assert saved["aggregates"] == pytest.approx(result.aggregates)
    assert [s["name"] for s in saved["skipped"]] == [s["name"] for s in result.skipped]
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows if r["status"] == "ok"] == ["a", "b", "sub/c"]
    assert float(rows[0]["psnr"]) == pytest.approx(result.rows[0]["psnr"], abs=1e-4)
    assert "psnr" in paths["md"].read_text().lower()
    assert Image.open(paths["png"]).size[0] > 0


def test_argument_errors(photos):
    root, _, _ = photos
    with pytest.raises(ValueError, match="give a generator"):
        evaluate.evaluate(None, root / "outputs")  # neither a generator nor an outputs folder
    with pytest.raises(FileNotFoundError, match="nope"):
        evaluate.evaluate(None, reference_folder=root / "nope", outputs_folder=root / "outputs", progress=False)


def test_a_results_folder_inside_the_photos_is_not_scored_on_a_rerun(photos):
    """``--source=photos --output_dir=photos/ev --save_enhanced``, twice: the second run scores the same five
    photos, not also the first run's best_worst.png and enhanced/ (which changed the aggregates and nested
    enhanced/ev/enhanced/... folders)."""
    root, _, _ = photos
    sources, results = root / "outputs", root / "outputs" / "ev"
    generator = random_generator(seed=0)
    runs = []
    for _ in range(2):
        result = evaluate.evaluate(generator, sources, save_enhanced_to=results / "enhanced", exclude=[results],
                                     progress=False)
        evaluate.write_results(result, results)
        runs.append(result)
    assert [r["name"] for r in runs[1].rows] == ["a", "b", "orphan", "sub/c", "wrong_size"]
    assert runs[1].rows == runs[0].rows and runs[1].aggregates == runs[0].aggregates
    assert (results / "best_worst.png").is_file() and not (results / "enhanced" / "ev").exists()


def test_check_inputs_before_a_model_loads(photos):
    root, _, _ = photos
    evaluate.check_inputs({"--source": root / "outputs", "--reference": None}, root / "outputs" / "ev")
    with pytest.raises(FileNotFoundError, match="--reference=.*nope does not exist"):
        evaluate.check_inputs({"--source": root / "outputs", "--reference": root / "nope"})
    with pytest.raises(UserError, match="--output_dir=.* is the --reference folder"):
        evaluate.check_inputs({"--source": root / "outputs", "--reference": root / "references"},
                                root / "references")
    with pytest.raises(UserError, match="--output_dir=.* holds the --outputs folder"):
        evaluate.check_inputs({"--outputs": [root / "outputs"]}, root)


def test_a_symlink_loop_is_skipped_with_its_reason(photos):
    root, _, _ = photos
    os.symlink("x.png", root / "outputs" / "y.png")
    os.symlink("y.png", root / "outputs" / "x.png")
    result = evaluate.evaluate(None, outputs_folder=root / "outputs", progress=False)  # no reference: all read
    assert [r["name"] for r in result.rows] == ["a", "b", "orphan", "sub/c", "wrong_size"]
    reasons = {s["name"]: s["reason"] for s in result.skipped}
    assert reasons["x"].endswith("x.png: symlink loop") and reasons["y"].endswith("y.png: symlink loop")
