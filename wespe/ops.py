"""Image operations shared by the losses: blur kernels, separable blur, grayscale, total variation.

Everything here is a pure function on NHWC float arrays. Kernels are built in float64 NumPy (they are
constants) and applied in the input's dtype.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

# ITU-R BT.601 luma weights, as tf.image.rgb_to_grayscale (used by the official DPED code).
GRAYSCALE_WEIGHTS = (0.2989, 0.5870, 0.1140)

BLUR_MODES = ("dped_code", "paper")


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def dped_code_taps(size: int = 21, nsig: float = 3.0) -> np.ndarray:
    """1-D taps of the official DPED colour blur (``utils.gauss_kernel(21, 3)``).

    The official 2-D kernel is ``sqrt(outer(k, k))`` normalised, with ``k`` the differences of the normal CDF
    over ``size + 1`` points spanning +-(nsig + interval / 2). Because ``sqrt(outer(k, k)) = outer(sqrt(k),
    sqrt(k))`` it is exactly separable, so these taps (``sqrt(k)`` normalised) applied along H then W give the
    same result with 2 * size instead of size**2 multiply-adds. Effective sigma: ~4.34 px for the defaults.
    """
    interval = (2 * nsig + 1.0) / size
    x = np.linspace(-nsig - interval / 2.0, nsig + interval / 2.0, size + 1)
    k = np.diff(_normal_cdf(x))
    taps = np.sqrt(k)
    return taps / taps.sum()


def gaussian_taps(size: int, sigma: float) -> np.ndarray:
    """1-D taps of a sampled, normalised Gaussian ``exp(-i^2 / (2 sigma^2))``, i centred on the middle tap."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"blur kernel size must be a positive odd number, got {size}")
    if sigma <= 0:
        raise ValueError(f"blur sigma must be positive, got {sigma}")
    i = np.arange(size, dtype=np.float64) - size // 2
    taps = np.exp(-(i**2) / (2.0 * sigma**2))
    return taps / taps.sum()


def blur_taps(mode: str) -> np.ndarray:
    """The 1-D taps for a named blur mode.

    ``dped_code``: the official code's kernel (default; effective sigma ~4.34 px).
    ``paper``: the DPED paper's formula read as a Gaussian of variance 3 (sigma = sqrt(3) ~ 1.73 px),
    sampled on the same 21-tap support.
    """
    if mode == "dped_code":
        return dped_code_taps()
    if mode == "paper":
        return gaussian_taps(21, math.sqrt(3.0))
    raise ValueError(f"unknown blur mode {mode!r}; expected one of {BLUR_MODES}")


def effective_sigma(taps: np.ndarray) -> float:
    """Standard deviation (in pixels) of a normalised, centred 1-D kernel."""
    i = np.arange(len(taps)) - len(taps) // 2
    return float(np.sqrt(np.sum(taps * i**2) / np.sum(taps)))


def _filter_axis(x: jnp.ndarray, taps: np.ndarray, axis: int) -> jnp.ndarray:
    # Shifted-slice sum with zero padding ("SAME", as tf.nn.depthwise_conv2d). A grouped/depthwise conv
    # would do the same per channel but is much slower on XLA:CPU.
    size = len(taps)
    half = size // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (half, size - 1 - half)
    xp = jnp.pad(x, pad)
    n = x.shape[axis]
    out = None
    for t, w in enumerate(taps):
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(t, t + n)
        term = xp[tuple(sl)] * jnp.asarray(w, x.dtype)
        out = term if out is None else out + term
    return out


def separable_blur(images: jnp.ndarray, taps: np.ndarray) -> jnp.ndarray:
    """Blur NHWC images per channel with the 2-D kernel ``outer(taps, taps)``, zero padding, same size."""
    return _filter_axis(_filter_axis(images, taps, axis=1), taps, axis=2)


def blur(images: jnp.ndarray, mode: str = "dped_code") -> jnp.ndarray:
    """Colour blur used by the colour loss / colour adversary (see :func:`blur_taps` for the modes)."""
    return separable_blur(images, blur_taps(mode))


def grayscale(images: jnp.ndarray) -> jnp.ndarray:
    """NHWC RGB -> NHW1 luma with the weights of ``tf.image.rgb_to_grayscale``."""
    w = jnp.asarray(GRAYSCALE_WEIGHTS, images.dtype)
    return jnp.sum(images * w, axis=-1, keepdims=True)


HIGHPASS_SIGMA = 1.0
HIGHPASS_GAIN = 8.0


def highpass_grayscale(images: jnp.ndarray) -> jnp.ndarray:
    """NHWC RGB -> NHW1 luma minus its Gaussian blur (sigma :data:`HIGHPASS_SIGMA` px, 7 taps, normalised at the
    border so patch edges stay 0), times :data:`HIGHPASS_GAIN`: the fine detail, where sensor noise, blur and
    JPEG blocks live, without the scene's shading, which dominates raw grayscale patches of two sets. The
    gain brings noise of a few 8-bit levels to about the scale of raw luma."""
    gray = grayscale(images)
    taps = gaussian_taps(7, HIGHPASS_SIGMA)
    weight = separable_blur(jnp.ones_like(gray[:1]), taps)
    return HIGHPASS_GAIN * (gray - separable_blur(gray, taps) / weight)


TEXTURE_INPUTS = ("gray", "highpass")


def texture_view(images: jnp.ndarray, texture_input: str = "gray") -> jnp.ndarray:
    """What the texture adversary sees: ``gray`` (the papers) or ``highpass`` (:func:`highpass_grayscale`)."""
    if texture_input == "gray":
        return grayscale(images)
    if texture_input == "highpass":
        return highpass_grayscale(images)
    raise ValueError(f"unknown texture input {texture_input!r}; expected one of {TEXTURE_INPUTS}")


def total_variation(images: jnp.ndarray) -> jnp.ndarray:
    """Per-image total variation as the official DPED code: mean squared horizontal plus vertical differences.

    Returns shape (N,). A constant image gives exactly 0.
    """
    dy = images[:, 1:, :, :] - images[:, :-1, :, :]
    dx = images[:, :, 1:, :] - images[:, :, :-1, :]
    # An axis of length 1 has no differences; its term is 0 rather than a 0/0 NaN.
    ty = jnp.mean(dy**2, axis=(1, 2, 3)) if dy.shape[1] > 0 else jnp.zeros(images.shape[0], images.dtype)
    tx = jnp.mean(dx**2, axis=(1, 2, 3)) if dx.shape[2] > 0 else jnp.zeros(images.shape[0], images.dtype)
    return tx + ty
