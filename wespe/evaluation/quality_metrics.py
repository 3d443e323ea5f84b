"""Two NumPy measures of the quality benchmark that say *what kind* of change a method made, beside PSNR / SSIM:

``detail_psnr``   PSNR (data range 1) of the high-pass residuals ``x - gaussian(x, sigma=2)`` (per channel, on
                  [0, 1] floats) of an output and its clean reference: whether the fine detail -- noise, blur,
                  JPEG blocks, texture -- moved towards the reference's. A colour map changes it only through
                  its gain on the detail (an offset not at all); a denoiser or a sharpener changes it directly.
``noise_level``   the noise standard deviation of one image by Immerkær's fast estimator on its BT.601 luma, in
                  8-bit units (x 255): compared with the clean references' own value, whether a method left
                  noise in (above it) or smoothed texture away (below it).

:func:`noise_sigma` is the per-channel estimator itself, also used by :mod:`wespe.evaluation.baselines` to set the
strength of its non-local-means denoiser from the photo. NumPy / SciPy in float64, host side: the quality benchmark
scores a few whole photos, so nothing here is worth a jit (unlike :mod:`wespe.metrics`, which the training loop calls).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["DETAIL_SIGMA", "detail_psnr", "high_pass", "noise_level", "noise_sigma"]

DETAIL_SIGMA = 2.0
# BT.601 luma, the weights of wespe.evaluation.baselines' autocontrast and of wespe.metrics' SSIM on luma.
_LUMA = np.array([0.299, 0.587, 0.114])
# Immerkær's kernel: the difference of two 3x3 Laplacians, equal to the outer product of [1, -2, 1] with itself
# (a second difference along x times one along y). It is zero on any image that is locally a + b x + c y + d xy
# (in particular on smooth gradients), and on white noise of std s its response has std s * sqrt(36) = 6 s.
_IMMERKAER = np.array([1.0, -2.0, 1.0])


def _as_float(image) -> np.ndarray:
    """uint8 -> [0, 1] float64; floats are taken as already in [0, 1]."""
    image = np.asarray(image)
    return image.astype(np.float64) / 255.0 if image.dtype == np.uint8 else image.astype(np.float64)


def noise_sigma(image) -> np.ndarray | float:
    """Immerkær's fast noise-variance estimate (J. Immerkær, "Fast Noise Variance Estimation", CVIU 64(2), 1996):

        sigma = sqrt(pi / 2) / (6 (W - 2) (H - 2)) * sum |I * N|,   N = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]

    over the valid (H - 2) x (W - 2) region. For Gaussian noise of std s, ``I * N`` is Gaussian with std 6 s,
    whose mean absolute value is 6 s sqrt(2 / pi): hence the factor. Image structure that is not locally bilinear
    (edges, texture) adds to the sum, so on real photos it is an upper bound of the noise, not its exact value.

    ``image``: ``(H, W)`` or ``(H, W, C)``, uint8 (scaled to [0, 1]) or float; ``H, W >= 3``. Returns a float
    for ``(H, W)``, an array of C per-channel values for ``(H, W, C)``, in the image's [0, 1] units.
    """
    x = _as_float(image)
    if x.ndim not in (2, 3) or x.shape[0] < 3 or x.shape[1] < 3:
        raise ValueError(f"noise_sigma: expected an (H, W) or (H, W, C) image with H, W >= 3, got {x.shape}")
    k = _IMMERKAER
    rows = k[0] * x[:-2] + k[1] * x[1:-1] + k[2] * x[2:]  # separable: [1, -2, 1] along H, then along W
    response = k[0] * rows[:, :-2] + k[1] * rows[:, 1:-1] + k[2] * rows[:, 2:]
    sigma = math.sqrt(math.pi / 2) / 6.0 * np.mean(np.abs(response), axis=(0, 1))
    return float(sigma) if x.ndim == 2 else sigma


def noise_level(image) -> float:
    """:func:`noise_sigma` of the BT.601 luma of an RGB image, times 255 (8-bit units).

    Noise of std s drawn independently in each channel shows here as s * 0.668 (the norm of the luma weights);
    noise equal in all three channels as s. Either way the numbers of different methods on the same photos, and
    of the clean references, compare directly."""
    x = _as_float(image)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"noise_level: expected an (H, W, 3) RGB image, got {x.shape}")
    return 255.0 * noise_sigma(x @ _LUMA)


def high_pass(image, sigma: float = DETAIL_SIGMA) -> np.ndarray:
    """``x - gaussian(x, sigma)`` per channel of an ``(H, W, C)`` image on [0, 1] floats (uint8 is scaled): the
    Gaussian of :func:`scipy.ndimage.gaussian_filter` (truncated at 4 sigma, border mode ``reflect``, as
    :func:`wespe.evaluation.baselines.unsharp`)."""
    import scipy.ndimage
    x = _as_float(image)
    if x.ndim != 3:
        raise ValueError(f"high_pass: expected an (H, W, C) image, got {x.shape}")
    blurred = np.stack([scipy.ndimage.gaussian_filter(x[..., c], sigma, mode="reflect")
                        for c in range(x.shape[-1])], -1)
    return x - blurred


def detail_psnr(output, reference, sigma: float = DETAIL_SIGMA) -> float:
    """PSNR in dB (data range 1) between the :func:`high_pass` residuals of ``output`` and ``reference`` (same
    shape, uint8 or [0, 1] floats): ``10 log10(1 / mean((hp(output) - hp(reference))^2))``, ``inf`` when equal.

    The residuals span about [-1, 1], but a peak of 1 keeps the dB on the same footing as the image PSNR. A
    colour offset leaves it unchanged (the residual of a constant is 0); a method that removes the noise or
    restores edges towards the reference's raises it."""
    a, b = _as_float(output), _as_float(reference)
    if a.shape != b.shape:
        raise ValueError(f"detail_psnr: shape mismatch between output {a.shape} and reference {b.shape}")
    mse = float(np.mean((high_pass(a, sigma) - high_pass(b, sigma)) ** 2))
    return math.inf if mse == 0 else -10.0 * math.log10(mse)
