"""Quality in the loop (wespe/training/heldout.py): the noise estimate, aligned held-out crops, the logged numbers."""

import numpy as np
import pytest
from PIL import Image

from wespe import metrics
from wespe.training import heldout, scan


def test_noise_sigma_recovers_gaussian_noise():
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.2, 0.8, 128)[None, :, None] * np.ones((128, 128, 3))  # structure the kernel cancels
    for sigma in (0.01, 0.05):
        noisy = ramp + rng.normal(0, sigma, (128, 128, 1))  # the same noise on every channel: luma sigma = sigma
        assert abs(heldout.noise_sigma(noisy[None]) - sigma) < 0.05 * sigma
    assert heldout.noise_sigma(ramp[None]) < 1e-6


def _write(folder, name, array):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(folder / f"{name}.png")


def test_paired_crops_are_aligned_and_sized(tmp_path):
    rng = np.random.default_rng(1)
    for name, shape in [("a", (60, 80, 3)), ("b", (70, 50, 3)), ("tiny", (10, 10, 3))]:
        clean = rng.integers(0, 256, shape, np.uint8)
        _write(tmp_path / "ref", name, clean)
        _write(tmp_path / "photos", name, 255 - clean)  # a known relation between photo and reference
    _write(tmp_path / "photos", "unpaired", rng.integers(0, 256, (64, 64, 3), np.uint8))
    x, ref = heldout.paired_crops(tmp_path / "photos", tmp_path / "ref", n=5, size=128, seed=0, min_size=16)
    assert x.shape == ref.shape == (5, 50, 50, 3)  # the smallest usable photo's side; "tiny" is skipped
    np.testing.assert_allclose(x, 1.0 - ref, atol=1e-6)
    again, _ = heldout.paired_crops(tmp_path / "photos", tmp_path / "ref", n=5, size=128, seed=0, min_size=16)
    np.testing.assert_array_equal(x, again)
    alone, none = heldout.paired_crops(tmp_path / "photos", None, n=2, size=32, seed=0, min_size=16)
    assert alone.shape == (2, 32, 32, 3) and none is None
    _write(tmp_path / "other", "zzz", rng.integers(0, 256, (64, 64, 3), np.uint8))
    with pytest.raises(scan.DataError, match="heldout_reference.*no file name matches"):
        heldout.paired_crops(tmp_path / "photos", tmp_path / "other", n=2, size=32, seed=0)


def test_quality_metrics_and_regression_warning():
    rng = np.random.default_rng(2)
    ref = rng.random((3, 32, 32, 3)).astype(np.float32)
    x = np.clip(ref * 0.7 + 0.1, 0, 1).astype(np.float32)
    q = heldout.quality_metrics(x, ref, ref, ref)  # a perfect "enhancement"
    assert q["quality/psnr_input"] == pytest.approx(float(metrics.psnr_pooled(x, ref)), abs=1e-4)
    assert q["quality/psnr_enhanced"] == float("inf") and q["quality/ssim_enhanced"] == pytest.approx(1.0)
    assert q["quality/color_distance"] == 0.0 < q["quality/color_distance_input"]
    assert q["quality/change"] == pytest.approx(float(np.mean(np.abs(ref - x))), rel=1e-5)
    assert heldout.regression_warning(q) is None
    worse = heldout.quality_metrics(x, np.clip(x + 0.3, -1, 2), ref, None)  # clipped as a saved photo would be
    assert "quality/color_distance" not in worse
    assert "worse than its input" in heldout.regression_warning(worse)
    assert heldout.regression_warning(heldout.quality_metrics(x, x, None, None)) is None  # no references


def test_paired_crops_read_only_the_given_files_and_pair_by_the_shared_rule(tmp_path, monkeypatch):
    """``files`` (a training folder's usable files, from its data scan) are the only photos read; references
    pair as evaluation pairs them, a folder nested on one side only included (the stem fallback)."""
    rng = np.random.default_rng(2)
    clean = rng.integers(0, 256, (40, 40, 3), np.uint8)
    _write(tmp_path / "photos" / "nested", "a", 255 - clean)
    _write(tmp_path / "ref", "a", clean)
    (tmp_path / "photos" / "broken.png").write_bytes(b"skipped by the scan")
    read = []

    def spy(path, *args, **kwargs):
        read.append(path)
        return real(path, *args, **kwargs)

    real = heldout.read_image
    monkeypatch.setattr(heldout, "read_image", spy)
    x, ref = heldout.paired_crops(tmp_path / "photos", tmp_path / "ref", n=2, size=32, seed=0,
                                  files=[tmp_path / "photos" / "nested" / "a.png"])
    np.testing.assert_allclose(x, 1.0 - ref, atol=1e-6)
    assert tmp_path / "photos" / "broken.png" not in read
