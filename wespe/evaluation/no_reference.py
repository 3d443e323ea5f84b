"""No-reference "target-likeness": how much a set of photos looks like the photos of the camera a user wants.

Users train on two unpaired folders (phone photos, DSLR photos), so at evaluation time no photo has a reference.
What they do have is the target folder itself. :func:`fit_target_model` summarises it once (a
:class:`TargetModel`), and :func:`report` says how far a set of photos (the enhancer's outputs, or its inputs for
comparison) is from it:

``niqe_set``, ``niqe_per_image``  NIQE-style natural-scene-statistics distance (Mittal, Soundararajan, Bovik,
    "Making a completely blind image quality analyzer", IEEE SPL 2013), with the pristine model fitted to the
    *target folder* instead of NIQE's 125 pristine photos: 0 means "the local statistics of the target camera".
``color_distance``  sliced Wasserstein-2 distance between the RGB pixel colours of the set and of the target set.
``noise_log2_ratio``, ``sharpness_log2_ratio``  log2(set / target) of the mean noise level and mean sharpness:
    0 means "as noisy / as sharp as the target camera", +1 twice as much, -1 half.

Protocol (:data:`PROTOCOL` says the same in ``results.json``):

* **Luma**: ``0.2989 R + 0.5870 G + 0.1140 B`` (MATLAB's ``rgb2gray``, which NIQE's release calls) in [0, 255]
  float64; the release rounds it to 8 bits first, this does not.
* **MSCN**: ``(I - mu) / (sigma + 1)`` with mu, sigma the local mean and standard deviation under a 7x7 Gaussian
  window of sigma 7/6 (``fspecial('gaussian', 7, 7/6)``), border ``replicate`` (what the MATLAB release and
  BRISQUE's code pass to ``imfilter``; scipy's ``nearest``). Values below 1e-9 are rounding noise of a flat area
  (a real 8-bit step gives ~0.1) and are set to 0, so a flat patch is exactly flat.
* **Patches**: the photo is cropped (top-left) to a multiple of ``PATCH = 96`` px, cut into non-overlapping
  96x96 patches; scale 2 is the cropped photo halved with MATLAB's ``imresize(I, 0.5)`` (bicubic, a = -0.5, with
  its antialiasing: an 8-tap kernel, ``symmetric`` border), in float64, cut into the matching 48x48 patches.
* **Features**, 18 per scale, 36 per patch, BRISQUE's set which the NIQE paper describes (:data:`FEATURE_NAMES`):
  a GGD fit of the MSCN (shape alpha, variance sigma^2 = mean x^2), and for each of the 4 products of neighbouring
  MSCN values (horizontal, vertical, main and anti diagonal) an AGGD fit (shape, mean eta, left and right
  variances sigma_l^2, sigma_r^2). Fits by moment matching against the gamma-ratio table on alpha = 0.2, 0.201,
  ..., 10, the nearest entry, as ``estimateggdparam.m`` / ``estimateaggdparam.m`` do. Differences from NIQE's
  MATLAB release, where the paper and the release disagree: the release fits the MSCN with the AGGD and keeps
  (beta_l + beta_r) / 2, and keeps beta_l^2, beta_r^2 (scales) instead of variances; its products wrap around the
  patch (``circshift``) where these take only neighbours inside it.
* **Patches left out**: a patch whose MSCN (or one of its products) is all zero at either scale (a flat patch:
  sky, clipped highlights) has no distribution to fit; it is left out, as the release's ``nanmean`` / ``nancov``
  leave out its NaN rows. A photo smaller than 96 px a side, or with only flat patches, has no NIQE number and is
  listed in ``skipped`` with the reason (it still counts for colour, noise and sharpness). A set whose every
  photo is flat (a collapsed enhancer's uniform grey) has no NIQE number either, but is not unmeasurable: the
  report says ``niqe_all_flat``, and :func:`niqe_rank_key` ranks it farthest from any target. A target folder
  without any patch with detail (thumbnails) gives a model without NIQE: those numbers are None, with a note.
* **Target model**: every usable patch of the target photos, pooled over the folder: their mean vector nu_t and
  covariance S_t (``np.cov``, n - 1; a single patch has covariance 0, as MATLAB's). All of them, defocused and
  plain ones too, because the question is "like this camera's photos", not NIQE's "like pristine detail": the
  paper fits its pristine model only to the patches sharper than 0.75 x their photo's sharpest (sharpness of a
  patch: the mean of sigma over it, at scale 1), and that model, fitted to a small target folder, rates
  sharpened outputs as closer, and smoothed ones (denoised, blurred) as much farther, than their distortion
  warrants: on the quality benchmark it ranked the methods against PSNR, the all-patch model with it (measured
  in experiments/results/evaluation.md). ``fit_target_model(..., patches="sharp")`` keeps the paper's selection.
* **Distance** of a set of patches with mean nu and covariance S:
  ``sqrt((nu - nu_t)^T pinv((S + S_t) / 2) (nu - nu_t))``, the pseudo-inverse with MATLAB's default tolerance
  (36 x eps x the largest singular value). A set is scored on all its usable patches (as NIQE scores a test
  photo); ``niqe_set`` pools the patches of every photo of the set; ``niqe_per_image`` is NIQE's per-photo score
  (each photo's own patches), and ``niqe_per_image_mean`` their mean. With fewer than 37 target patches S_t is
  singular: the model says so in its ``notes``.
* **The floor**: the target photos' own distances scored the same way (``target_niqe_set``,
  ``target_niqe_per_image_mean``) are reported beside every set's. The default model holds every patch they
  have, so their ``niqe_set`` is 0 (their per-photo distances are not: one photo is not the folder); a model of
  the sharp patches only leaves the target photos above 0, and ``report(..., patches="sharp")`` applies that
  selection to the set too, under which the target folder scores exactly 0.
* **Colour**: ``COLOR_PIXELS = 4096`` pixels per photo drawn without replacement (all of a smaller photo) by
  ``np.random.default_rng([seed, i])`` for the i-th photo of the set, RGB in [0, 1]; both sets projected on the
  same ``COLOR_PROJECTIONS = 64`` random unit directions (``default_rng(seed)``); per direction the exact 1-D
  Wasserstein-2 distance between the two empirical distributions (of different sizes); ``color_distance`` is
  the square root of the mean of their squares, in [0, 1] RGB units. (Not :func:`wespe.losses.color_distribution_loss`,
  the held-out curve's measure: that is JAX float32 on two equally large pixel sets and 8 fixed directions; the
  units are the same, so the numbers are of the same size, but not equal.)
* **Noise**: :func:`wespe.evaluation.quality_metrics.noise_level` (Immerkaer, BT.601 luma, 8-bit units) of each photo.
* **Sharpness**: the RMS luma gradient of each photo, ``sqrt(mean(dx^2) + mean(dy^2))`` of forward differences,
  8-bit units: blur lowers it, sharpening raises it; noise raises it too, which is why noise is reported beside.
  A set's noise and sharpness are means over its photos (every photo counts once).

* **How sure**: :mod:`wespe.evaluation.likeness_resampling` recomputes ``niqe_set`` with the photos (the set's
  and the target's) resampled, for a range and for how often one set is the closer of two.

Everything is deterministic for a seed. NumPy / SciPy in float64 on the host: this scores tens of photos once.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import scipy.linalg
import scipy.ndimage
from scipy.special import gammaln

from wespe import image_io, image_paths
from wespe.errors import UserError
from wespe.evaluation import quality_metrics

__all__ = ["COLOR_PIXELS", "COLOR_PROJECTIONS", "FEATURE_NAMES", "PATCH", "PROTOCOL", "SUMMARY_COLUMNS", "Likeness",
           "SetStats", "TargetModel", "fit_aggd", "fit_ggd", "fit_target_model", "halve", "luma", "markdown", "mscn",
           "mvg_distance", "niqe_rank_key", "patch_features", "report", "sharpness", "sliced_wasserstein"]

PATCH = 96
# The set-level numbers a report's caller tabulates (launch/quality.py's columns, launch/sweep.py's).
SUMMARY_COLUMNS = ("niqe_set", "color_distance", "noise_log2_ratio", "sharpness_log2_ratio")
SHARPNESS_FRACTION = 0.75
MSCN_SIGMA = 7.0 / 6.0
MSCN_RADIUS = 3  # 7x7 window
MSCN_C = 1.0
FLAT = 1e-9  # |MSCN| below this is float rounding of a flat area, not image content
COLOR_PIXELS = 4096
COLOR_PROJECTIONS = 64
# MATLAB's rgb2gray (= wespe.ops.GRAYSCALE_WEIGHTS, not imported: that module pulls in JAX).
RGB2GRAY = np.array([0.2989, 0.5870, 0.1140])

# The moment-matching tables of estimateggdparam.m / estimateaggdparam.m: alpha = 0.2:0.001:10 (9801 values).
# Both ratios are strictly monotonic in alpha, so the nearest entry is found by bisection, not a 9801-wide argmin.
ALPHA_GRID = np.round(0.2 + 0.001 * np.arange(9801), 3)
_LG1, _LG2, _LG3 = (gammaln(k / ALPHA_GRID) for k in (1.0, 2.0, 3.0))
GGD_RATIO = np.exp(_LG1 + _LG3 - 2 * _LG2)   # Gamma(1/a) Gamma(3/a) / Gamma(2/a)^2, decreasing in a
AGGD_RATIO = np.exp(2 * _LG2 - _LG1 - _LG3)  # Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)), increasing in a

ORIENTATIONS = ("h", "v", "d1", "d2")
FEATURE_NAMES = tuple(
    f"s{scale}_{name}" for scale in (1, 2)
    for name in ("ggd_alpha", "ggd_var",
                 *(f"{o}_{p}" for o in ORIENTATIONS for p in ("alpha", "mean", "left_var", "right_var"))))

PROTOCOL = {
    "niqe": f"NIQE-style (Mittal et al. 2013): MATLAB rgb2gray luma in [0, 255]; MSCN with a 7x7 Gaussian window "
            f"(sigma 7/6, C 1, replicate border); {PATCH}x{PATCH} non-overlapping patches and the matching "
            f"{PATCH // 2} px patches of the photo halved by MATLAB imresize(0.5) bicubic; 36 BRISQUE features "
            f"(GGD alpha, variance of MSCN; AGGD alpha, mean, left/right variance of the 4 neighbour products) by "
            f"moment matching on alpha 0.2:0.001:10; flat patches left out",
    "target_model": f"mean and covariance of every usable patch of the target photos (patches='all', the default); "
                    f"patches='sharp': only those sharper than {SHARPNESS_FRACTION} x the sharpest patch of their "
                    f"photo (mean local sigma), the NIQE paper's pristine selection; the model's choice is "
                    f"results' target.patches",
    "niqe_distance": "sqrt(d^T pinv((S + S_target) / 2) d), d the difference of mean feature vectors; niqe_set: "
                     "all patches of the set pooled; niqe_per_image: each photo's own patches (NIQE's score)",
    "color_distance": f"sliced Wasserstein-2 of RGB in [0, 1]: {COLOR_PIXELS} seeded pixels per photo, "
                      f"{COLOR_PROJECTIONS} seeded random directions, exact 1-D W2 per direction, sqrt of the mean "
                      f"of the squares",
    "noise": "wespe.evaluation.quality_metrics.noise_level (Immerkaer on BT.601 luma, 8-bit units), mean over photos",
    "sharpness": "RMS forward-difference gradient of luma (8-bit units), mean over photos",
    "log2_ratio": "log2(set value / target value): 0 = like the target camera",
    "target_floor": "target_niqe_set / target_niqe_per_image_mean: the target photos' own distances scored the same "
                    "way (all patches): niqe_set 0 for the default model, which holds every patch; above 0 for "
                    "a model of the sharp patches",
}


class TooSmall(ValueError):
    """A photo without one whole NIQE patch."""


# -------------------------------------------------------------------------------------------------- features

def luma(image) -> np.ndarray:
    """MATLAB ``rgb2gray`` luma in [0, 255] float64 of an (H, W, 3) RGB image (uint8, or floats in [0, 1])."""
    x = np.asarray(image)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {x.shape}")
    x = x.astype(np.float64) if x.dtype == np.uint8 else x.astype(np.float64) * 255.0
    return x @ RGB2GRAY


def _gaussian_window() -> np.ndarray:
    t = np.arange(-MSCN_RADIUS, MSCN_RADIUS + 1, dtype=np.float64)
    k = np.exp(-t * t / (2 * MSCN_SIGMA ** 2))
    return k / k.sum()  # fspecial's 2-D window, normalised, is the outer product of this with itself


def mscn(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(MSCN coefficients, local sigma) of a 2-D luma image; see the module docstring."""
    k = _gaussian_window()

    def blur(x):  # separable: the 2-D window is an outer product
        return scipy.ndimage.correlate1d(scipy.ndimage.correlate1d(x, k, 0, mode="nearest"), k, 1, mode="nearest")

    mu = blur(gray)
    sigma = np.sqrt(np.abs(blur(gray * gray) - mu * mu))
    out = (gray - mu) / (sigma + MSCN_C)
    out[np.abs(out) < FLAT] = 0.0
    return out, sigma


# MATLAB imresize(x, 0.5, 'bicubic'): the cubic kernel (a = -0.5) stretched by 2 for antialiasing, 8 taps at
# distances +-0.5, +-1.5, +-2.5, +-3.5 from the output pixel's centre (which lies between two input pixels).
_HALVE_TAPS = np.array([-0.0234375, -0.0703125, 0.2265625, 0.8671875, 0.8671875, 0.2265625, -0.0703125,
                        -0.0234375]) / 2.0


def halve(gray: np.ndarray) -> np.ndarray:
    """A 2-D image of even sides halved as MATLAB's ``imresize(x, 0.5)`` (bicubic, antialiased, ``symmetric``
    border), in float64."""
    if gray.shape[0] % 2 or gray.shape[1] % 2:
        raise ValueError(f"halve needs even sides, got {gray.shape}")
    x = gray
    for axis in (0, 1):
        n = x.shape[axis] // 2
        padded = np.pad(x, [(4, 4) if a == axis else (0, 0) for a in (0, 1)], mode="symmetric")
        # output i takes input rows 2i-3 .. 2i+4, i.e. padded rows 2i+1 .. 2i+8
        x = sum(w * np.take(padded, np.arange(1 + k, 1 + k + 2 * n, 2), axis=axis)
                for k, w in enumerate(_HALVE_TAPS))
    return x


def _nearest(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Index of the entry of the monotonic ``table`` nearest to each value (argmin |table - value|)."""
    increasing = table[-1] > table[0]
    t = table if increasing else table[::-1]
    i = np.clip(np.searchsorted(t, values), 1, len(t) - 1)
    j = np.where(np.abs(t[i] - values) < np.abs(t[i - 1] - values), i, i - 1)
    return j if increasing else len(t) - 1 - j


def fit_ggd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shape alpha, variance sigma^2) of a zero-mean generalised Gaussian fitted to the last axis of ``x`` by
    moment matching (``estimateggdparam.m``): mean(x^2) / mean(|x|)^2 against Gamma(1/a)Gamma(3/a)/Gamma(2/a)^2.
    NaN where x is all zero."""
    x = np.asarray(x, np.float64)
    var = np.mean(x * x, axis=-1)
    e = np.mean(np.abs(x), axis=-1)
    ok = var > 0
    rho = np.where(ok, var / np.where(ok, e * e, 1.0), 1.0)
    alpha = np.where(ok, ALPHA_GRID[_nearest(rho, GGD_RATIO)], np.nan)
    return alpha, np.where(ok, var, np.nan)


def fit_aggd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(shape alpha, mean eta, left variance, right variance) of an asymmetric generalised Gaussian fitted to the
    last axis of ``x`` by moment matching (``estimateaggdparam.m``). The side variances are mean(x^2) over the
    negative and the positive values (0 for a side without values); eta = (beta_r - beta_l) Gamma(2/a)/Gamma(1/a)
    with beta = sigma sqrt(Gamma(1/a)/Gamma(3/a)). NaN where x is all zero."""
    x = np.asarray(x, np.float64)
    sq = x * x
    neg = x < 0
    total = sq.sum(-1)
    left_sum = np.sum(sq * neg, -1)  # zeros add nothing to either side's sum, so the right one is the rest
    left_var = left_sum / np.maximum(neg.sum(-1), 1)
    right_var = (total - left_sum) / np.maximum(np.count_nonzero(x > 0, axis=-1), 1)
    second = total / x.shape[-1]
    ok = second > 0
    second = np.where(ok, second, 1.0)
    r_hat = np.mean(np.abs(x), axis=-1) ** 2 / second
    sl, sr = np.sqrt(left_var), np.sqrt(right_var)
    # The release's r_hat (g^3 + 1)(g + 1) / (g^2 + 1)^2 with g = sl / sr, multiplied through by sr^4 so that a
    # side without values (sr = 0) is finite.
    r_norm = r_hat * (sl ** 3 + sr ** 3) * (sl + sr) / np.where(ok, (sl * sl + sr * sr) ** 2, 1.0)
    alpha = ALPHA_GRID[_nearest(np.where(ok, r_norm, 0.5), AGGD_RATIO)]
    lg1, lg2, lg3 = (gammaln(k / alpha) for k in (1.0, 2.0, 3.0))
    scale = np.exp(0.5 * (lg1 - lg3))
    eta = (sr - sl) * scale * np.exp(lg2 - lg1)
    nan = np.full_like(second, np.nan)
    return (np.where(ok, alpha, nan), np.where(ok, eta, nan), np.where(ok, left_var, nan),
            np.where(ok, right_var, nan))


def _patches(x: np.ndarray, side: int) -> np.ndarray:
    """(rows * cols, side, side) non-overlapping patches of a 2-D array whose sides are multiples of ``side``,
    row-major."""
    rows, cols = x.shape[0] // side, x.shape[1] // side
    return x.reshape(rows, side, cols, side).transpose(0, 2, 1, 3).reshape(rows * cols, side, side)


def _neighbour_products(p: np.ndarray) -> list[np.ndarray]:
    """The 4 products of horizontally, vertically, diagonally and anti-diagonally adjacent values of (n, s, s)
    patches, each flattened to (n, m), pairs inside the patch only."""
    n = len(p)
    return [(p[:, :, :-1] * p[:, :, 1:]).reshape(n, -1), (p[:, :-1, :] * p[:, 1:, :]).reshape(n, -1),
            (p[:, :-1, :-1] * p[:, 1:, 1:]).reshape(n, -1), (p[:, :-1, 1:] * p[:, 1:, :-1]).reshape(n, -1)]


def _scale_features(coefficients: np.ndarray, side: int) -> np.ndarray:
    p = _patches(coefficients, side)
    columns = list(fit_ggd(p.reshape(len(p), -1)))
    for product in _neighbour_products(p):
        columns += fit_aggd(product)
    return np.stack(columns, axis=1)


def patch_features(image, patch: int = PATCH) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, 36), sharpness (n,)) of the ``patch`` x ``patch`` patches of an RGB photo (uint8 or [0, 1]
    floats), row-major over the top-left crop to a multiple of ``patch``. A row is NaN for a flat patch.
    Raises :class:`TooSmall` for a photo without a whole patch."""
    gray = luma(image)
    h, w = (gray.shape[0] // patch) * patch, (gray.shape[1] // patch) * patch
    if h == 0 or w == 0:
        raise TooSmall(f"{gray.shape[0]}x{gray.shape[1]} is smaller than one {patch}x{patch} NIQE patch")
    gray = gray[:h, :w]
    coefficients, sigma = mscn(gray)
    sharp = _patches(sigma, patch).mean(axis=(1, 2))
    fine = _scale_features(coefficients, patch)
    coarse = _scale_features(mscn(halve(gray))[0], patch // 2)
    features = np.concatenate([fine, coarse], axis=1)
    features[np.isnan(features).any(axis=1)] = np.nan  # one failed fit makes the whole patch unusable
    return features, sharp


def _mvg(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = features.mean(axis=0)
    cov = np.cov(features, rowvar=False) if len(features) > 1 else np.zeros((features.shape[1],) * 2)
    return mean, cov


def mvg_distance(mean_a, cov_a, mean_b, cov_b) -> float:
    """NIQE's distance between two multivariate Gaussians: sqrt(d^T pinv((S_a + S_b) / 2) d), d = mean_a - mean_b,
    the pseudo-inverse with MATLAB's default tolerance (eigenvalues below max(size) x eps x the largest left out).
    By an eigendecomposition of the symmetric matrix (scipy's: numpy's is slower on 36 x 36 under load)."""
    d = np.asarray(mean_a, np.float64) - np.asarray(mean_b, np.float64)
    s = (np.asarray(cov_a, np.float64) + np.asarray(cov_b, np.float64)) / 2.0
    w, v = scipy.linalg.eigh(s)
    keep = w > len(d) * np.finfo(np.float64).eps * float(np.abs(w).max())  # a zero matrix keeps none: 0, as pinv
    projected = v[:, keep].T @ d
    return math.sqrt(float(np.sum(projected * projected / w[keep])))


# ---------------------------------------------------------------------------------------- colour, noise, detail

def sliced_wasserstein(a: np.ndarray, b: np.ndarray, directions: np.ndarray) -> float:
    """sqrt(mean over ``directions`` (k, 3) of W2^2) between the point sets ``a`` (n, 3) and ``b`` (m, 3), the
    1-D W2 exact for two empirical distributions of different sizes: the integral over t in (0, 1) of
    (F_a^-1(t) - F_b^-1(t))^2, both quantile functions being steps at multiples of 1/n and 1/m."""
    n, m = len(a), len(b)
    t = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
    dt = np.diff(t, prepend=0.0)
    mid = t - dt / 2
    ia, ib = np.minimum((mid * n).astype(np.int64), n - 1), np.minimum((mid * m).astype(np.int64), m - 1)
    squares = []
    for d in directions:  # one direction at a time: memory stays n + m, whatever the number of photos
        pa, pb = np.sort(a @ d), np.sort(b @ d)
        squares.append(float(np.sum(dt * (pa[ia] - pb[ib]) ** 2)))
    return math.sqrt(float(np.mean(squares)))


def _directions(seed: int) -> np.ndarray:
    d = np.random.default_rng(seed).standard_normal((COLOR_PROJECTIONS, 3))
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _color_sample(image, seed: int, index: int) -> np.ndarray:
    x = np.asarray(image)
    x = (x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)).reshape(-1, 3)
    if len(x) <= COLOR_PIXELS:
        return x
    return x[np.sort(np.random.default_rng([seed, index]).choice(len(x), COLOR_PIXELS, replace=False))]


def sharpness(image) -> float:
    """RMS luma gradient ``sqrt(mean(dx^2) + mean(dy^2))`` (forward differences, 8-bit units) of an RGB photo."""
    gray = luma(image)
    dx, dy = np.diff(gray, axis=1), np.diff(gray, axis=0)
    return math.sqrt((float(np.mean(dx * dx)) if dx.size else 0.0) + (float(np.mean(dy * dy)) if dy.size else 0.0))


def _niqe(features: Mapping[str, np.ndarray], mean, cov) -> tuple[float, dict[str, float]]:
    """(set-level distance of all patches pooled, {photo: distance of its own patches}) to the MVG (mean, cov)."""
    pooled = mvg_distance(*_mvg(np.concatenate(list(features.values()))), mean, cov)
    return pooled, {name: mvg_distance(*_mvg(f), mean, cov) for name, f in features.items()}


def niqe_rank_key(report: Mapping) -> float | None:
    """The number to rank sets by, closest to the target first: ``niqe_set``, +inf for a set whose every photo is
    flat (no texture at all is as far from a camera's photos as a set can be), None when there is no NIQE number
    (photos under 96 px, or a target without one)."""
    if report.get("niqe_set") is not None:
        return float(report["niqe_set"])
    return math.inf if report.get("niqe_all_flat") else None


def _log2_ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or value <= 0 or reference <= 0:
        return None
    return math.log2(value / reference)


# ---------------------------------------------------------------------------------------------- photo sets

def _iter_images(images, exclude: Sequence = ()) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """(name, image or None, reason it could not be read) for a folder / file / list of them (read upright as
    8-bit RGB, sorted by relative path) or for arrays (a sequence, named by position, or a name -> array map)."""
    if isinstance(images, (str, os.PathLike)) or (
            isinstance(images, Sequence) and images and all(isinstance(p, (str, os.PathLike)) for p in images)):
        index, duplicates = image_paths.index_images(images, exclude=exclude)
        for d in duplicates:
            yield d["name"], None, d["reason"]
        for name, path in index.items():
            try:
                yield name, image_io.read_image(path)[0], None
            except image_io.ImageReadError as e:
                yield name, None, str(e)
        return
    items = images.items() if isinstance(images, Mapping) else ((str(i), x) for i, x in enumerate(images))
    for name, x in items:
        yield str(name), np.asarray(x), None


class SetStats:
    """What :func:`report` needs of a set of photos, gathered one photo at a time (``add``), so a caller that
    produces photos one by one (``launch/evaluate.py``'s enhancer) need not keep them."""

    def __init__(self, seed: int = 0, patches: str = "all"):
        if patches not in ("all", "sharp"):
            raise ValueError(f"patches must be 'all' or 'sharp', got {patches!r}")
        self.seed = seed
        self.patches = patches
        self.features: dict[str, np.ndarray] = {}  # name -> usable patch features (n, 36)
        self.sharpness_by_patch: dict[str, np.ndarray] = {}  # of the usable patches
        self.sharpest: dict[str, float] = {}  # of all the photo's patches, flat ones too (the release's max)
        self.colors: list[np.ndarray] = []
        self.noise: list[float] = []
        self.sharpness: list[float] = []
        self.skipped: list[dict] = []  # photos without a NIQE number, or not read at all
        self.num_flat = 0  # photos whose every patch is flat (a collapsed output: uniform grey)

    def add(self, name: str, image) -> None:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 3:
            self.skipped.append({"name": name, "reason": f"not measured: {'x'.join(map(str, image.shape))} is not "
                                                         f"an RGB photo of at least 3x3 px"})
            return
        try:
            features, sharp = patch_features(image)
        except TooSmall as e:
            self.skipped.append({"name": name, "reason": f"no NIQE number: {e}"})
        else:
            usable = ~np.isnan(features).any(axis=1)
            self.sharpest[name] = float(sharp.max())
            if usable.any():
                self.features[name] = features[usable]
                self.sharpness_by_patch[name] = sharp[usable]
            else:
                self.skipped.append({"name": name, "reason": "no NIQE number: every 96x96 patch is flat"})
                self.num_flat += 1
        self.colors.append(_color_sample(image, self.seed, len(self.colors)))
        self.noise.append(quality_metrics.noise_level(image))
        self.sharpness.append(sharpness(image))

    def add_all(self, images, exclude: Sequence = ()) -> SetStats:
        for name, image, reason in _iter_images(images, exclude):
            if image is None:
                self.skipped.append({"name": name, "reason": reason})
            else:
                self.add(name, image)
        return self

    @property
    def num_images(self) -> int:
        return len(self.colors)

    def selected_features(self) -> dict[str, np.ndarray]:
        """Per photo, its usable patches (``patches="all"``) or those sharper than ``SHARPNESS_FRACTION`` x the
        photo's sharpest patch (``"sharp"``, the NIQE paper's pristine selection; photos left without one are
        left out)."""
        if self.patches == "all":
            return dict(self.features)
        selected = {name: f[self.sharpness_by_patch[name] > SHARPNESS_FRACTION * self.sharpest[name]]
                    for name, f in self.features.items()}
        return {name: f for name, f in selected.items() if len(f)}

    def moments(self):
        """The selected patches as :class:`wespe.evaluation.likeness_resampling.PhotoMoments` (per photo: count,
        mean, scatter), what resampling the set needs without its photos."""
        from wespe.evaluation.likeness_resampling import PhotoMoments
        return PhotoMoments.of(self.selected_features())

    def report(self, model: TargetModel) -> dict:
        """The numbers of the module docstring for this set against ``model`` (None where there are none)."""
        features = self.selected_features()
        out = {"num_images": self.num_images, "num_niqe_images": len(features),
               "num_patches": int(sum(len(f) for f in features.values())), "patches": self.patches,
               "niqe_all_flat": model.mean is not None and 0 < self.num_images == self.num_flat, "niqe_set": None,
               "target_niqe_set": model.niqe_set, "niqe_per_image_mean": None,
               "target_niqe_per_image_mean": model.niqe_per_image_mean, "niqe_per_image": {},
               "color_distance": None, "noise": None, "target_noise": model.noise, "noise_log2_ratio": None,
               "sharpness": None, "target_sharpness": model.sharpness, "sharpness_log2_ratio": None,
               "skipped": list(self.skipped)}
        if features and model.mean is not None:
            out["niqe_set"], out["niqe_per_image"] = _niqe(features, model.mean, model.cov)
            out["niqe_per_image_mean"] = float(np.mean(list(out["niqe_per_image"].values())))
        if self.colors:
            out["color_distance"] = sliced_wasserstein(np.concatenate(self.colors), model.colors,
                                                       _directions(self.seed))
            out["noise"], out["sharpness"] = float(np.mean(self.noise)), float(np.mean(self.sharpness))
            out["noise_log2_ratio"] = _log2_ratio(out["noise"], model.noise)
            out["sharpness_log2_ratio"] = _log2_ratio(out["sharpness"], model.sharpness)
        return out


@dataclasses.dataclass(frozen=True)
class TargetModel:
    """The target folder summarised once (:func:`fit_target_model`): the MVG of its patches (``patches``: "all"
    usable ones or the "sharp" ones; ``mean`` (36,), ``cov`` (36, 36); None when no target photo has a patch with
    detail: then there are no NIQE numbers, and ``notes`` says why), its pixel colour sample (``colors`` (n, 3) in
    [0, 1]) and its mean noise and sharpness."""

    mean: np.ndarray | None
    cov: np.ndarray | None
    colors: np.ndarray
    noise: float
    sharpness: float
    num_images: int
    num_patches: int
    seed: int
    niqe_set: float | None  # the target photos' own distances (all patches) to the model: the floor a set can reach
    niqe_per_image_mean: float | None
    skipped: tuple = ()
    notes: tuple = ()
    patches: str = "all"
    # per target photo, its patches' count, mean and scatter (wespe.evaluation.likeness_resampling.PhotoMoments):
    # refitting the model on resampled photos needs them; None for a model built by hand
    moments: object = dataclasses.field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        """One line for a command's output and a report's heading: how many photos and patches the model holds."""
        return _describe(self.summary())

    def summary(self) -> dict:
        """JSON-ready description (no arrays)."""
        return {"num_images": self.num_images, "num_patches": self.num_patches, "patches": self.patches,
                "niqe_set": self.niqe_set,
                "niqe_per_image_mean": self.niqe_per_image_mean, "noise": self.noise,
                "sharpness": self.sharpness, "seed": self.seed, "skipped": list(self.skipped),
                "notes": list(self.notes)}


def fit_target_model(images, *, seed: int = 0, exclude: Sequence = (), patches: str = "all") -> TargetModel:
    """A :class:`TargetModel` of the target camera's photos: a folder, a file or a list of them (``exclude``:
    folders whose photos are left out, as in :func:`wespe.image_paths.index_images`), or arrays. ``patches``:
    which patches the NIQE model holds, "all" usable ones (the default) or "sharp" (the paper's selection; the
    module docstring says why the default is not).
    Raises :class:`wespe.errors.UserError` when there is no photo that can be read. Without a single 96x96 patch
    with detail (thumbnails, flat pictures) the model has no NIQE part, and says so in ``notes``; colour, noise
    and sharpness are still compared."""
    stats = SetStats(seed, patches).add_all(images, exclude)
    where = f" in {os.fspath(images)}" if isinstance(images, (str, os.PathLike)) else ""
    if not stats.num_images:
        reasons = "; ".join(f"{s['name']}: {s['reason']}" for s in stats.skipped[:3])
        raise UserError(f"no photos{where}" + (f" that can be read ({reasons})" if reasons else ""))
    selected = list(stats.selected_features().values())
    mean = cov = own_set = own_mean = None
    notes, num_patches = [], int(sum(len(f) for f in selected))
    if not selected:
        notes.append(f"no target photo{where} has a {PATCH}x{PATCH} patch with detail: no NIQE numbers (they need "
                     f"photos of at least {PATCH} px a side that are not flat)")
    else:
        mean, cov = _mvg(np.concatenate(selected))
        own_set, own_per_image = _niqe(stats.features, mean, cov)
        own_mean = float(np.mean(list(own_per_image.values())))
        if num_patches <= len(FEATURE_NAMES):
            notes.append(f"only {num_patches} target patches for {len(FEATURE_NAMES)} features: the target "
                         f"covariance is singular and NIQE distances rest on few directions; give more or larger "
                         f"target photos")
    return TargetModel(mean=mean, cov=cov, colors=np.concatenate(stats.colors), noise=float(np.mean(stats.noise)),
                       sharpness=float(np.mean(stats.sharpness)), num_images=stats.num_images,
                       num_patches=num_patches, seed=seed, niqe_set=own_set, niqe_per_image_mean=own_mean,
                       skipped=tuple(stats.skipped), notes=tuple(notes), patches=patches,
                       moments=stats.moments() if selected else None)


def target_for_flag(folder, output_dir) -> TargetModel:
    """The target model of a command's ``--target=folder`` (photos under ``output_dir`` left out), fitted before
    any model loads; a missing folder or one without usable photos is a :class:`UserError` naming the flag."""
    from wespe.evaluation.evaluate import check_inputs
    check_inputs({"--target": folder}, output_dir)
    try:
        return fit_target_model(folder, exclude=[output_dir])
    except UserError as e:
        raise UserError(f"--target={folder}: {e}") from e


def report(images, model: TargetModel, *, seed: int | None = None, patches: str = "all",
           exclude: Sequence = ()) -> dict:
    """How far ``images`` (a folder, a file, a list of them, or arrays) are from the target camera of ``model``:
    the dict of :meth:`SetStats.report` (``seed``: the colour sampling's, by default the model's). ``patches``:
    "all" (NIQE's way of scoring a test photo, the default) or "sharp" (the target model's own selection: the
    target photos then score exactly 0, a check of the protocol rather than a quality number)."""
    stats = SetStats(model.seed if seed is None else seed, patches)
    return stats.add_all(images, exclude).report(model)


class Likeness:
    """``visit`` for :func:`wespe.evaluation.evaluate.evaluate`: gathers the enhanced photos and their inputs one at a
    time; :meth:`section` is the ``no_reference`` section of ``results.json``."""

    def __init__(self, model: TargetModel):
        self.model = model
        self.outputs, self.inputs = SetStats(model.seed), SetStats(model.seed)

    def __call__(self, name: str, enhanced, source=None) -> None:
        self.outputs.add(name, enhanced)
        if source is not None:
            self.inputs.add(name, source)

    def section(self) -> dict:
        from wespe.evaluation import likeness_resampling
        sets = {"outputs": self.outputs, **({"inputs": self.inputs} if self.inputs.num_images else {})}
        return {"protocol": PROTOCOL, "target": self.model.summary(), "outputs": self.outputs.report(self.model),
                "inputs": self.inputs.report(self.model) if self.inputs.num_images else None,
                "resampled": likeness_resampling.section(sets, self.model)}


# ---------------------------------------------------------------------------------------------- reporting

LABELS = {"niqe_set": "NIQE distance to target, set (0 = target)", "niqe_per_image_mean":
          "NIQE distance to target, mean per photo", "color_distance": "colour distance to target (SW2, RGB 0-1)",
          "noise": "noise (Immerkaer, 8-bit)", "noise_log2_ratio": "noise, log2(set / target)",
          "sharpness": "sharpness (RMS luma gradient)", "sharpness_log2_ratio": "sharpness, log2(set / target)",
          "num_niqe_images": "photos with a NIQE number"}


def _describe(summary: Mapping) -> str:
    which = "sharp" if summary.get("patches") == "sharp" else "usable"
    return f"{summary.get('num_images')} target photos, {summary.get('num_patches')} {which} patches"


def markdown(section: Mapping) -> str:
    """A Markdown table of ``{"target": model.summary(), "outputs": report, "inputs": report or None}``."""
    sets = [k for k in ("outputs", "inputs") if section.get(k)]
    target = section.get("target", {})

    def fmt(v):
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [f"## Likeness to the target camera (no reference; {_describe(target)})\n",
             "| metric | " + " | ".join(sets) + " | target itself |",
             "|---|" + "---|" * (len(sets) + 1)]
    for key, label in LABELS.items():
        own = target.get(key) if key in ("niqe_set", "niqe_per_image_mean", "noise", "sharpness") else None
        lines.append(f"| {label} | " + " | ".join(fmt(section[s].get(key)) for s in sets) + f" | {fmt(own)} |")
        if key == "niqe_set" and section.get("resampled"):
            from wespe.evaluation import likeness_resampling
            spans = section["resampled"]["sets"]
            lines.append(f"| {likeness_resampling.INTERVAL_LABEL} | "
                         + " | ".join(likeness_resampling.span(spans.get(s)) for s in sets) + " | - |")
    if section.get("resampled"):
        from wespe.evaluation import likeness_resampling
        lines.append("\n" + likeness_resampling.describe(section["resampled"]))
    lines += [f"\n{n}" for n in target.get("notes", [])]
    return "\n".join(lines) + "\n"
