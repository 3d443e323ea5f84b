"""Quality in the loop: how G treats held-out photos, measured while it trains.

Every ``sample_every`` steps the loop enhances fixed crops of the held-out photos (``config.data.heldout``) and
logs, next to the losses:

with references (``config.data.heldout_reference``, clean versions of the held-out photos, paired by file name):
  ``quality/psnr_input``, ``quality/psnr_enhanced``   PSNR of x and of G(x) against the references (dB, pooled)
  ``quality/ssim_input``, ``quality/ssim_enhanced``   SSIM (scikit-image settings, mean over crops)
and always (no reference needed):
  ``quality/change``             mean |G(x) - x|: how far G moved the photos
  ``quality/color_distance``     sliced Wasserstein distance between the colours of G(x) and of target crops,
                                 and ``quality/color_distance_input`` the same for x: is G moving the colours
                                 towards the target camera's?
  ``quality/noise_input``, ``quality/noise_enhanced``   Immerkaer's noise estimate (sigma, on [0, 1] luma)

The crops are the same at every step (centre crops, then seeded random positions), and identical positions
are taken from a photo and its reference, so the numbers form a curve a user can watch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from wespe import image_paths, losses, metrics
from wespe.image_io import ImageReadError, read_image
from wespe.ops import GRAYSCALE_WEIGHTS
from wespe.training import scan

# Immerkaer (1996), "Fast noise variance estimation": the difference of two Laplacians cancels image
# structure up to second order, leaving mostly noise.
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)


def noise_sigma(images: np.ndarray) -> float:
    """Immerkaer's estimate of the Gaussian noise sigma of (N, H, W, 3) images in [0, 1] (on luma, mean over N)."""
    from scipy import signal  # here, not at the top: importing it slows every entry point's start

    luma = np.asarray(images, np.float64) @ np.asarray(GRAYSCALE_WEIGHTS)
    out = []
    for y in luma:
        h, w = y.shape
        if h < 3 or w < 3:
            continue
        conv = signal.convolve2d(y, _NOISE_KERNEL, mode="valid")
        out.append(math.sqrt(math.pi / 2.0) * np.abs(conv).sum() / (6.0 * (w - 2) * (h - 2)))
    return float(np.mean(out)) if out else float("nan")


def paired_crops(folder: str | os.PathLike, reference_folder: str | os.PathLike | None, n: int, size: int,
                 seed: int, min_size: int = 1, files: Sequence[str | os.PathLike] | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """``n`` fixed square crops of the photos in ``folder`` and the same crops of their references.

    ``files``: the photos of ``folder`` to take (a training folder's usable files, as its data scan found them)
    instead of listing it. The folders are the caller's to check (the training run checks every folder flag
    once, before anything is written). Photos pair with references by :func:`wespe.image_paths.match_pairs`, as
    evaluation pairs; only paired photos are used when references are given (an error names the folders if none
    pair). The crop side is ``size``, or the smallest photo's shorter side if that is less; photos under
    ``min_size`` a side (or unreadable, or of another size than their reference) are skipped. The photos are
    taken in a seeded order and read only until ``n`` are usable; crops are the centre of each, then seeded
    random positions in turn.
    Returns float32 arrays in [0, 1]; the second is None without ``reference_folder``.
    """
    folder = Path(folder)
    found = (image_paths.keyed_images(folder) if files is None
             else [(image_paths.image_key(Path(p), folder), Path(p)) for p in files])
    photos = list(image_paths.index_keyed(found)[0].items())
    if reference_folder is None:
        candidates = [(path, None) for _, path in photos]
    else:
        references = image_paths.index_images(reference_folder)[0]
        candidates, _, _ = image_paths.match_pairs(photos, list(references.items()))
        if not candidates:
            raise scan.DataError(f"--config.data.heldout_reference={reference_folder}: no file name matches a "
                                 f"photo in --config.data.heldout={folder} (pairs by relative path without "
                                 "extension, then by file stem)")
    pairs = []
    rng = np.random.default_rng(seed)
    for i in rng.permutation(len(candidates)):  # read only until n photos are usable: a held-out folder may be large
        if len(pairs) == n:
            break
        photo, reference = candidates[i]
        try:
            x, _ = read_image(photo)
            ref = read_image(reference)[0] if reference is not None else None
        except ImageReadError:
            continue  # the data report covers unreadable files; the monitor just uses the others
        if min(x.shape[:2]) < min_size or (ref is not None and ref.shape != x.shape):
            continue
        pairs.append((x, ref))
    if not pairs:
        raise scan.DataError(f"--config.data.heldout={folder}: no readable photo of at least {min_size} px a "
                             "side" + (" with a same-size reference" if reference_folder is not None else ""))
    size = min([size] + [min(x.shape[:2]) for x, _ in pairs])
    xs, refs = [], []
    for k in range(n):
        x, ref = pairs[k % len(pairs)]
        h, w = x.shape[:2]
        if k < len(pairs):
            top, left = (h - size) // 2, (w - size) // 2
        else:
            top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        xs.append(x[top:top + size, left:left + size])
        if ref is not None:
            refs.append(ref[top:top + size, left:left + size])
    to_float = lambda a: np.stack(a).astype(np.float32) / 255.0  # noqa: E731
    return to_float(xs), (to_float(refs) if reference_folder is not None else None)


def quality_metrics(x: np.ndarray, enhanced: np.ndarray, reference: np.ndarray | None,
                    target: np.ndarray | None) -> dict[str, float]:
    """The ``quality/*`` numbers of the module docstring for crops ``x``, ``enhanced`` = G(x) (unclipped; clipped
    here as a saved photo would be), optional aligned ``reference`` crops and ``target`` crops of the same shape."""
    enhanced = np.clip(np.asarray(enhanced, np.float32), 0.0, 1.0)
    out = {"quality/change": float(np.mean(np.abs(enhanced - x))),
           "quality/noise_input": noise_sigma(x), "quality/noise_enhanced": noise_sigma(enhanced)}
    if reference is not None:
        out["quality/psnr_input"] = float(metrics.psnr_pooled(x, reference))
        out["quality/psnr_enhanced"] = float(metrics.psnr_pooled(enhanced, reference))
        out["quality/ssim_input"] = float(np.mean(metrics.ssim(x, reference)))
        out["quality/ssim_enhanced"] = float(np.mean(metrics.ssim(enhanced, reference)))
    if target is not None and target.shape == x.shape:
        out["quality/color_distance"] = math.sqrt(float(losses.color_distribution_loss(jnp.asarray(enhanced),
                                                                                      jnp.asarray(target))))
        out["quality/color_distance_input"] = math.sqrt(float(losses.color_distribution_loss(jnp.asarray(x),
                                                                                            jnp.asarray(target))))
    return out


def regression_warning(quality: dict[str, float]) -> str | None:
    """A warning when G(x) scores below x against the references (PSNR or SSIM), else None."""
    if "quality/psnr_enhanced" not in quality:
        return None
    dp = quality["quality/psnr_enhanced"] - quality["quality/psnr_input"]
    ds = quality["quality/ssim_enhanced"] - quality["quality/ssim_input"]
    if dp < 0 or ds < 0:
        return (f"G(x) is worse than its input on the held-out references (PSNR {dp:+.2f} dB, SSIM {ds:+.4f}): "
                "the generator is degrading photos")
    return None
