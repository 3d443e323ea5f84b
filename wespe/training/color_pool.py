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
The colour maps fitted to these pools are :mod:`wespe.color_map`'s.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from wespe.image_io import ImageReadError, read_image
from wespe.image_paths import list_images

logger = logging.getLogger(__name__)


# The band of the band-pass contrast: a difference of Gaussians at these sigmas (px) on each photo shrunk to at
# most BAND_SIDE px. The fine sigma keeps out pixel noise (a sigma-3 blur passes ~1% of white noise's
# variance), camera blurs of up to ~1.5 px and most of JPEG's 8 px blocks; the two octaves above it hold the
# scene's local contrast. Of the pairs (1, 4), (2, 8), (3, 12), (4, 16) and (2, 32), on the seven cameras of
# fitted_colour_map's docstring (1, 4) read blur and noise as contrast, (2, 8) overestimated the gains of the
# blurred JPEG 30-45 camera (22.93 dB there), and (3, 12) and (4, 16) were within 0.1 dB of each other.
BAND_SIGMAS = (3.0, 12.0)
BAND_SIDE = 512


def shrunk_photo(path: Path, side: int) -> np.ndarray:
    """A photo as ``(h, w, 3)`` float32 in [0, 1], box-averaged to at most ``side`` px on its longer side
    (aspect kept; a smaller photo is used as it is). JPEGs are decoded at reduced scale (a decode at 1/8 is
    itself a block average): a run reads up to 2 x ``config.color_pool_photos`` camera photos at start-up."""
    image, _ = read_image(path, draft_side=side)
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
    return image.astype(np.float32) / 255.0


def photo_colors(path: Path, side: int) -> np.ndarray:
    """The ``(k, 3)`` float32 colours in [0, 1] of a photo shrunk to at most ``side`` px (:func:`shrunk_photo`)."""
    return shrunk_photo(path, side).reshape(-1, 3)


def photo_band_energy(path: Path, side: int = BAND_SIDE) -> tuple[np.ndarray, int]:
    """``(sum of squares (3,), pixel count)`` of the :data:`BAND_SIGMAS` difference of Gaussians of each channel
    of a photo shrunk to at most ``side`` px, borders mirrored, float64.

    Computed in the DCT domain: a DCT-II sees the photo mirrored at its borders (scipy's ``reflect``), where a
    Gaussian filter multiplies coefficient k of an axis of length n by exp(-(sigma pi k / n)^2 / 2), and the
    orthonormal transform keeps sums of squares (Parseval): cheaper than filtering at sigma 12 (every photo of the
    pools is read at start-up), and equal to the spatial filter but for its truncation at 4 sigma (~1e-4)."""
    import scipy.fft  # here, not at the top: importing it slows every entry point's start; bandpass fits only

    x = shrunk_photo(path, side).astype(np.float64)
    h, w = x.shape[:2]
    coefficients = scipy.fft.dctn(x, type=2, norm="ortho", axes=(0, 1))

    def gaussian(sigma):
        response = [np.exp(-0.5 * (sigma * np.pi * np.arange(n) / n) ** 2) for n in (h, w)]
        return np.outer(*response)

    band = gaussian(BAND_SIGMAS[0]) - gaussian(BAND_SIGMAS[1])
    return np.sum((coefficients * band[..., None]) ** 2, axis=(0, 1)), h * w


Photos = str | os.PathLike | Sequence[str | os.PathLike]  # a folder (searched as list_images does) or its files


def _files(photos: Photos) -> tuple[list[Path], str]:
    """The files ``photos`` names, and how a message names them."""
    if isinstance(photos, (str, os.PathLike)):
        return list_images([photos]), str(photos)
    return [Path(p) for p in photos], f"{len(photos)} files"


def sampled_photos(folder: Photos, photos: int, seed: int, read):
    """``read(path)`` of up to ``photos`` seeded-random readable photos of ``folder`` (a folder, or its files: the
    training scan's usable ones), in that order. Unreadable files are skipped with a warning. Raises
    ``ValueError`` if no photo is readable."""
    files, label = _files(folder)
    order = np.random.default_rng(seed).permutation(len(files))
    values = []
    for i in order:
        try:
            values.append(read(files[i]))
        except ImageReadError as e:
            logger.warning("colour pool: skipping %s: %s", files[i], e)
            continue
        if len(values) == photos:
            break
    if not values:
        raise ValueError(f"{label}: no readable photo for the colour pool")
    return values


def folder_colors(folder: Photos, photos: int, side: int, seed: int) -> np.ndarray:
    """The colours of up to ``photos`` seeded-random photos of ``folder`` (see :func:`photo_colors`), stacked."""
    return np.concatenate(sampled_photos(folder, photos, seed, lambda path: photo_colors(path, side)))


def folder_band_std(folder: Photos, photos: int, seed: int, side: int = BAND_SIDE) -> np.ndarray:
    """The per-channel band-pass contrast of up to ``photos`` seeded-random photos of ``folder`` (the same
    photos as :func:`folder_colors` for the seed): the root mean square of :func:`photo_band_energy` over all
    their pixels, float64 (3,)."""
    energies = sampled_photos(folder, photos, seed, lambda path: photo_band_energy(path, side))
    return np.sqrt(sum(e for e, _ in energies) / sum(n for _, n in energies))


def build_color_pools(source: Photos, target: Photos, *, photos: int = 128, side: int = 64,
                      pixels: int = 65536, seed: int = 0, band: bool = False) -> dict[str, np.ndarray]:
    """``{"source": (P, 3), "target": (P, 3)}`` float32 colour samples of the two sides (module docstring): each a
    folder, or the list of its files to draw from (a training run passes its data scan's usable files, so a file
    the scan skipped is never read here; the same files in the same order give the same pools as the folder).

    ``P = min(pixels, pixels available on either side)``; the pixels are drawn without replacement with
    ``seed``, so the pools are the same for a seed and the same files (a resumed run rebuilds them exactly).
    ``band``: also ``"source_band_std"`` and ``"target_band_std"``, each side's :func:`folder_band_std` (the same
    photos), which the ``bandpass`` estimator of :func:`fitted_colour_map` needs.
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
    if band:
        pools["source_band_std"] = folder_band_std(source, photos, seed)
        pools["target_band_std"] = folder_band_std(target, photos, seed + 1)
        logger.info("band-pass contrast (RGB): source %s, target %s", np.round(pools["source_band_std"], 4),
                    np.round(pools["target_band_std"], 4))
    return pools
