"""Full-reference and no-reference image-quality metrics (JAX, jitted, batched).

Conventions shared by every full-reference metric:

* Inputs are float images in ``[0, 1]`` (data range 1.0), either a batch ``(N, H, W, C)`` or one image
  ``(H, W, C)``; any ``H, W >= 1``. A batch gives an ``(N,)`` array, one ``(H, W, C)`` image gives a 0-d
  array (scalar). ``a`` and ``b`` must have the same shape, otherwise :class:`MetricShapeError` (a
  ``ValueError``) is raised naming both shapes. Computation is float32 (inputs are cast).
* Gaussian filtering is done as separable 1-D 'valid' passes (sums of shifted slices), never as a
  grouped/depthwise convolution (slow on XLA:CPU).

Metrics:

``psnr``          per-image PSNR in dB with peak 1.0; identical images give ``+inf`` (no warning).
``psnr_pooled``   ``10 log10(1 / MSE)`` with the MSE pooled over all pixels of all images (the DPED code's
                  convention: it averages MSE over the test set before taking the log). ``+inf`` if 0.
``ssim``          SSIM with an 11-tap Gaussian window (sigma 1.5), K1 0.01, K2 0.03, averaged over the valid
                  region -- identical to scikit-image's ``structural_similarity(..., gaussian_weights=True,
                  sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1)``, which filters
                  and then crops a border of 5 pixels. ``channel="rgb"`` averages the SSIM maps of all
                  channels (any channel count is accepted); ``channel="luma"`` computes SSIM on the BT.601
                  luma ``Y = 0.299 R + 0.587 G + 0.114 B`` (needs 3 channels).
                  *Small images* (``min(H, W) < 11``, where scikit-image refuses): the window shrinks to the
                  largest odd size ``s <= min(H, W)`` with ``sigma = s * 1.5 / 11`` and the border cropped
                  is ``(s - 1) // 2`` (equal to scikit-image with ``win_size=s`` and that sigma/truncation).
                  A 1x1 (or 1xW / Hx1) image gets ``s = 1``: the window is the single pixel, every variance
                  and covariance is 0, so the contrast-structure term is ``C2 / C2 = 1`` and SSIM reduces to
                  the mean luminance term ``(2 x y + C1) / (x^2 + y^2 + C1)`` -- finite, in ``(0, 1]`` for
                  non-negative inputs, 1 for equal pixels.
``ms_ssim``       5-scale MS-SSIM exactly as Google's ``msssim.py`` (tensorflow/models) used by the DPED
                  code: at every scale the Gaussian filter (11, sigma 1.5, 'valid') gives the mean SSIM and
                  mean contrast-structure ``cs`` over all valid pixels *and channels jointly* (the RGB tensor,
                  no luma); then both images are downsampled by a 2x2 box average (``reflect`` mode, i.e. the
                  last row/column is repeated for odd sizes, then ``[::2, ::2]``; an ``n`` pixel side becomes
                  ``ceil(n / 2)``). Result ``prod(cs[:-1] ** w[:-1]) * ssim[-1] ** w[-1]``.
                  *Coarse scales smaller than the filter*: as ``msssim.py``, the filter size becomes
                  ``min(11, H, W)`` (possibly even; an even Gaussian is sampled at half-integer offsets) with
                  ``sigma = size * 1.5 / 11``. At 1x1 the filter is the single pixel: ``cs = 1`` and the
                  scale's SSIM is the luminance term (as for ``ssim`` above), so e.g. 16x16 inputs
                  (16, 8, 4, 2, 1) are well defined. *Negative terms*: ``msssim.py`` raises a negative ``cs``
                  (or final-scale SSIM) to a fractional power and returns NaN; here such a term is clipped to
                  0 first, so the result is always in ``[0, 1]`` (it differs from ``msssim.py`` only where that
                  returns NaN).
``entropy``       Shannon entropy (bits) of the 256-bin histogram of a uint8 image, all channels pooled.
``bits_per_pixel_png``  size in bits of the lossless PNG (Pillow, ``compress_level=6`` -- Pillow's default --
                  no ``optimize``) divided by ``H * W``; host side, not jitted.
"""

from __future__ import annotations

import functools
import io

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DPED_MS_SSIM_WEIGHTS",
    "MetricShapeError",
    "bits_per_pixel_png",
    "entropy",
    "ms_ssim",
    "psnr",
    "psnr_pooled",
    "ssim",
]

DPED_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

_WIN = 11
_SIGMA = 1.5
_K1 = 0.01
_K2 = 0.03
_C1 = (_K1 * 1.0) ** 2
_C2 = (_K2 * 1.0) ** 2
_LUMA = (0.299, 0.587, 0.114)
_CHANNELS = ("rgb", "luma")


class MetricShapeError(ValueError):
    """Inputs of a metric have mismatching or unsupported shapes."""


# ----------------------------------------------------------------------------------------------------------
# input handling


def _prepare_pair(a, b, name: str, *, need_rgb: bool = False) -> tuple[jax.Array, jax.Array, bool]:
    """Validate shapes, add a batch axis to single images, cast to float32. Returns (a, b, was_single)."""
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    if a.shape != b.shape:
        raise MetricShapeError(f"{name}: shape mismatch between a {tuple(a.shape)} and b {tuple(b.shape)}")
    if a.ndim not in (3, 4):
        raise MetricShapeError(
            f"{name}: expected NHWC or HWC images, got a {tuple(a.shape)} and b {tuple(b.shape)}"
        )
    single = a.ndim == 3
    if single:
        a, b = a[None], b[None]
    _, h, w, c = a.shape
    if h < 1 or w < 1 or c < 1:
        raise MetricShapeError(f"{name}: empty image, a {tuple(a.shape)} and b {tuple(b.shape)}")
    if need_rgb and c != 3:
        raise MetricShapeError(
            f"{name}: needs 3-channel RGB images, got a {tuple(a.shape)} and b {tuple(b.shape)}"
        )
    return a.astype(jnp.float32), b.astype(jnp.float32), single


def _finish(values: jax.Array, single: bool) -> jax.Array:
    return values[0] if single else values


# ----------------------------------------------------------------------------------------------------------
# separable Gaussian filtering


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian of ``size`` taps centred between them for even sizes (as fspecial/msssim.py)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(x: jax.Array, taps: np.ndarray) -> jax.Array:
    """'valid' separable filtering of ``(..., H, W, C)`` over H and W by shifted-slice sums."""
    k = len(taps)
    if k == 1:
        return x * jnp.float32(taps[0])
    h, w = x.shape[-3], x.shape[-2]
    ho, wo = h - k + 1, w - k + 1
    rows = sum(jnp.float32(taps[i]) * x[..., i : i + ho, :, :] for i in range(k))
    return sum(jnp.float32(taps[i]) * rows[..., :, i : i + wo, :] for i in range(k))


def _ssim_terms(x: jax.Array, y: jax.Array, taps: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """SSIM map and contrast-structure map on the valid region (biased / population covariances).

    Moments are taken of the images shifted by their common per-image, per-channel mean (variances are
    shift-invariant), which keeps ``E[x^2] - E[x]^2`` well conditioned in float32.
    """
    shift = 0.5 * (jnp.mean(x, axis=(1, 2), keepdims=True) + jnp.mean(y, axis=(1, 2), keepdims=True))
    x = x - shift
    y = y - shift
    stacked = jnp.stack([x, y, x * x, y * y, x * y])
    mu_x, mu_y, m_xx, m_yy, m_xy = _filter_valid(stacked, taps)
    var_x = m_xx - mu_x * mu_x
    var_y = m_yy - mu_y * mu_y
    cov = m_xy - mu_x * mu_y
    v1 = 2.0 * cov + _C2
    v2 = var_x + var_y + _C2
    cs_map = v1 / v2
    mu_x = mu_x + shift
    mu_y = mu_y + shift
    ssim_map = (2.0 * mu_x * mu_y + _C1) / (mu_x * mu_x + mu_y * mu_y + _C1) * cs_map
    return ssim_map, cs_map


# ----------------------------------------------------------------------------------------------------------
# PSNR


@jax.jit
def _mse(a: jax.Array, b: jax.Array) -> jax.Array:
    d = a - b
    # reduce W/C first then H: shorter float32 accumulation chains
    return jnp.mean(jnp.mean(d * d, axis=(2, 3)), axis=1)


def _mse_to_db(mse: jax.Array) -> jax.Array:
    safe = jnp.where(mse == 0, 1.0, mse)
    return jnp.where(mse == 0, jnp.inf, -10.0 * jnp.log10(safe))


@jax.jit
def _psnr_core(a: jax.Array, b: jax.Array) -> jax.Array:
    return _mse_to_db(_mse(a, b))


@jax.jit
def _psnr_pooled_core(a: jax.Array, b: jax.Array) -> jax.Array:
    return _mse_to_db(jnp.mean(_mse(a, b)))


def psnr(a, b) -> jax.Array:
    """Per-image PSNR in dB (peak 1.0); ``+inf`` for identical images. ``(N,)`` or scalar for HWC."""
    a, b, single = _prepare_pair(a, b, "psnr")
    return _finish(_psnr_core(a, b), single)


def psnr_pooled(a, b) -> jax.Array:
    """``10 log10(1 / MSE)`` with the MSE averaged over all pixels of all images (DPED convention)."""
    a, b, _ = _prepare_pair(a, b, "psnr_pooled")
    return _psnr_pooled_core(a, b)


# ----------------------------------------------------------------------------------------------------------
# SSIM


def _ssim_window(h: int, w: int) -> tuple[int, float]:
    """Window size/sigma: 11 / 1.5, or for small images the largest odd size <= min(H, W), sigma scaled."""
    m = min(h, w, _WIN)
    size = m if m % 2 == 1 else m - 1
    return size, size * _SIGMA / _WIN


@functools.partial(jax.jit, static_argnames=("channel",))
def _ssim_core(a: jax.Array, b: jax.Array, channel: str) -> jax.Array:
    if channel == "luma":
        luma = jnp.asarray(_LUMA, jnp.float32)
        a = jnp.sum(a * luma, axis=-1, keepdims=True)
        b = jnp.sum(b * luma, axis=-1, keepdims=True)
    size, sigma = _ssim_window(a.shape[1], a.shape[2])
    ssim_map, _ = _ssim_terms(a, b, _gaussian_1d(size, sigma))
    return jnp.mean(jnp.mean(ssim_map, axis=(2, 3)), axis=1)


def ssim(a, b, *, channel: str = "rgb") -> jax.Array:
    """Per-image SSIM (scikit-image Gaussian settings, valid-region mean). ``(N,)`` or scalar for HWC.

    ``channel="rgb"``: mean of the per-channel SSIM maps; ``"luma"``: SSIM of the BT.601 luma.
    Small images shrink the window (see the module docstring); 1x1 gives the luminance term.
    """
    if channel not in _CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {_CHANNELS}")
    a, b, single = _prepare_pair(a, b, "ssim", need_rgb=channel == "luma")
    return _finish(_ssim_core(a, b, channel), single)


# ----------------------------------------------------------------------------------------------------------
# MS-SSIM


def _box_downsample(x: jax.Array) -> jax.Array:
    """msssim.py's downsampling: 2x2 mean (ndimage 'reflect' convolve, i.e. x[i] + x[i+1]) then [::2, ::2]."""
    h, w = x.shape[1], x.shape[2]
    if h % 2:
        x = jnp.concatenate([x, x[:, -1:]], axis=1)
    if w % 2:
        x = jnp.concatenate([x, x[:, :, -1:]], axis=2)
    x = x[:, 0::2] + x[:, 1::2]
    x = x[:, :, 0::2] + x[:, :, 1::2]
    return x * 0.25


@functools.partial(jax.jit, static_argnames=("weights",))
def _ms_ssim_core(a: jax.Array, b: jax.Array, weights: tuple[float, ...]) -> jax.Array:
    mssim, mcs = [], []
    for level in range(len(weights)):
        h, w = a.shape[1], a.shape[2]
        size = min(_WIN, h, w)
        sigma = size * _SIGMA / _WIN
        ssim_map, cs_map = _ssim_terms(a, b, _gaussian_1d(size, sigma))
        mssim.append(jnp.mean(jnp.mean(ssim_map, axis=(2, 3)), axis=1))
        mcs.append(jnp.mean(jnp.mean(cs_map, axis=(2, 3)), axis=1))
        if level + 1 < len(weights):
            a, b = _box_downsample(a), _box_downsample(b)
    out = jnp.maximum(mssim[-1], 0.0) ** weights[-1]
    for cs, wt in zip(mcs[:-1], weights[:-1]):
        out = out * jnp.maximum(cs, 0.0) ** wt
    return out


def ms_ssim(a, b, *, weights=DPED_MS_SSIM_WEIGHTS) -> jax.Array:
    """Per-image multi-scale SSIM as msssim.py (channels pooled). ``(N,)`` or scalar for HWC.

    ``len(weights)`` scales (5 by default). Filter shrinking at coarse scales and clipping of negative
    terms are described in the module docstring; the result is finite, in ``[0, 1]``.
    """
    weights = tuple(float(w) for w in weights)
    if not weights:
        raise ValueError("ms_ssim needs at least one weight")
    a, b, single = _prepare_pair(a, b, "ms_ssim")
    return _finish(_ms_ssim_core(a, b, weights), single)


# ----------------------------------------------------------------------------------------------------------
# no-reference measures


def _prepare_uint8(images, name: str) -> tuple[np.ndarray | jax.Array, bool]:
    if images.dtype != np.uint8:
        raise TypeError(f"{name}: expected uint8 images, got dtype {images.dtype}")
    if images.ndim not in (3, 4):
        raise MetricShapeError(f"{name}: expected NHWC or HWC images, got shape {tuple(images.shape)}")
    single = images.ndim == 3
    return (images[None] if single else images), single


@jax.jit
def _entropy_core(images: jax.Array) -> jax.Array:
    flat = images.reshape(images.shape[0], -1).astype(jnp.int32)
    counts = jax.vmap(lambda v: jnp.bincount(v, length=256))(flat).astype(jnp.float32)
    p = counts / flat.shape[1]
    terms = jnp.where(p > 0, -p * jnp.log2(jnp.where(p > 0, p, 1.0)), 0.0)
    return jnp.sum(terms, axis=1)


def entropy(images_uint8) -> jax.Array:
    """Shannon entropy in bits of each uint8 image's 256-bin histogram (all channels pooled).

    ``(N,)`` for NHWC, scalar for HWC. Constant image -> 0; a uniform histogram -> 8.
    """
    images, single = _prepare_uint8(jnp.asarray(images_uint8), "entropy")
    return _finish(_entropy_core(images), single)


def bits_per_pixel_png(images_uint8) -> np.ndarray:
    """Lossless PNG size in bits / (H * W) per image (Pillow, ``compress_level=6``, the default).

    Host-side. ``(N,)`` float64 for NHWC, a ``np.float64`` scalar for HWC. 1-channel images are saved as 8-bit
    grayscale, 3 as RGB, 4 as RGBA.
    """
    from PIL import Image

    images, single = _prepare_uint8(np.asarray(images_uint8), "bits_per_pixel_png")
    n, h, w, c = images.shape
    if c not in (1, 3, 4):
        raise MetricShapeError(f"bits_per_pixel_png: expected 1, 3 or 4 channels, got shape {images.shape}")
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        img = images[i, :, :, 0] if c == 1 else images[i]
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", compress_level=6)
        out[i] = 8.0 * buf.getbuffer().nbytes / (h * w)
    return out[0] if single else out
