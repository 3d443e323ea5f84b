"""The real-photo quality benchmark (wespe.evaluation.quality_benchmark, wespe.evaluation.quality_data,
wespe.evaluation.baselines, wespe.training.synthetic_camera,
launch/quality.py).

Camera model against its ranges and the demo's old inline formula; prepared folders (train photos cut in
halves, one per training side; old folders reported); the classical baselines against independent references
(scikit-image, NumPy); one end-to-end run_benchmark on photos downscaled to 200 px
(the held-out quality monitor of the loop needs 128 px crops) with a tiny preset (tests/quality_tiny_config.py:
width 4, 1 block, 32 px patches, batch 2, 3 steps, random VGG), reused on a second call; the CLI's flag errors.
"""

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import script_server
from PIL import Image

from wespe import config as configs
from wespe import image_io, metrics
from wespe.evaluation import baselines, quality_benchmark, quality_data, quality_metrics
from wespe.training import demo, synthetic_camera

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "quality_tiny_config.py"


# ------------------------------------------------------------------------------------------------ camera model

def _old_degrade(image, seed):
    """wespe.training.demo.degrade as it was before it called wespe.training.synthetic_camera.apply_camera (copied
    verbatim)."""
    import scipy.ndimage
    x = image.astype(np.float64) / 255.0
    x = np.stack([scipy.ndimage.gaussian_filter(x[..., c], 1.2, mode="reflect") for c in range(3)], -1)
    x = 0.5 + 0.65 * (x - 0.5) + -0.05
    x = x * np.asarray((1.10, 1.00, 0.78))
    x = x + np.random.default_rng(seed).normal(0.0, 0.03, x.shape)
    x = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="JPEG", quality=35)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def test_demo_degrade_bit_identical_to_the_old_inline_formula():
    for seed, name in enumerate(("astronaut", "coffee", "motorcycle_left", "chelsea")):
        photo = quality_data.load_photo(name)
        np.testing.assert_array_equal(demo.degrade(photo, seed), _old_degrade(photo, seed), err_msg=name)


def _in_ranges(params):
    r = synthetic_camera.CAMERA_RANGES
    assert r["blur_sigma"][0] <= params["blur_sigma"] <= r["blur_sigma"][1]
    assert r["contrast"][0] <= params["contrast"] <= r["contrast"][1]
    assert r["brightness"][0] <= params["brightness"] <= r["brightness"][1]
    assert r["gain_r"][0] <= params["gains"][0] <= r["gain_r"][1] and params["gains"][1] == 1.0
    assert r["gain_b"][0] <= params["gains"][2] <= r["gain_b"][1]
    assert r["noise_sigma"][0] <= params["noise_sigma"] <= r["noise_sigma"][1]
    assert isinstance(params["jpeg_quality"], int) and 30 <= params["jpeg_quality"] <= 45


def test_camera_model_deterministic_per_seed_different_per_photo_and_inside_its_ranges():
    photo = quality_data.load_photo("astronaut")[:96, :128]
    a, pa = synthetic_camera.camera_model(photo, np.random.default_rng([0, 0]))
    b, pb = synthetic_camera.camera_model(photo, np.random.default_rng([0, 0]))
    np.testing.assert_array_equal(a, b)
    assert pa == pb and a.shape == photo.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(synthetic_camera.apply_camera(photo, pa, pa["noise_seed"]), a)  # params reproduce it
    assert json.loads(json.dumps(pa)) == pa  # JSON round trip is exact
    draws = [synthetic_camera.draw_camera(np.random.default_rng([0, k])) for k in range(50)]
    for params in draws:
        _in_ranges(params)
    assert len({p["blur_sigma"] for p in draws}) == 50 and len({p["jpeg_quality"] for p in draws}) > 5
    # ranges centred on the demo camera
    for key, value in [("blur_sigma", demo.BLUR_SIGMA), ("contrast", demo.CONTRAST), ("brightness", demo.BRIGHTNESS),
                       ("gain_r", demo.COLOUR_GAINS[0]), ("gain_b", demo.COLOUR_GAINS[2]),
                       ("noise_sigma", demo.NOISE_SIGMA)]:
        assert np.mean(synthetic_camera.CAMERA_RANGES[key]) == pytest.approx(value), key
    with pytest.raises(ValueError, match="jpeg_quality"):
        synthetic_camera.apply_camera(photo, {k: v for k, v in pa.items() if k != "jpeg_quality"}, 0)


# ---------------------------------------------------------------------------------------------------- prepare

def test_prepare_layout_halves_idempotent_and_a_draw_per_photo(tmp_path):
    data = quality_data.prepare(tmp_path / "d", seed=3, max_side=64)
    names = lambda folder: sorted(p.name for p in Path(folder).iterdir())  # noqa: E731
    load = lambda folder, name: np.asarray(Image.open(Path(folder) / f"{name}.png"))  # noqa: E731
    train, test = quality_data.SPLIT["train"], quality_data.SPLIT["test"]
    for folder in (data.source, data.target, data.paired_source, data.paired_target):
        assert names(folder) == [f"{n}.png" for n in sorted(train)], folder
    assert names(data.test_degraded) == names(data.test_clean) == [f"{n}.png" for n in sorted(test)]
    saved = json.loads(Path(data.camera_params).read_text())
    cameras, halves = saved["cameras"], saved["halves"]
    assert sorted(cameras) == sorted(train + test) and sorted(halves) == sorted(train)
    assert len({c["blur_sigma"] for c in cameras.values()}) == len(cameras)  # a different draw per photo
    for k, name in enumerate(train + test):  # per-photo seeding [seed, k]: train photos first, then test photos
        assert cameras[name] == synthetic_camera.draw_camera(np.random.default_rng([3, k])), name
        _in_ranges(cameras[name])

    # test photos: whole, the clean one downscaled (max_side), the degraded one its camera applied to it
    for name in test:
        clean = load(data.test_clean, name)
        np.testing.assert_array_equal(clean, quality_data._downscale(quality_data.load_photo(name), 64))
        assert max(clean.shape[:2]) == 64
        params = cameras[name]
        np.testing.assert_array_equal(load(data.test_degraded, name),
                                      synthetic_camera.apply_camera(clean, params, params["noise_seed"]))

    # train photos: downscaled, degraded whole, then cut at width // 2; the source half alternates left / right
    for k, name in enumerate(train):
        clean = quality_data._downscale(quality_data.load_photo(name), 64)
        params = cameras[name]
        degraded = synthetic_camera.apply_camera(clean, params, params["noise_seed"])
        cut = clean.shape[1] // 2
        left, right = slice(0, cut), slice(cut, None)
        source_half, target_half = (left, right) if k % 2 == 0 else (right, left)
        assert halves[name] == {"source": "left" if k % 2 == 0 else "right",
                                "target": "right" if k % 2 == 0 else "left", "cut_x": cut, "width": clean.shape[1]}
        source, target = load(data.source, name), load(data.target, name)
        np.testing.assert_array_equal(source, degraded[:, source_half], err_msg=name)
        np.testing.assert_array_equal(target, clean[:, target_half], err_msg=name)
        assert source.shape[1] + target.shape[1] == clean.shape[1]  # no pixel on both sides, none left out
        # paired: the source half, degraded (the very file of source/) and clean, pixel-aligned
        png = f"{name}.png"
        assert (Path(data.source) / png).read_bytes() == (Path(data.paired_source) / png).read_bytes()
        np.testing.assert_array_equal(load(data.paired_target, name), clean[:, source_half], err_msg=name)

    stamps = {p: p.stat().st_mtime_ns for p in Path(data.root).rglob("*.png")}
    assert quality_data.prepare(tmp_path / "d", seed=3, max_side=64) == data  # READY: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in Path(data.root).rglob("*.png")} == stamps
    recipe = json.loads((Path(data.root) / "READY").read_text())
    assert recipe == saved["recipe"] and recipe["train_layout"] == quality_data.TRAIN_LAYOUT
    with pytest.raises(ValueError, match="prepared with"):
        quality_data.prepare(tmp_path / "d", seed=4, max_side=64)


def test_prepare_rejects_bad_splits_and_folders_of_the_old_layout(tmp_path):
    with pytest.raises(ValueError, match="more than one split"):
        quality_data.prepare(tmp_path / "e", split={"test": ["chelsea"], "train": ["chelsea", "rocket"]})
    with pytest.raises(ValueError, match="exactly the keys test and train"):  # the old whole-photo split format
        quality_data.prepare(tmp_path / "e", split={"test": ["chelsea"], "source": ["coffee"], "target": ["rocket"]})
    assert not (tmp_path / "e").exists()
    old = tmp_path / "old"  # a folder prepared before the train photos were cut in halves
    old.mkdir()
    (old / "READY").write_text(json.dumps({"seed": 0, "max_side": None, "split": {k: list(v) for k, v in {
        "test": ("chelsea", "grace_hopper", "flower"), "source": ("astronaut", "coffee", "motorcycle_left"),
        "target": ("rocket", "motorcycle_right", "china")}.items()}}) + "\n")
    with pytest.raises(ValueError, match="prepared with .*use another folder"):
        quality_data.prepare(old)
    # the same split and seed, but another layout, is also reported (the layout is part of the recipe)
    (old / "READY").write_text(json.dumps({"seed": 0, "max_side": None,
                                           "split": {k: list(v) for k, v in quality_data.SPLIT.items()}}) + "\n")
    with pytest.raises(ValueError, match="prepared with"):
        quality_data.prepare(old)


def test_missing_scikit_learn_is_one_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # "import sklearn..." now raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(quality_data.MissingDependencyError, match=r'pip install -e "\.\[quality\]"'):
        quality_data.load_photo("flower")


# -------------------------------------------------------------------------------------------------- baselines

@pytest.fixture(scope="module")
def photo():
    return quality_data._downscale(quality_data.load_photo("coffee"), 120).astype(np.float64) / 255.0


def test_grey_world_equalises_channel_means(photo):
    x = photo * np.array([1.1, 1.0, 0.7])
    y = baselines.grey_world(x)
    means = y.reshape(-1, 3).mean(0)
    np.testing.assert_allclose(means, means.mean(), rtol=1e-12)
    np.testing.assert_allclose(means.mean(), x.mean(), rtol=1e-12)  # the average grey level is kept


def test_autocontrast_maps_luma_percentiles_to_0_and_1(photo):
    x = 0.3 + 0.4 * photo
    luma = lambda im: im @ np.array([0.299, 0.587, 0.114])  # noqa: E731
    y = baselines.autocontrast(x, clip=False)
    np.testing.assert_allclose(np.percentile(luma(y), [0.5, 99.5]), [0.0, 1.0], atol=1e-12)
    lo, hi = np.percentile(luma(x), [0.5, 99.5])
    np.testing.assert_allclose(baselines.autocontrast(x), np.clip((x - lo) / (hi - lo), 0, 1), atol=1e-12)
    flat = np.full((8, 8, 3), 0.4)
    np.testing.assert_array_equal(baselines.autocontrast(flat), flat)


def test_unsharp_equals_scikit_image(photo):
    from skimage.filters import unsharp_mask
    # channel_axis=2: with -1, scikit-image <= 0.26 returns garbage (scikit-image issue #7264)
    expected = unsharp_mask(photo, radius=1.5, amount=0.8, channel_axis=2)
    np.testing.assert_allclose(baselines.unsharp(photo), expected, atol=1e-12)
    combo = baselines.classical_combo(photo)
    np.testing.assert_allclose(combo, baselines.unsharp(baselines.grey_world_autocontrast(photo)), atol=0)
    u8 = baselines.apply_uint8(baselines.classical_combo, np.round(photo * 255).astype(np.uint8))
    assert u8.dtype == np.uint8 and u8.shape == photo.shape


# ------------------------------------------------------------------------------------------------ presets

def test_parse_presets_and_bad_presets(tmp_path):
    assert quality_benchmark.parse_presets("a=x.py, b = y.py,") == {"a": "x.py", "b": "y.py"}
    assert quality_benchmark.parse_presets("") == {}
    for text, match in [("a", "not name=config_path"), ("=x.py", "not name"), ("a=x.py,a=y.py", "twice")]:
        with pytest.raises(quality_benchmark.PresetError, match=match):
            quality_benchmark.parse_presets(text)
    with pytest.raises(quality_benchmark.PresetError, match="no such config file"):
        quality_benchmark.load_preset_config(tmp_path / "missing.py")
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(quality_benchmark.PresetError, match="no get_config"):
        quality_benchmark.load_preset_config(tmp_path / "empty.py")
    for name, match in [("unsharp", "another method"), ("bandpass_transfer_base_nlm", "another method"),
                        ("../x", "letters")]:
        with pytest.raises(quality_benchmark.PresetError, match=match):
            quality_benchmark.run_benchmark(tmp_path / "out", {name: str(TINY)}, [0])
    with pytest.raises(quality_benchmark.PresetError, match="no such config file"):  # before any data is prepared
        quality_benchmark.run_benchmark(tmp_path / "out", {"a": str(tmp_path / "missing.py")}, [0])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, seeds, steps, message", [
    ("def get_config():\n    raise RuntimeError('gone')\n", [0], None,
     "--presets=p={f}: get_config() raised RuntimeError: gone (at line 2)"),
    ("def get_config()\n    return 1\n", [0], None, "--presets=p={f}: syntax error at line 1"),
    ("import no_such_module_here\n", [0], None,
     "--presets=p={f}: importing it raised ModuleNotFoundError: No module named 'no_such_module_here' (at line 1)"),
    ("def get_config():\n    return {}\n", [0], None,
     "--presets=p={f}: get_config() returned a dict, not an ml_collections.ConfigDict"),
    ("from wespe.config import wespe_paper\n\n\ndef get_config():\n    c = wespe_paper()\n"
     "    c.optimizer.lr_generator = 0.0\n    return c\n", [0], None,
     "--presets=p={f}: config.optimizer.lr_generator=0.0: must be > 0"),
    (TINY.read_text(), [0, -2], None, "--seeds: -2 must be >= 0"),
    (TINY.read_text(), [0], 0, "--steps=0: must be >= 1"),
], ids=["raises", "syntax error", "import fails", "not a ConfigDict", "value out of range", "negative seed",
        "zero steps"])
def test_every_preset_is_checked_with_its_overrides_before_any_work(tmp_path, text, seeds, steps, message):
    """A preset file that raises, does not parse or import, returns no ConfigDict, or holds (or is given by the
    benchmark's --seeds / --steps) a value out of range: one PresetError naming the preset as typed in --presets
    (and the key), before any photo is prepared; the good presets before it do not change that."""
    preset = tmp_path / "preset.py"
    preset.write_text(text)
    with pytest.raises(quality_benchmark.PresetError) as raised:
        quality_benchmark.run_benchmark(tmp_path / "out", {"tiny": str(TINY), "p": str(preset)}, seeds, steps,
                                        progress=False)
    assert message.format(f=preset) in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_preset_config_overrides(tmp_path):
    folders = ("root", "s", "t", "td", "tc", "ps", "pt", "c.json")
    data = quality_data.BenchmarkData(*(str(tmp_path / k) for k in folders))
    c = quality_benchmark.preset_config(TINY, data, seed=5, steps=7)
    assert (c.data.source, c.data.target, c.data.heldout) == (data.source, data.target, data.test_degraded)
    assert (c.seed, c.num_steps, c.vgg_weights, c.data.builtin, c.data.dped_root) == (5, 7, "random", None, None)
    if "heldout_reference" in c.data:
        assert c.data.heldout_reference == data.test_clean
    assert quality_benchmark.preset_config(TINY, data, seed=0).num_steps == 3  # the config's own
    d = quality_benchmark.preset_config(REPO / "experiments" / "dped_paired.py", data, seed=1, vgg_weights="w.mat")
    assert d.mode == "dped" and d.data.paired is True and d.vgg_weights == "w.mat"
    assert (d.data.source, d.data.target) == (data.paired_source, data.paired_target)


# --------------------------------------------------------------------------------------------- end to end

# A smaller split keeps the test quick: chelsea and flower are both 133x200 at max_side=200, so every jitted
# metric and the generator compile for one shape only; four train photos, so two halves each way round.
# (The default split is what test_prepare checks.)
SMALL_SPLIT = {"test": ["chelsea", "flower"], "train": ["astronaut", "coffee", "rocket", "china"]}


def _bench(out):
    return quality_benchmark.run_benchmark(out, {"tiny": str(TINY)}, seeds=[0], max_side=200, split=SMALL_SPLIT,
                                 progress=False)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return out, _bench(out)


def test_run_benchmark_end_to_end(bench):
    out, results = bench
    for name in ("results.json", "results.md", "grid.png"):
        assert (out / name).exists(), name
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    methods = results["methods"]
    # the rank agreement over resamples of the photos (issue 28): computed from the scorings' patch moments,
    # which results.json does not keep
    resampled = results["no_reference"]["rank_agreement_resampled"]
    assert resampled["resamples"] == 200 and resampled["rows"] == sum(
        m["n"] for m in methods.values() if m["kind"] != "oracle")
    assert -1 <= resampled["niqe_set"]["low"] <= resampled["niqe_set"]["median"] <= resampled["niqe_set"]["high"] <= 1
    assert "With the photos resampled (200 resamples" in (out / "results.md").read_text()
    assert list(methods) == ["input", "grey_world_autocontrast", "unsharp", "classical_combo",
                             *baselines.FITTED_NAMES, *baselines.ORACLE_NAMES, "tiny"]
    # the table's colour start is the recommended recipe's: the row for the estimator wespe_plus starts from
    starts = {"moments": "moment_transfer_base", "bandpass": "bandpass_transfer_base"}
    assert baselines.COLOUR_START == starts[configs.wespe_plus().color_init] and baselines.COLOUR_START in methods
    assert {methods[n]["kind"] for n in baselines.FITTED_NAMES} == {"fitted"}
    assert {methods[n]["kind"] for n in baselines.ORACLE_NAMES} == {"oracle"}

    # the input row equals wespe.metrics on (degraded, clean) computed here
    data = out / "data" / "test"
    names = sorted(p.name for p in (data / "clean").iterdir())
    load = lambda p: np.asarray(Image.open(p), np.float32)[None] / 255  # noqa: E731
    psnrs = [float(metrics.psnr(load(data / "degraded" / n), load(data / "clean" / n))[0]) for n in names]
    assert methods["input"]["mean"]["psnr_mean"] == pytest.approx(np.mean(psnrs), abs=1e-6)
    assert results["input"]["psnr_mean"] == methods["input"]["mean"]["psnr_mean"]
    assert all(v == 0 for v in methods["input"]["delta_vs_input"].values())

    # detail PSNR and noise: per image from the saved outputs, averaged as the other columns; the clean level
    for name, folder in [("input", data / "degraded"), ("bandpass_transfer_base_nlm", out / "methods" /
                                                        "bandpass_transfer_base_nlm"),
                         ("tiny", out / "methods" / "tiny" / "seed_0")]:
        rows = methods[name]["per_seed"][0]["per_image"]
        for row, n in zip(rows, names):
            output, clean = np.asarray(Image.open(folder / n)), np.asarray(Image.open(data / "clean" / n))
            assert row["detail_psnr"] == pytest.approx(quality_metrics.detail_psnr(output, clean), abs=1e-9)
            assert row["noise"] == pytest.approx(quality_metrics.noise_level(output), abs=1e-9)
        for key in ("detail_psnr", "noise"):
            assert methods[name]["mean"][f"{key}_mean"] == pytest.approx(np.mean([r[key] for r in rows]))
    clean_noise = [quality_metrics.noise_level(np.asarray(Image.open(data / "clean" / n))) for n in names]
    assert results["clean"]["noise_mean"] == pytest.approx(np.mean(clean_noise))
    assert "detail_psnr" in results["protocol"] and "noise" in results["protocol"]

    tiny = methods["tiny"]
    assert tiny["n"] == 1 and tiny["std"]["psnr_mean"] == 0 and tiny["reused_runs"] == 0
    (seed0,) = tiny["per_seed"]
    assert seed0["seed"] == 0 and seed0["steps"] == 3 and seed0["train_minutes"] > 0
    assert tiny["delta_vs_input"]["psnr_mean"] == pytest.approx(seed0["psnr_mean"] - np.mean(psnrs), abs=1e-6)
    for entry in methods.values():
        assert [r["name"] for r in entry["per_seed"][0]["per_image"]] == [n[:-4] for n in names]
    config = json.loads((out / "runs" / "tiny" / "seed_0" / "config.json").read_text())
    assert config["data"]["source"] == str(out / "data" / "source") and config["vgg_weights"] == "random"
    assert config["data"]["heldout"] == str(data / "degraded") and config["data"]["builtin"] is None

    assert sorted(results["camera_params"]) == sorted(SMALL_SPLIT["train"] + SMALL_SPLIT["test"])
    assert [results["halves"][n]["source"] for n in SMALL_SPLIT["train"]] == ["left", "right", "left", "right"]
    assert results["train_layout"] == quality_data.TRAIN_LAYOUT
    assert results["split"] == SMALL_SPLIT and set(results["photos"]) == {n for v in SMALL_SPLIT.values() for n in v}
    for folder in ("source", "target"):
        assert sorted(p.name for p in (out / "data" / folder).iterdir()) == sorted(
            f"{n}.png" for n in SMALL_SPLIT["train"])
    assert "--max_side=200" in results["command"]
    md = (out / "results.md").read_text()
    assert all(f"| {m} |" in md for m in methods) and "CC BY 2.0" in md and "cut in two halves" in md
    assert "detail PSNR (dB)" in md and f"noise (clean {results['clean']['noise_mean']:.2f})" in md

    grid = np.asarray(Image.open(out / "grid.png"))
    side = min(min(Image.open(data / "clean" / n).size) for n in names)
    assert grid.shape == (14 + 2 * side + 2, 10 * side + 9 * 2, 3)  # label strip; 2 photos; 10 columns


def test_fitted_colour_transfer_matches_float64_moments(tmp_path):
    """moment_transfer gives the source set's pooled colours the target set's per-channel mean and std."""
    rng = np.random.default_rng(0)
    for side, (lo, hi) in (("source", (20, 140)), ("target", (60, 250))):
        (tmp_path / side).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(lo, hi, (40, 50, 3), np.uint8)).save(tmp_path / side / f"{i}.png")
    data = quality_data.BenchmarkData(str(tmp_path), str(tmp_path / "source"), str(tmp_path / "target"),
                                      "", "", "", "", "")
    fitted = baselines.fitted_baselines(data)
    load = lambda side: np.concatenate([np.asarray(Image.open(p), np.float64).reshape(-1, 3) / 255  # noqa: E731
                                        for p in sorted((tmp_path / side).iterdir())])
    mapped = fitted["moment_transfer"](load("source"))
    np.testing.assert_allclose(mapped.mean(0), load("target").mean(0), atol=2e-3)  # pools: a pixel sample
    np.testing.assert_allclose(mapped.std(0), load("target").std(0), rtol=2e-2)
    flat = np.full((1, 30, 40, 3), 0.3)  # no detail: the base-layer version is the same map
    np.testing.assert_allclose(fitted["moment_transfer_base"](flat[0]), fitted["moment_transfer"](flat[0]), atol=1e-5)
    assert tuple(fitted) == baselines.FITTED_NAMES
    photo = np.random.default_rng(1).random((24, 32, 3))  # the denoiser runs on the colour-fitted photo
    np.testing.assert_array_equal(fitted["bandpass_transfer_base_nlm"](photo),
                                  baselines.nlm_denoise(fitted["bandpass_transfer_base"](photo)))


def test_camera_colour_inverse_undoes_the_colour_steps():
    """colour_inverse is the exact inverse of apply_camera's steps 2-3, checked against them written out here."""
    rng = np.random.default_rng(3)
    x = rng.random((50, 3))
    for params in (synthetic_camera.draw_camera(rng), synthetic_camera.centre_camera(),
                   {"contrast": 0.8, "brightness": 0.05, "gains": [0.85, 1.0, 1.15]}):
        degraded = np.asarray(params["gains"]) * (0.5 + params["contrast"] * (x - 0.5) + params["brightness"])
        matrix, bias = synthetic_camera.colour_inverse(params)
        np.testing.assert_allclose(degraded @ matrix.T + bias, x, atol=1e-12)
    centre = synthetic_camera.centre_camera()
    assert centre["contrast"] == pytest.approx(np.mean(synthetic_camera.CAMERA_RANGES["contrast"]))
    assert centre["gains"] == pytest.approx([np.mean(synthetic_camera.CAMERA_RANGES["gain_r"]), 1.0,
                                             np.mean(synthetic_camera.CAMERA_RANGES["gain_b"])])


def test_oracle_rows_invert_each_photo_camera():
    """On a flat photo (no detail, so the base-layer path is the plain map) the oracle rows return the clean colour
    of this photo's camera (photo rows) and of the family's centre camera (set row); oracle_nlm and the last row
    denoise (the colour start, the photo's clean colour) at the camera's own noise level."""
    cam = {"contrast": 0.6, "brightness": -0.05, "gains": [1.12, 1.0, 0.75], "noise_sigma": 0.03}
    clean = np.array([0.35, 0.5, 0.6])
    degraded = np.broadcast_to(np.asarray(cam["gains"]) * (0.5 + cam["contrast"] * (clean - 0.5)
                                                           + cam["brightness"]), (20, 24, 3))
    start = lambda x: 0.9 * x + 0.05  # noqa: E731 (a stand-in for the fitted colour start)
    rows = baselines.oracle_baselines(cam, synthetic_camera.CAMERA_RANGES, start)
    assert tuple(rows) == baselines.ORACLE_NAMES
    np.testing.assert_allclose(rows["oracle_photo_colour"](degraded), np.broadcast_to(clean, (20, 24, 3)), atol=1e-5)
    matrix, bias = synthetic_camera.colour_inverse(synthetic_camera.centre_camera(synthetic_camera.CAMERA_RANGES))
    np.testing.assert_allclose(rows["oracle_set_colour"](degraded)[5, 5], degraded[5, 5] @ matrix.T + bias, atol=1e-5)
    photo = np.random.default_rng(2).random((24, 32, 3))
    np.testing.assert_array_equal(rows["oracle_photo_colour_nlm"](photo),
                                  baselines.nlm_denoise(rows["oracle_photo_colour"](photo), sigma=0.03))
    np.testing.assert_array_equal(rows["oracle_nlm"](photo), baselines.nlm_denoise(start(photo), sigma=0.03))


def test_run_benchmark_reuses_a_finished_run(bench):
    out, first = bench
    again = _bench(out)
    assert again["methods"]["tiny"]["reused_runs"] == 1
    assert again["methods"]["tiny"]["per_seed"] == first["methods"]["tiny"]["per_seed"]


def test_cli_bad_preset_path_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = script_server.run([sys.executable, str(REPO / "launch" / "quality.py"),
                              f"--output_dir={tmp_path / 'out'}", f"--presets=a={tmp_path / 'nope.py'}"], cwd=REPO,
                             env=env, timeout=120)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: --presets=a={tmp_path / 'nope.py'}: "), lines
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------- experiments/quality/unseen_camera.py's flags

# Runs the script's main with wespe.evaluation.quality_benchmark.run_benchmark replaced by a recorder: what it would
# benchmark (the camera ranges draw_camera reads, the presets, the split) without preparing photos or training.
_UNSEEN_RECORDER = """
import json, sys
from wespe.evaluation import quality_benchmark
from wespe.training import synthetic_camera
def record(out_dir, presets, seeds, split, data_seed):
    script = sys._getframe(1).f_globals  # main's module: the script's own tables, to compare with
    print(json.dumps({"ranges": synthetic_camera.CAMERA_RANGES, "presets": presets, "seeds": seeds, "split": split,
                      "data_seed": data_seed, "CAMERAS": script["CAMERAS"], "UNSEEN_SPLIT": script["UNSEEN_SPLIT"],
                      "PRESETS": script["PRESETS"]}))
    sys.exit(0)
quality_benchmark.run_benchmark = record
"""


def _unseen_camera(*flags):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return script_server.run([sys.executable, "experiments/quality/unseen_camera.py", *flags], cwd=REPO, env=env,
                             timeout=120, prelude=_UNSEEN_RECORDER)


def test_unseen_camera_script_draws_the_chosen_camera_family(tmp_path):
    proc = _unseen_camera(f"--output_dir={tmp_path}", "--camera=noisy_phone", "--data_seed=11",
                          "--presets=mine=experiments/quality/wespe_restore.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["ranges"] == seen["CAMERAS"]["noisy_phone"]
    assert seen["ranges"]["noise_sigma"][0] >= 0.04 and seen["ranges"]["jpeg_quality"][0] >= 85  # noise, mild JPEG
    assert seen["presets"] == {"mine": "experiments/quality/wespe_restore.py"} and seen["data_seed"] == 11
    assert seen["split"] == seen["UNSEEN_SPLIT"]
    proc = _unseen_camera(f"--output_dir={tmp_path}")  # the default: the cool camera, the script's two presets
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["ranges"] == seen["CAMERAS"]["cool_overexposed"] and seen["presets"] == seen["PRESETS"]
    for camera_family in seen["CAMERAS"].values():  # every family sets every parameter the camera model draws
        assert set(camera_family) == set(synthetic_camera.CAMERA_RANGES)
        assert all(low < high for low, high in camera_family.values())


# ------------------------------------------------------------------- experiments/quality/colour_estimators.py

def test_colour_estimators_script_scores_every_estimator_and_the_true_map(tmp_path):
    from wespe import color_map
    from wespe.training import color_pool
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    script = [sys.executable, "experiments/quality/colour_estimators.py", f"--output_dir={tmp_path}",
              "--max_side=96"]
    proc = script_server.run([*script, "--settings=warm_contrasty"], cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "results.json").read_text())
    assert list(rows) == ["warm_contrasty"]
    for name, row in rows.items():
        data = quality_data.folders(tmp_path / name)
        ranges = json.loads(Path(data.camera_params).read_text())["ranges"]
        # its own cameras
        assert ranges == {k: list(v) for k, v in synthetic_camera.CAMERA_FAMILIES[row["family"]].items()}
        pools = color_pool.build_color_pools(data.source, data.target, band=True)
        for estimator in color_map.ESTIMATORS:  # the maps the recipe would start from on these folders
            matrix, bias = color_map.fitted_colour_map(pools, estimator)
            np.testing.assert_allclose(row[estimator]["gains"], np.diag(matrix), atol=1e-4)
            np.testing.assert_allclose(row[estimator]["bias"], bias, atol=1e-4)

        # w2_affine: per channel no affine map brings the source pool's colours closer to the target pool's in W2
        # (equal-size samples: W2^2 = mean square of the sorted differences) - not the estimators', nor the
        # W2-optimal line nudged in gain or offset
        def w2(gains, bias, c):
            mapped = np.sort(gains[c] * pools["source"][:, c] + bias[c])
            return float(np.mean(np.square(mapped - np.sort(pools["target"][:, c]))))

        g, b = np.asarray(row["w2_affine"]["gains"]), np.asarray(row["w2_affine"]["bias"])
        for c in range(3):
            best = w2(g, b, c)
            others = [(np.asarray(row[e]["gains"]), np.asarray(row[e]["bias"])) for e in color_map.ESTIMATORS]
            others += [(g * np.where(np.arange(3) == c, f, 1.0), b) for f in (0.98, 1.02)]
            others += [(g, b + np.where(np.arange(3) == c, d, 0.0)) for d in (-0.01, 0.01)]
            assert all(best <= w2(og, ob, c) + 1e-6 for og, ob in others), (c, best)
        # the true set-level map undoes most of the camera: far above the input
        assert row["true_set_colour"]["psnr"] > row["input"]["psnr"] + 2
    assert "| warm_contrasty (warm_contrasty, 3) |" in (tmp_path / "results.md").read_text()
    bad = script_server.run([*script, "--settings=nope"], cwd=REPO, env=env, timeout=120)
    assert bad.returncode == 2 and "--settings: unknown ['nope']" in bad.stderr


def test_detail_and_noise_pairs_outputs_as_evaluation_does(tmp_path):
    """The benchmark's detail PSNR pairs an output with its reference by image_paths.match_pairs, as evaluate does:
    by path, then by a unique stem (an output one folder deeper still finds its reference); an output without a
    reference gets its noise level only."""
    rng = np.random.default_rng(0)
    photos = {name: (rng.random((40, 48, 3)) * 255).astype(np.uint8) for name in ("a", "b", "z", "lonely")}
    (tmp_path / "out" / "deep").mkdir(parents=True)
    (tmp_path / "ref").mkdir()
    for name, where in (("a", "out"), ("b", "out"), ("z", "out/deep"), ("lonely", "out")):
        Image.fromarray(photos[name]).save(tmp_path / where / f"{name}.png")
    for name in ("a", "b", "z"):
        brighter = np.clip(photos[name].astype(int) + 3, 0, 255).astype(np.uint8)
        Image.fromarray(brighter).save(tmp_path / "ref" / f"{name}.png")
    scores = quality_benchmark.detail_and_noise(tmp_path / "out", tmp_path / "ref")
    assert sorted(scores) == ["a", "b", "deep/z", "lonely"]
    read = lambda path: image_io.read_image(path)[0]  # noqa: E731
    expected_pairs = (("a", "out/a", "ref/a"), ("b", "out/b", "ref/b"), ("deep/z", "out/deep/z", "ref/z"))
    for name, output, reference in expected_pairs:
        expected = quality_metrics.detail_psnr(read(tmp_path / f"{output}.png"), read(tmp_path / f"{reference}.png"))
        assert scores[name]["detail_psnr"] == expected
    assert scores["a"]["detail_psnr"] != scores["b"]["detail_psnr"]  # the photos differ: a wrong pair would show
    assert "detail_psnr" not in scores["lonely"] and scores["lonely"]["noise"] > 0


# ------------------------------------------------------------------- experiments/quality/target_dependence.py

def test_target_dependence_script_reproduces_the_benchmark_and_scores_the_test_halves(bench):
    """Against the benchmark's own target the script's Spearman numbers are the benchmark's pooled rank agreement;
    against the test photos' other halves it scores every method row's half."""
    out, results = bench
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = script_server.run([sys.executable, "experiments/quality/target_dependence.py", f"--run_dir={out}"],
                             cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    rows = sum(m["n"] for m in results["methods"].values() if m["kind"] != "oracle")
    pooled = results["no_reference"]["rank_agreement"]["pooled"]
    own = next(line for line in lines if line.startswith("| training halves ("))
    assert own.endswith(f"| {rows} | {pooled['niqe_set']:+.3f} | {pooled['color_distance']:+.3f} |"), own
    assert any(line.startswith("| test halves (2 target photos") for line in lines)
    table = [line for line in lines if line.startswith("| ") and "|---" not in line][4:]  # the rows' numbers
    assert len(table) == rows and table[0].startswith("| input | - | ")
