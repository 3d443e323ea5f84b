"""The texture adversary's views (wespe.ops.texture_view) and the probe that trains it alone
(wespe.evaluation.texture_probe, launch/benchmark.py --mode=texture_probe)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from tests.test_benchmark_cli import _run
from wespe import config as configs
from wespe import ops
from wespe.evaluation import texture_probe


def test_highpass_view_is_scaled_luma_minus_its_normalised_blur():
    rng = np.random.default_rng(0)
    images = rng.random((2, 20, 24, 3))
    out = np.asarray(ops.highpass_grayscale(jnp.asarray(images, jnp.float32)))[..., 0]
    gray = images @ np.asarray(ops.GRAYSCALE_WEIGHTS)
    taps = ops.gaussian_taps(7, ops.HIGHPASS_SIGMA)
    kernel = np.outer(taps, taps)
    # The blur normalised by the blurred ones: at the border it averages the pixels inside only.
    blurred = np.stack([scipy.ndimage.convolve(g, kernel, mode="constant") for g in gray])
    weight = scipy.ndimage.convolve(np.ones(gray.shape[1:]), kernel, mode="constant")
    expected = ops.HIGHPASS_GAIN * (gray - blurred / weight)
    np.testing.assert_allclose(out, expected, atol=1e-5)  # 49 float32 products of values <= 8
    flat = np.asarray(ops.highpass_grayscale(jnp.full((1, 9, 9, 3), 0.7, jnp.float32)))
    np.testing.assert_allclose(flat, 0.0, atol=1e-6)  # no border artefact
    assert ops.texture_view(jnp.asarray(images), "gray").shape == (2, 20, 24, 1)
    with pytest.raises(ValueError, match="texture input"):
        ops.texture_view(jnp.asarray(images), "edges")


def _smooth_photos(n, seed, noise=0.0):
    rng = np.random.default_rng(seed)
    photos = []
    for _ in range(n):
        base = scipy.ndimage.gaussian_filter(rng.random((80, 80, 3)), (3, 3, 0))
        base = (base - base.min()) / (base.max() - base.min())
        photos.append(np.clip(base + noise * rng.standard_normal(base.shape), 0, 1).astype(np.float32))
    return photos


@pytest.mark.optimized  # 100 training steps of the discriminator: 11 s, 238 s unoptimised
def test_probe_separates_noisy_from_clean_photos_on_the_highpass_view():
    """Source photos carry sensor noise (sigma 0.03), target photos none, different scenes on every side: the
    high-pass adversary must tell held-out photos of the two apart within a hundred steps."""
    c = configs.wespe_paper()
    c.patch_size, c.batch_size = 32, 8
    c.discriminator.update(dict(head="global_pool", norm="none", init="he", texture_input="highpass"))
    result = texture_probe.probe(c, _smooth_photos(4, 0, 0.03), _smooth_photos(4, 1), _smooth_photos(3, 2, 0.03),
                                 _smooth_photos(3, 3), steps=100, eval_every=50, heldout_patches=64, progress=False)
    assert [p["step"] for p in result["curve"]] == [50, 100]
    assert result["final_accuracy"] >= 0.9, result["curve"]
    assert result["settings"]["texture_input"] == "highpass"


def test_texture_probe_mode_end_to_end(tmp_path):
    out = tmp_path / "probe.json"
    proc = _run("--mode=texture_probe", f"--data_dir={tmp_path / 'data'}", "--texture_inputs=gray,highpass",
                "--probe_steps=4", "--eval_every=2", "--config.patch_size=32", "--config.batch_size=2",
                "--config.discriminator.head=global_pool", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["settings"]["texture_input"] for r in rows] == ["gray", "highpass"]
    assert all([p["step"] for p in r["curve"]] == [2, 4] and 0 <= r["final_accuracy"] <= 1 for r in rows)
    bad = _run("--mode=texture_probe", f"--data_dir={tmp_path / 'data'}", "--texture_inputs=edges")
    assert bad.returncode != 0 and "--texture_inputs" in bad.stderr
