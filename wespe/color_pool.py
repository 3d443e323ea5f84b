"""Dataset-level colour samples of the source and target photos, for fitting the global colour path.

A colour loss computed between one small batch of source patches and one of target patches compares two
handfuls of scenes: a batch of grass against a batch of sky asks for a green-to-blue map. Its gradient on the
generator's global colour path is therefore mostly content noise, and with the high learning rate that path
needs, the colour map wanders from batch to batch (held-out PSNR swung by 2-4 dB between steps 100 and 600 of
one run). The global colour path is a per-pixel map, so it can instead be fitted to the colours of *whole
sets*: :func:`build_color_pools` reads up to ``photos`` photos per side once, shrinks each whole photo to
``side`` px (box averaging: the colour view, like the colour adversary's blur, without texture), and keeps
the same number of seeded random pixels per side. ``train`` then compares ``colour(source pool)`` with the
target pool every step (``config.color_pool_photos``): the same comparison every step, so the colour map
converges instead of wandering, and it sees every scene of both sets instead of eight patches.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from wespe.image_io import ImageReadError, read_image
from wespe.image_paths import list_images

logger = logging.getLogger(__name__)


def photo_colors(path: Path, side: int) -> np.ndarray:
    """The ``(k, 3)`` float32 colours in [0, 1] of a photo box-averaged to at most ``side`` px on its longer
    side (aspect kept; a smaller photo is used as it is). JPEGs are decoded at reduced scale (a decode at 1/8
    is itself a block average), so reading 2 x 128 camera photos at start-up takes seconds, not a minute."""
    image, _ = read_image(path, draft_side=side)
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
    return (image.reshape(-1, 3).astype(np.float32) / 255.0)


def folder_colors(folder: str | os.PathLike, photos: int, side: int, seed: int) -> np.ndarray:
    """The colours of up to ``photos`` seeded-random photos of ``folder`` (see :func:`photo_colors`), stacked.
    Unreadable files are skipped with a warning. Raises ``ValueError`` if no photo is readable."""
    files = list_images([folder])
    order = np.random.default_rng(seed).permutation(len(files))
    colors = []
    for i in order:
        try:
            colors.append(photo_colors(files[i], side))
        except ImageReadError as e:
            logger.warning("colour pool: skipping %s: %s", files[i], e)
            continue
        if len(colors) == photos:
            break
    if not colors:
        raise ValueError(f"{folder}: no readable photo for the colour pool")
    return np.concatenate(colors)


def build_color_pools(source: str | os.PathLike, target: str | os.PathLike, *, photos: int = 128, side: int = 64,
                      pixels: int = 65536, seed: int = 0) -> dict[str, np.ndarray]:
    """``{"source": (P, 3), "target": (P, 3)}`` float32 colour samples of the two folders (module docstring).

    ``P = min(pixels, pixels available on either side)``; the pixels are drawn without replacement with
    ``seed``, so the pools are the same for a seed and the same files (a resumed run rebuilds them exactly).
    """
    if photos < 1 or side < 1 or pixels < 1:
        raise ValueError(f"colour pool sizes must be positive, got photos={photos}, side={side}, pixels={pixels}")
    rng = np.random.default_rng(seed)
    sides = {"source": folder_colors(source, photos, side, seed),
             "target": folder_colors(target, photos, side, seed + 1)}
    count = min(pixels, *(len(c) for c in sides.values()))
    pools = {name: c[np.sort(rng.choice(len(c), count, replace=False))] for name, c in sides.items()}
    logger.info("colour pools: %d pixels per side from %d source / %d target pixels", count,
                len(sides["source"]), len(sides["target"]))
    return pools


def moment_transfer(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel affine colour map that gives ``source``'s colours ``target``'s mean and standard deviation
    (Reinhard-style colour transfer, in RGB): ``matrix`` (3, 3) diagonal ``std_t / std_s`` and ``bias`` (3,)
    ``mean_t - gain * mean_s``, float32, for ``colour(x) = matrix @ x + bias``. Computed in float64. A channel
    that does not vary in ``source`` keeps gain 1 (only its mean moves).

    Measured on the quality benchmark (launch/quality.py, training sets of 5 photos a side), as the only change
    to the held-out photos: input 19.72 dB / SSIM 0.6255; this map 22.70 / 0.662; the full 3x3 Gaussian (Monge)
    map 22.43 / 0.636; per-channel histogram matching 21.09 / 0.631 (curves from a few photos overfit their
    content); the colour path learned from batches 21.5-22.3, varying with the seed.
    """
    s, t = np.asarray(source, np.float64), np.asarray(target, np.float64)
    std_s, std_t = s.std(axis=0), t.std(axis=0)
    gain = np.where(std_s > 1e-6, std_t / np.maximum(std_s, 1e-6), 1.0)
    bias = t.mean(axis=0) - gain * s.mean(axis=0)
    return np.diag(gain).astype(np.float32), bias.astype(np.float32)
