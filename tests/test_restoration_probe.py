"""The restoration probe (wespe.evaluation.restoration_probe, launch/benchmark.py --mode=restoration_probe): G trained
alone to undo a degradation on crops, scored on whole held-out photos."""

import numpy as np
import pytest

from tests.test_benchmark_cli import _run
from tests.test_texture_probe import _smooth_photos
from wespe import config as configs
from wespe import degradation
from wespe.evaluation import restoration_probe

# Sensor noise only (no blur; JPEG at 95 barely changes a photo): what a small network learns to remove quickly.
NOISE_ONLY = {"blur_sigma": (0.0, 0.0), "noise_sigma": (0.08, 0.08), "jpeg_quality": (95, 95)}


def _config(norm="none"):
    c = configs.wespe_plus()
    c.generator.update(dict(width=8, num_blocks=1, norm=norm))
    c.patch_size, c.batch_size = 24, 8
    c.optimizer.lr_generator, c.optimizer.warmup_steps = 3e-3, 0
    return c


def _heldout(degrader, seed):
    clean = _smooth_photos(2, seed)
    rng = np.random.default_rng(seed)
    return [degrader(c[None], rng)[0] for c in clean], clean


def test_probe_learns_to_denoise_whole_photos():
    """Identity colour map: step 0 is the degraded photo itself (its PSNR computed here from the definition); a
    network without instance norm trained on noisy crops must then clean the whole held-out photos."""
    eye, zero = np.eye(3), np.zeros(3)
    degrader = restoration_probe.camera_degrader(NOISE_ONLY, eye, zero)
    degraded, clean = _heldout(degrader, 7)
    result = restoration_probe.probe(_config(), _smooth_photos(4, 1), degraded, clean, eye, zero, degrader,
                                     steps=200, eval_every=100, progress=False)
    assert [c["step"] for c in result["curve"]] == [0, 100, 200]
    expected = np.mean([10 * np.log10(1 / np.mean((np.round(x * 255) / 255 - y) ** 2))
                        for x, y in zip(degraded, clean)])
    assert result["start"]["psnr"] == pytest.approx(expected, abs=0.01)  # G starts as its (identity) colour path
    assert result["final"]["psnr"] >= result["start"]["psnr"] + 1.0, result["curve"]
    assert result["final"]["ssim"] > result["start"]["ssim"], result["curve"]
    assert result["settings"]["norm"] == "none" and result["curve"][-1]["loss"] > 0


def test_probe_is_deterministic_keeps_the_colour_path_and_needs_one():
    m, b = np.diag([0.9, 1.0, 1.1]), np.array([0.02, 0.0, -0.02])
    fitted = degradation.Degradation(0.5, 0.03, 60.0, tuple(np.linalg.inv(m).ravel()), tuple(-np.linalg.inv(m) @ b))
    degrader = restoration_probe.fitted_degrader(fitted, jitter=0.5)
    crops = degrader(np.full((2, 16, 16, 3), 0.5, np.float32), np.random.default_rng(0))
    assert crops.shape == (2, 16, 16, 3) and np.allclose(crops * 255, np.round(crops * 255), atol=1e-4)
    degraded, clean = _heldout(degrader, 3)
    runs = [restoration_probe.probe(_config("instance"), _smooth_photos(2, 1), degraded, clean, m, b, degrader,
                                    steps=2, eval_every=1, progress=False) for _ in range(2)]
    assert runs[0]["curve"] == runs[1]["curve"]
    np.testing.assert_allclose(runs[0]["colour_path"]["matrix"], m, atol=1e-7)  # trained around, not changed
    np.testing.assert_allclose(runs[0]["colour_path"]["bias"], b, atol=1e-7)
    c = _config()
    c.generator.global_color = "none"
    with pytest.raises(ValueError, match="global_color"):
        restoration_probe.probe(c, clean, degraded, clean, m, b, degrader, steps=1, progress=False)


def test_restoration_probe_mode_rejects_an_unknown_degradation(tmp_path):
    bad = _run("--mode=restoration_probe", f"--data_dir={tmp_path / 'data'}", "--restoration_degradations=blur")
    assert bad.returncode != 0 and "--restoration_degradations" in bad.stderr
    assert not (tmp_path / "data").exists()  # refused before the benchmark's photos are prepared
