"""The global colour map from the source set to the target set, fitted to colour pools (float64 NumPy).

The fitted maps (:func:`fitted_colour_map`): ``moments`` gives the source pool the target pool's per-channel mean
and standard deviation; ``bandpass`` takes the gains from the two sets' *band-pass contrast* instead
(:func:`wespe.training.color_pool.folder_band_std`) and the offsets from the pools' means and black points. A set's
global standard deviation depends on its scenes' layout (a half photo of sky beside one of ground), which a fit from
a few photos takes for the camera; the energy in a mid-frequency band varies less from scene to scene (natural
photos' spectra fall as 1/f^2, so every octave band holds about the same energy, whatever the framing and scale) and
scales with the camera's contrast and channel gains all the same.

The pools come from :func:`wespe.training.color_pool.build_color_pools`; the training step starts G's colour path
(and F's, reversed) at the map fitted here.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

ESTIMATORS = ("moments", "bandpass")
# The black point of a set of colours: this percentile of each channel of its pool (above its share of clipped
# pixels, whose ranks say nothing of the camera's black).
BLACK_POINT_PERCENTILE = 2.0
CLIPPED = 0.5 / 255


def fitted_colour_map(pools: dict, estimator: str = "moments", *,
                      reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel affine colour map from the source set to the target set (``reverse``: target to source) fitted to
    :func:`wespe.training.color_pool.build_color_pools` output, as :func:`moment_transfer`'s ``(matrix, bias)``:

    * ``moments``: the pools' mean and standard deviation (:func:`moment_transfer`);
    * ``bandpass``: the gains ``target_band_std / source_band_std`` (pools built with ``band=True``), and the
      bias that sends the source pool's mean and black point onto the target pool's, least squares
      (:func:`anchored_bias`).

    Why: a mean and a global standard deviation of a few photos are their scenes' as much as the camera's; the
    band-pass contrast and the black point (most photos have some shadow near the camera's black) depend less on
    what was photographed. Measured as the only change to the held-out photos (wespe_plus's colour start),
    ``bandpass`` beat ``moments`` on the three cameras it was chosen on and on four it was not, and its gains were
    nearer the true ones (measured: see the README's Results; experiments/quality/colour_estimators.py reruns it).
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
    """Per-channel gains ``target / source`` of two :func:`wespe.training.color_pool.folder_band_std` results; 1, with a
    warning, where either side has no band-pass contrast (flat or tiny photos: a ratio would scale the channel by 0 or
    without bound, and the offsets still match the two sets' levels)."""
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

    Measured on the quality benchmark as the only change to the held-out photos, it beat the full 3x3 Gaussian
    (Monge) map, per-channel histogram matching (curves from a few photos overfit their content) and the colour
    path learned from batches (measured: see the README's Results).
    """
    s, t = np.asarray(source, np.float64), np.asarray(target, np.float64)
    std_s, std_t = s.std(axis=0), t.std(axis=0)
    gain = np.where(std_s > 1e-6, std_t / np.maximum(std_s, 1e-6), 1.0)
    bias = t.mean(axis=0) - gain * s.mean(axis=0)
    return np.diag(gain).astype(np.float32), bias.astype(np.float32)
