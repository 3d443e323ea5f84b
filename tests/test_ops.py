"""Blur kernels, separable blur, grayscale and TV against float64 NumPy/SciPy constructions."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import scipy.stats

from wespe import ops


def official_dped_kernel_2d(kernlen=21, nsig=3):
    """The official DPED utils.gauss_kernel, verbatim in float64 (scipy.stats CDF, 2-D sqrt of the outer product)."""
    interval = (2 * nsig + 1.0) / kernlen
    x = np.linspace(-nsig - interval / 2.0, nsig + interval / 2.0, kernlen + 1)
    kern1d = np.diff(scipy.stats.norm.cdf(x))
    kernel_raw = np.sqrt(np.outer(kern1d, kern1d))
    return kernel_raw / kernel_raw.sum()


def test_dped_code_taps_equal_official_2d_kernel():
    """outer(taps, taps) reproduces the official 21x21 kernel (it is exactly separable)."""
    taps = ops.dped_code_taps()
    np.testing.assert_allclose(np.outer(taps, taps), official_dped_kernel_2d(), rtol=1e-12, atol=1e-16)


def test_dped_code_effective_sigma():
    """The official kernel's effective sigma is ~4.34 px (not the paper's sqrt(3))."""
    assert ops.effective_sigma(ops.dped_code_taps()) == pytest.approx(4.3367, abs=1e-3)


def test_paper_blur_is_variance_three():
    taps = ops.blur_taps("paper")
    assert len(taps) == 21 and taps.sum() == pytest.approx(1.0)
    assert ops.effective_sigma(taps) == pytest.approx(math.sqrt(3.0), rel=1e-4)


def test_gaussian_taps_validation():
    with pytest.raises(ValueError, match="odd"):
        ops.gaussian_taps(4, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        ops.gaussian_taps(5, 0.0)
    with pytest.raises(ValueError, match="blur mode"):
        ops.blur_taps("box")


@pytest.mark.parametrize("mode", ["dped_code", "paper"])
def test_blur_matches_scipy_2d_convolution(mode):
    """Per-channel blur with zero padding ('SAME') equals a float64 2-D convolution with the full kernel."""
    rng = np.random.default_rng(0)
    x = rng.random((2, 23, 31, 3))
    taps = ops.blur_taps(mode)
    kernel = np.outer(taps, taps)
    expected = np.stack([np.stack([scipy.ndimage.convolve(x[n, :, :, c], kernel, mode="constant")
                                   for c in range(3)], -1) for n in range(2)])
    got = np.asarray(ops.blur(jnp.asarray(x, jnp.float32), mode))
    np.testing.assert_allclose(got, expected, atol=2e-6)


def test_blur_keeps_constant_interior_and_darkens_border():
    x = jnp.full((1, 40, 40, 3), 0.5, jnp.float32)
    y = np.asarray(ops.blur(x))
    np.testing.assert_allclose(y[0, 10:30, 10:30], 0.5, rtol=1e-6)  # full support inside
    assert y[0, 0, 0, 0] < 0.4  # zero padding, as TF's SAME depthwise conv


def test_grayscale_weights():
    rgb = np.random.default_rng(1).random((2, 4, 5, 3)).astype(np.float32)
    expected = rgb @ np.array([0.2989, 0.5870, 0.1140])
    np.testing.assert_allclose(np.asarray(ops.grayscale(jnp.asarray(rgb)))[..., 0], expected, rtol=1e-6)


def test_total_variation_against_numpy_and_constant():
    x = np.random.default_rng(2).random((3, 7, 9, 3))
    expected = (np.mean(np.diff(x, axis=2) ** 2, axis=(1, 2, 3)) + np.mean(np.diff(x, axis=1) ** 2, axis=(1, 2, 3)))
    np.testing.assert_allclose(np.asarray(ops.total_variation(jnp.asarray(x, jnp.float32))), expected, rtol=1e-5)
    assert float(jnp.max(ops.total_variation(jnp.full((2, 5, 5, 3), 0.3)))) == 0.0
    # A 1-pixel-high image has only horizontal differences (no NaN from an empty mean).
    row = jnp.asarray(x[:, :1], jnp.float32)
    np.testing.assert_allclose(np.asarray(ops.total_variation(row)),
                               np.mean(np.diff(x[:, :1], axis=2) ** 2, axis=(1, 2, 3)), rtol=1e-5)
