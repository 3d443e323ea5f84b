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

The fitted maps (:func:`fitted_colour_map`): ``moments`` gives the source pool the target pool's per-channel
mean and standard deviation; ``bandpass`` takes the gains from the two sets' *band-pass contrast* instead
(:func:`folder_band_std`) and the offsets from the pools' means and black points. A set's global standard
deviation depends on its scenes' layout (a half photo of sky beside one of ground), which a fit from a few photos
takes for the camera; the energy in a mid-frequency band varies less from scene to scene (natural photos'
spectra fall as 1/f^2, so every octave band holds about the same energy, whatever the framing and scale) and
scales with the camera's contrast and channel gains all the same.
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


# The band of the band-pass contrast: a difference of Gaussians at these sigmas (px) on each photo shrunk to at
# most BAND_SIDE px. The fine sigma keeps out pixel noise (a sigma-3 blur passes ~1% of white noise's
# variance), camera blurs of up to ~1.5 px and most of JPEG's 8 px blocks; the two octaves above it hold the
# scene's local contrast. Of the pairs (1, 4), (2, 8), (3, 12), (4, 16) and (2, 32), on the seven cameras of
# fitted_colour_map's docstring (1, 4) read blur and noise as contrast, (2, 8) overestimated the gains of the
# blurred JPEG 30-45 camera (22.93 dB there), and (3, 12) and (4, 16) were within 0.1 dB of each other.
BAND_SIGMAS = (3.0, 12.0)
BAND_SIDE = 512
ESTIMATORS = ("moments", "bandpass")
# The black point of a set of colours: this percentile of each channel of its pool (above its share of clipped
# pixels, whose ranks say nothing of the camera's black).
BLACK_POINT_PERCENTILE = 2.0
CLIPPED = 0.5 / 255


def shrunk_photo(path: Path, side: int) -> np.ndarray:
    """A photo as ``(h, w, 3)`` float32 in [0, 1], box-averaged to at most ``side`` px on its longer side
    (aspect kept; a smaller photo is used as it is). JPEGs are decoded at reduced scale (a decode at 1/8 is
    itself a block average), so reading 2 x 128 camera photos at start-up takes seconds, not a minute."""
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
    orthonormal transform keeps sums of squares (Parseval): 5x faster than filtering at sigma 12 (128 photos a
    side are read at start-up), equal to the spatial filter but for its truncation at 4 sigma (~1e-4)."""
    import scipy.fft  # here, not at the top: ~0.3 s of every entry point's start-up, needed by bandpass fits only

    x = shrunk_photo(path, side).astype(np.float64)
    h, w = x.shape[:2]
    coefficients = scipy.fft.dctn(x, type=2, norm="ortho", axes=(0, 1))

    def gaussian(sigma):
        response = [np.exp(-0.5 * (sigma * np.pi * np.arange(n) / n) ** 2) for n in (h, w)]
        return np.outer(*response)

    band = gaussian(BAND_SIGMAS[0]) - gaussian(BAND_SIGMAS[1])
    return np.sum((coefficients * band[..., None]) ** 2, axis=(0, 1)), h * w


def sampled_photos(folder: str | os.PathLike, photos: int, seed: int, read):
    """``read(path)`` of up to ``photos`` seeded-random readable photos of ``folder``, in that order. Unreadable
    files are skipped with a warning. Raises ``ValueError`` if no photo is readable."""
    files = list_images([folder])
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
        raise ValueError(f"{folder}: no readable photo for the colour pool")
    return values


def folder_colors(folder: str | os.PathLike, photos: int, side: int, seed: int) -> np.ndarray:
    """The colours of up to ``photos`` seeded-random photos of ``folder`` (see :func:`photo_colors`), stacked."""
    return np.concatenate(sampled_photos(folder, photos, seed, lambda path: photo_colors(path, side)))


def folder_band_std(folder: str | os.PathLike, photos: int, seed: int, side: int = BAND_SIDE) -> np.ndarray:
    """The per-channel band-pass contrast of up to ``photos`` seeded-random photos of ``folder`` (the same
    photos as :func:`folder_colors` for the seed): the root mean square of :func:`photo_band_energy` over all
    their pixels, float64 (3,)."""
    energies = sampled_photos(folder, photos, seed, lambda path: photo_band_energy(path, side))
    return np.sqrt(sum(e for e, _ in energies) / sum(n for _, n in energies))


def build_color_pools(source: str | os.PathLike, target: str | os.PathLike, *, photos: int = 128, side: int = 64,
                      pixels: int = 65536, seed: int = 0, band: bool = False) -> dict[str, np.ndarray]:
    """``{"source": (P, 3), "target": (P, 3)}`` float32 colour samples of the two folders (module docstring).

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


def fitted_colour_map(pools: dict, estimator: str = "moments", *,
                      reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel affine colour map from the source set to the target set (``reverse``: target to source)
    fitted to :func:`build_color_pools` output, as :func:`moment_transfer`'s ``(matrix, bias)``:

    * ``moments``: the pools' mean and standard deviation (:func:`moment_transfer`);
    * ``bandpass``: the gains ``target_band_std / source_band_std`` (pools built with ``band=True``), and the
      bias that sends the source pool's mean and black point onto the target pool's, least squares
      (:func:`anchored_bias`).

    Why: a mean and a global standard deviation of a few photos are their scenes' as much as the camera's; the
    band-pass contrast and the black point (most photos have some shadow near the camera's black) depend less on
    what was photographed. Measured as the only change to the held-out photos (wespe_plus's colour start: the
    map on a Gaussian base layer; PSNR of 3 test photos, 5 training photos a side, seed-0 data), ``moments`` ->
    ``bandpass`` on the three cameras it was chosen on: the quality benchmark's 23.00 -> 23.21 dB, the cool
    over-exposed camera's 23.17 -> 27.38, the noisy phone's 22.61 -> 24.65; then on four it was not chosen on
    (its band was): a warm contrasty camera 23.07 -> 26.77, a dim one 22.47 -> 24.74, the benchmark's camera on
    the other split 21.47 -> 23.19 and on another data seed 22.32 -> 24.21 (the true set-level map: 27.63, 25.89,
    24.38, 23.40); the built-in demo's held-out crops 26.87 -> 26.80. With the sigma-2 band, the gains were
    nearer the true ones than the standard deviations' on 20 of the 21 channels. SSIM moved by -0.02 to +0.03
    (SSIM of a colour start is mostly its noise: the true map scores below the moments on two of the seven).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown colour estimator {estimator!r}; expected one of {ESTIMATORS}")
    src, tgt = ("target", "source") if reverse else ("source", "target")
    if estimator == "bandpass":
        missing = [k for k in (f"{src}_band_std", f"{tgt}_band_std") if k not in pools]
        if missing:
            raise ValueError(f"the bandpass colour estimator needs pools built with band=True (missing {missing})")
        gain = band_gain(pools[f"{src}_band_std"], pools[f"{tgt}_band_std"])
        return (np.diag(gain).astype(np.float32),
                anchored_bias(pools[src], pools[tgt], gain).astype(np.float32))
    return moment_transfer(pools[src], pools[tgt])


def anchored_bias(source: np.ndarray, target: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """The per-channel bias ``b`` of ``colour(x) = gain * x + b`` that sends two anchors of the ``(N, 3)`` source
    colours onto the target's, least squares: their means and their black points (each channel's
    :data:`BLACK_POINT_PERCENTILE`-th percentile, taken above the larger of the two sides' shares of clipped
    pixels, <= :data:`CLIPPED`), so ``b`` is the average of the two anchors' offsets. Symmetric: the reverse map's
    bias is ``-b / gain``, the exact inverse. float64 (3,)."""
    s, t = np.asarray(source, np.float64), np.asarray(target, np.float64)
    gain = np.asarray(gain, np.float64)
    clipped = np.maximum((s <= CLIPPED).mean(axis=0), (t <= CLIPPED).mean(axis=0))
    rank = np.minimum(BLACK_POINT_PERCENTILE + 100.0 * clipped, 50.0)
    black_s = np.array([np.percentile(s[:, c], rank[c]) for c in range(s.shape[1])])
    black_t = np.array([np.percentile(t[:, c], rank[c]) for c in range(t.shape[1])])
    return 0.5 * ((t.mean(axis=0) - gain * s.mean(axis=0)) + (black_t - gain * black_s))


def band_gain(source_band_std: np.ndarray, target_band_std: np.ndarray) -> np.ndarray:
    """Per-channel gains ``target / source`` of two :func:`folder_band_std` results; 1, with a warning, where
    either side has no band-pass contrast (flat or tiny photos: a ratio would scale the channel by 0 or without
    bound, and the offsets still match the two sets' levels)."""
    s, t = np.asarray(source_band_std, np.float64), np.asarray(target_band_std, np.float64)
    flat = (s <= 1e-6) | (t <= 1e-6)
    if flat.any():
        sides = " and ".join(name for name, v in (("source", s), ("target", t)) if (v <= 1e-6).any())
        logger.warning("colour fit: no band-pass contrast in channel(s) %s of the %s photos: gain 1 there",
                       np.flatnonzero(flat).tolist(), sides)
    return np.where(flat, 1.0, t / np.maximum(s, 1e-6))


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
