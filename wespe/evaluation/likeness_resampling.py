"""How sure a no-reference ranking is: the NIQE-style distances recomputed with the photos resampled.

A target folder of a few dozen photos and a set of 20 enhanced photos are samples. Other photos of the same
scenes, another folder from the same camera, give other distances, and with small folders the change is large:
on the quality benchmark's cool camera the same outputs' rank agreement with PSNR went from +0.78 to +0.03 when
the target folder (five clean photo halves) was swapped for the other halves of the three test photos
(experiments/quality/target_dependence.py, experiments/results/evaluation.md). So the sweep's ranking and
``launch/evaluate.py --target`` say, beside each ``niqe_set``, its range over resamples of the photos, and for
two sets how often the first is the closer one.

Protocol (:data:`PROTOCOL`):

* **Per photo**, its usable patch features are kept as :class:`PhotoMoments`: the number of patches, their mean and
  their scatter matrix (the sum of outer products about that mean). Pooling photos with any weights is then exact:
  with weights 1 it is the mean and the n - 1 covariance that ``np.cov`` gives on their patches stacked. A few kB
  per photo, whatever its size, so a sweep keeps them on disk (``likeness_moments.npz`` in each cell's folder) and
  ranks finished cells without their photos.
* **Resampling**: the Bayesian bootstrap (Rubin, Annals of Statistics 1981): in each of :data:`RESAMPLES` = 200
  resamples every photo's patches get one weight ``w ~ Exp(1)`` (the continuous counterpart of drawing the
  photos again with replacement), the mean and covariance are the weighted ones (patch weights summing to n_w,
  covariance over n_w - 1). The weight of photo ``name`` in resample ``b`` is
  ``np.random.default_rng([seed, side, crc32(name)]).exponential(1.0, RESAMPLES)[b]``, side 0 for the target
  folder and 1 for the sets scored: a photo has the same weight in every set it belongs to, so the outputs of one
  input folder and that folder itself (every cell of a sweep on the same source) are resampled *paired*, photo by
  photo, and a difference between them is not drowned by how much the photos differ from one another. The target
  photos are reweighted too, and the model refitted, in each resample. Why not draws with replacement: a draw
  holds about 63 % of the photos, so with a small folder the covariance loses rank and the distances blow up (on
  the quality benchmark, 61 target patches, wespe_plus seed 1 at 6.90: with draws a median of 9.80, 42 % above,
  range 7.05-33.7; with weights 7.86, 14 % above, range 6.66-9.98).
* **Range**: the median and the 2.5th and 97.5th percentiles of a set's distance over the resamples. The
  distance is a length, so the perturbations lengthen it on average: the resampled distances run above the
  full-set one (12-17 % on the benchmark's rows, 61 target patches), which lies in the lower part of the range,
  or below it with a few dozen patches; the range's width is what it tells.
  **P(closer)** of set a against set b: the fraction of the resamples in which a's distance is the smaller (ties
  count half). A set whose every photo is flat (a collapsed enhancer) is infinitely far in every resample; one
  without photos has no number (NaN).

The ranges show what the photos at hand leave open; they do not show what photos of other scenes would say
(a target folder of one kind of scene is another camera to this measure), nor the measure's own blindness to
colour: see no_reference's docstring.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from wespe.evaluation.no_reference import mvg_distance

__all__ = ["PROTOCOL", "RESAMPLES", "PhotoMoments", "describe", "interval", "load_moments", "p_closer", "photo_weights",
           "resample_distances", "save_moments", "section", "span", "summary"]

RESAMPLES = 200
LEVEL = 0.95
TARGET_SIDE, SET_SIDE = 0, 1
PROTOCOL = (f"Bayesian bootstrap over photos: {RESAMPLES} resamples, photo 'name' weighted "
            f"default_rng([seed, side, crc32(name)]).exponential(1, {RESAMPLES})[b] in resample b (side 0 the target "
            f"folder, its model refitted each time; side 1 the sets, so sets of the same photos are paired); "
            f"weighted mean and covariance (over n_w - 1); range: median and 2.5th-97.5th percentiles of niqe_set "
            f"over the resamples; p_closer: share of the resamples where the first set is closer (ties half)")


@dataclasses.dataclass(frozen=True)
class PhotoMoments:
    """Per photo (sorted by name): ``counts`` (m,) usable patches, ``means`` (m, F) and ``scatters`` (m, F, F),
    the sums of (x - mean)(x - mean)^T over its patches."""

    names: tuple[str, ...]
    counts: np.ndarray
    means: np.ndarray
    scatters: np.ndarray

    @classmethod
    def of(cls, features: Mapping[str, np.ndarray]) -> PhotoMoments:
        """From ``{photo name: (n, F) usable patch features}`` (photos without a patch are left out)."""
        names = tuple(sorted(name for name, f in features.items() if len(f)))
        width = next((np.shape(f)[1] for f in features.values()), 0)
        counts = np.array([len(features[n]) for n in names], np.float64)
        means = np.array([np.mean(features[n], axis=0) for n in names], np.float64).reshape(len(names), width)
        centred = [np.asarray(features[n], np.float64) - m for n, m in zip(names, means)]
        scatters = np.array([c.T @ c for c in centred], np.float64).reshape(len(names), width, width)
        return cls(names, counts, means, scatters)

    def __len__(self) -> int:
        return len(self.names)

    def pooled(self, weights=None) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean, covariance) of every photo's patches, each patch of photo i weighted ``weights[i]`` (default 1):
        the weighted mean, and the weighted scatter over n_w - 1, n_w the patches' total weight (with integer
        weights, ``np.cov`` of the patches repeated as often); None when no patch has weight. Covariance 0 for
        n_w <= 1 (a single patch: as ``no_reference``'s model)."""
        w = np.ones(len(self)) if weights is None else np.asarray(weights, np.float64)
        n = float(w @ self.counts)
        if n == 0:
            return None
        wc = w * self.counts
        mean = wc @ self.means / n
        d = self.means - mean
        scatter = np.tensordot(w, self.scatters, axes=1) + (d * wc[:, None]).T @ d
        return mean, (scatter / (n - 1) if n > 1 else np.zeros_like(scatter))


def _weights(names, seed: int, side: int, resamples: int) -> np.ndarray:
    """(resamples, len(names)) Exp(1) weights, each photo's column fixed by its name (module docstring)."""
    columns = [np.random.default_rng([seed, side, zlib.crc32(name.encode())]).exponential(1.0, resamples)
               for name in names]
    return np.array(columns, np.float64).T.reshape(resamples, len(names))


def photo_weights(names: Sequence[str], seed: int = 0, resamples: int = RESAMPLES) -> np.ndarray:
    """(resamples, len(names)) the weights the scored sets' photos of these names get in each resample (the same
    :func:`resample_distances` gives them): what a caller needs to resample a per-photo metric alike."""
    return _weights(tuple(names), seed, SET_SIDE, resamples)


def resample_distances(sets: Mapping[str, PhotoMoments], target: PhotoMoments, *, seed: int = 0,
                       resamples: int = RESAMPLES, flat: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """{set: (resamples,) niqe_set distances to the target model refitted on each resample}. A set (or a target)
    without photos is NaN throughout; the sets named in ``flat`` (every photo flat: no_reference's
    ``niqe_all_flat``) are +inf throughout."""
    target_models = [target.pooled(w) for w in _weights(target.names, seed, TARGET_SIDE, resamples)]
    out = {key: np.full(resamples, np.inf) for key in flat}
    for key, moments in sets.items():
        distances = np.full(resamples, np.nan)
        for b, w in enumerate(_weights(moments.names, seed, SET_SIDE, resamples)):
            pooled = moments.pooled(w)
            if pooled is not None and target_models[b] is not None:
                distances[b] = mvg_distance(*pooled, *target_models[b])
        out[key] = distances
    return out


def interval(distances: np.ndarray, level: float = LEVEL) -> tuple[float, float] | None:
    """The central ``level`` percentile interval of the valid (non-NaN) resamples; None without one."""
    valid = distances[~np.isnan(distances)]
    if not len(valid):
        return None
    if np.isinf(valid).all():  # a flat set: infinitely far in every resample (percentile would give inf - inf)
        return float("inf"), float("inf")
    low, high = np.percentile(valid, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def p_closer(a: np.ndarray, b: np.ndarray) -> float | None:
    """Share of the resamples in which ``a`` is closer than ``b`` (ties count half; resamples where either has no
    number left out); None if none is left."""
    both = ~np.isnan(a) & ~np.isnan(b)
    if not both.any():
        return None
    a, b = a[both], b[both]
    return float(np.mean((a < b) + 0.5 * (a == b)))


def summary(distances: np.ndarray) -> dict:
    """JSON-ready ``{"low", "high", "median", "all_flat", "resamples"}`` of one set's resampled distances (None for
    a flat set, infinitely far, and for one without photos)."""
    bounds = interval(distances)
    flat = bounds is not None and math.isinf(bounds[0])
    finite = bounds is not None and not flat
    valid = distances[~np.isnan(distances)]
    return {"low": bounds[0] if finite else None, "high": bounds[1] if finite else None,
            "median": float(np.median(valid)) if finite else None, "all_flat": flat, "resamples": len(distances)}


def section(sets: Mapping, model) -> dict | None:
    """The ``resampled`` part of a ``no_reference`` section: ``sets`` maps a name ("outputs", "inputs") to a
    :class:`wespe.evaluation.no_reference.SetStats` scored against ``model`` (a TargetModel); per set its
    :func:`summary`, and ``p_outputs_closer`` (:func:`p_closer` of the outputs against the inputs) when both are
    there. None when the model has no NIQE part or no set has a NIQE number or is all flat."""
    if model.moments is None:
        return None
    measurable = {k: s.moments() for k, s in sets.items() if s.features}
    flat = [k for k, s in sets.items() if 0 < s.num_images == s.num_flat]
    if not measurable and not flat:
        return None
    distances = resample_distances(measurable, model.moments, seed=model.seed, flat=flat)
    out = {"protocol": PROTOCOL, "seed": model.seed, "sets": {k: summary(v) for k, v in distances.items()},
           "p_outputs_closer": None}
    if "outputs" in distances and "inputs" in distances:
        out["p_outputs_closer"] = p_closer(distances["outputs"], distances["inputs"])
    return out


INTERVAL_LABEL = f"NIQE distance to target, set, photos resampled: median ({LEVEL:.0%} range)"


def span(summary_: Mapping | None) -> str:
    """"median (low-high)" of a :func:`summary` ("-" without one; "flat" for a set infinitely far)."""
    if summary_ and summary_.get("all_flat"):
        return "flat"
    if not summary_ or summary_.get("low") is None:
        return "-"
    return f"{summary_['median']:.2f} ({summary_['low']:.2f}-{summary_['high']:.2f})"


def describe(resampled: Mapping) -> str:
    """One paragraph for a report: what the range is, and how often the outputs were the closer."""
    n = max((s["resamples"] for s in resampled["sets"].values()), default=RESAMPLES)
    text = (f"Range: the set's NIQE distance over {n} resamples of the photos (every photo weighted Exp(1), the "
            f"target photos too, the target model refitted each time; wespe/evaluation/likeness_resampling.py): "
            f"what a few photos leave open. The distance is a length, so perturbing the photos lengthens it on "
            f"average: the resampled ones run above the set's own (12-17 % with 61 target patches, more with "
            f"fewer); compare sets by how often one is the closer, not by where the ranges lie.")
    p = resampled.get("p_outputs_closer")
    if p is not None:
        text += (f" The outputs are closer to the target than their inputs in {p:.0%} of the resamples (the same "
                 f"photos on both sides).")
    return text


def save_moments(path: str | os.PathLike, moments: Mapping[str, PhotoMoments]) -> None:
    """Write ``{key: PhotoMoments}`` to one ``.npz`` (atomically)."""
    from wespe.atomic_write import atomic_write
    arrays = {}
    for key, m in moments.items():
        arrays.update({f"{key}/names": np.array(m.names, dtype=np.str_), f"{key}/counts": m.counts,
                       f"{key}/means": m.means, f"{key}/scatters": m.scatters})
    with atomic_write(Path(path)) as f:
        np.savez(f, **arrays)


def load_moments(path: str | os.PathLike) -> dict[str, PhotoMoments]:
    """What :func:`save_moments` wrote."""
    with np.load(path, allow_pickle=False) as data:
        keys = sorted({k.rsplit("/", 1)[0] for k in data.files})
        return {k: PhotoMoments(tuple(str(n) for n in data[f"{k}/names"]), data[f"{k}/counts"], data[f"{k}/means"],
                                data[f"{k}/scatters"]) for k in keys}
