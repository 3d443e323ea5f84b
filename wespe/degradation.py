"""The source camera's degradation, fitted to the two unpaired sets: paired examples for learning local restoration.

Why. An unpaired recipe whose colour path is fitted to the two sets' colour statistics gets all of its gain from
that fit (README: Results): the cycle's content loss ties F(G(x)) to x, noise included, and at laptop scale the
adversaries do not see sensor noise, blur or JPEG blocks well enough to ask G to remove them. What a supervised
(DPED) run learns from pairs is there to learn, but there are no pairs. This module makes them from the *target*
(clean) photos: it degrades them the way the source camera degrades its photos, with a camera model whose few
parameters are fitted so that the degraded target photos have the *source* set's texture statistics. G is then
trained to undo that degradation on clean photos it can be checked against (``weights.restoration``: an L1 term
``|G(D(y)) - y|``), beside WESPE's unpaired losses on real source photos. This is the "learn the degradation,
then train on pairs" line of unpaired restoration (Fritsche et al., ICCVW 2019; RealSR, Ji et al., CVPRW 2020;
Wu et al., ECCV 2020) with the smallest learned degradation that covers what phone cameras do to a DSLR's photo.

The camera model D (:func:`degrade`, pure JAX, per image of a batch):

  1. optics blur: a Gaussian of ``blur_sigma`` px (edge-extended borders);
  2. colour and tone: the per-channel colour map from the target to the source colours, the exact inverse of G's
     colour start (:func:`wespe.color_map.fitted_colour_map` with the run's estimator), so G's colour path maps
     it back;
  3. sensor noise: Gaussian, ``noise_sigma`` per RGB channel;
  4. 8-bit rounding, then JPEG at ``jpeg_quality`` (0 = none): YCbCr, 4:2:0 chroma, 8x8 DCT quantised with the
     IJG tables scaled by the quality as libjpeg does, fancy (triangle) chroma upsampling (:func:`jpeg`: not
     libjpeg's integer DCT, so not bit-exact, but 44-45 dB from Pillow's decoded output at qualities 20-90,
     where JPEG itself costs 31-35 dB; tests/test_degradation.py).

:func:`fit` chooses ``blur_sigma``, ``noise_sigma`` and ``jpeg_quality`` on a grid, then on two finer ones
around the best, by comparing :func:`texture_statistics` of source crops with those of degraded target crops:
the distribution (quantiles over 8x8 blocks) of local high-pass activity of luma at two scales and of chroma,
whose quiet blocks show the noise level and busy ones the sharpness, the fall of gradient energy from coarse to
fine scales (blur), and JPEG's 8x8 blockiness (per crop, whatever its grid offset). Set-level distributions and
ratios, so different scenes on the two sides matter little: on the quality benchmark, whose cameras are known,
it fits blur 1.1-1.4 px, noise 0.030-0.040, quality 22-35 (depending on which crops) for draws of blur 0.8-1.5,
noise 0.024-0.039, quality 30-45. Two simpler statistic sets failed there: Donoho's median |Haar detail| is 0
after JPEG and 8-bit rounding whatever the noise, and blockiness averaged over crops cancels out when each crop
has its photo's block grid at another offset. During training every degraded patch draws its own parameters
around the fit (``degradation.jitter``: uniform factors 1 +- jitter), as a camera's photos vary.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

# The example quantisation tables of the JPEG standard (ITU T.81 Annex K), which libjpeg scales by the quality.
LUMA_TABLE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float32).reshape(8, 8)
CHROMA_TABLE = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32, np.float32).reshape(8, 8)
# JFIF's full-range RGB <-> YCbCr (chroma centred on 128 of 255).
_RGB_TO_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                       np.float32)
_YCC_TO_RGB = np.linalg.inv(_RGB_TO_YCC.astype(np.float64)).astype(np.float32)

MAX_BLUR_SIGMA = 3.0
_BLUR_TAPS = 2 * math.ceil(3 * MAX_BLUR_SIGMA) + 1
FIT_FILE = "degradation.json"
FIT_CROP = 64  # side of the crops fit() compares (smaller patch sizes: the patch size)

# The grid :func:`fit` searches first (0 = no blur / no noise / no JPEG), then a finer one around its best point.
BLUR_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5)
NOISE_GRID = (0.0, 0.01, 0.02, 0.03, 0.045, 0.065)
JPEG_GRID = (0.0, 20.0, 35.0, 55.0, 80.0)


@dataclasses.dataclass(frozen=True)
class Degradation:
    """One camera model (module docstring): the three fitted parameters and the target -> source colour map."""

    blur_sigma: float
    noise_sigma: float
    jpeg_quality: float  # 0: no JPEG
    color_matrix: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # row-major 3x3
    color_bias: tuple[float, ...] = (0.0, 0.0, 0.0)

    def describe(self) -> str:
        jpeg = f"JPEG quality {self.jpeg_quality:.0f}" if self.jpeg_quality > 0 else "no JPEG"
        return f"blur sigma {self.blur_sigma:.2f} px, noise sigma {self.noise_sigma:.3f}, {jpeg}"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Degradation":
        return cls(float(data["blur_sigma"]), float(data["noise_sigma"]), float(data["jpeg_quality"]),
                   tuple(float(v) for v in data["color_matrix"]), tuple(float(v) for v in data["color_bias"]))


# ------------------------------------------------------------------------------------------- the camera model

def gaussian_blur(images: jax.Array, sigma: jax.Array) -> jax.Array:
    """Blur each NHWC image with its own Gaussian of ``sigma[n]`` px (0: unchanged), edge-extended borders."""
    half = _BLUR_TAPS // 2
    i = jnp.arange(_BLUR_TAPS, dtype=jnp.float32) - half
    s = jnp.clip(sigma.astype(jnp.float32), 0.0, MAX_BLUR_SIGMA)[:, None]
    taps = jnp.exp(-jnp.square(i) / (2.0 * jnp.square(jnp.maximum(s, 1e-3))))
    taps = taps / jnp.sum(taps, axis=1, keepdims=True)
    x = images.astype(jnp.float32)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (half, half)
        xp = jnp.pad(x, pad, mode="edge")
        n = x.shape[axis]
        out = 0.0
        for t in range(_BLUR_TAPS):
            window = jax.lax.slice_in_dim(xp, t, t + n, axis=axis)
            out = out + taps[:, t, None, None, None] * window
        x = out
    return x


def quantization_tables(quality: jax.Array) -> tuple[jax.Array, jax.Array]:
    """libjpeg's luma and chroma tables for qualities ``quality`` (N,) in [1, 100]: (N, 8, 8) each."""
    q = jnp.clip(quality.astype(jnp.float32), 1.0, 100.0)
    scale = jnp.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)[:, None, None]

    def table(base):
        return jnp.clip(jnp.floor((jnp.asarray(base) * scale + 50.0) / 100.0), 1.0, 255.0)
    return table(LUMA_TABLE), table(CHROMA_TABLE)


def _dct_matrix() -> np.ndarray:
    k, n = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    c = np.cos(np.pi * (2 * n + 1) * k / 16) * np.sqrt(2 / 8)
    c[0] /= np.sqrt(2)
    return c.astype(np.float32)


def _quantize_blocks(plane: jax.Array, table: jax.Array) -> jax.Array:
    """8x8 DCT, quantise with ``table`` (N, 8, 8), inverse DCT, of (N, H, W) planes (H, W multiples of 8)."""
    n, h, w = plane.shape
    c = jnp.asarray(_dct_matrix())
    blocks = plane.reshape(n, h // 8, 8, w // 8, 8)
    coef = jnp.einsum("ka,nyaxb,lb->nyxkl", c, blocks, c, precision="highest")
    t = table[:, None, None]
    coef = jnp.round(coef / t) * t
    out = jnp.einsum("ka,nyxkl,lb->nyaxb", c, coef, c, precision="highest")
    return out.reshape(n, h, w)


def _upsample2(plane: jax.Array, axis: int) -> jax.Array:
    """libjpeg's "fancy" 2x upsampling along ``axis``: each output sample 3/4 its own input, 1/4 the nearer
    neighbour (edges repeated)."""
    n = plane.shape[axis]
    prev = jnp.concatenate([jax.lax.slice_in_dim(plane, 0, 1, axis=axis),
                            jax.lax.slice_in_dim(plane, 0, n - 1, axis=axis)], axis=axis)
    nxt = jnp.concatenate([jax.lax.slice_in_dim(plane, 1, n, axis=axis),
                           jax.lax.slice_in_dim(plane, n - 1, n, axis=axis)], axis=axis)
    even, odd = 0.75 * plane + 0.25 * prev, 0.75 * plane + 0.25 * nxt
    stacked = jnp.stack([even, odd], axis=axis + 1)
    shape = list(plane.shape)
    shape[axis] = 2 * n
    return stacked.reshape(shape)


def jpeg(images: jax.Array, quality: jax.Array) -> jax.Array:
    """JPEG-compress and decode NHWC RGB in [0, 1] (8-bit values) at ``quality[n]`` (1..100; 0 = unchanged),
    as Pillow's default (4:2:0) does, in float32; returns 8-bit values in [0, 1]."""
    n, h, w, _ = images.shape
    ph, pw = -h % 16, -w % 16
    x = jnp.pad(images.astype(jnp.float32) * 255.0, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    ycc = jnp.einsum("nhwc,dc->nhwd", x, jnp.asarray(_RGB_TO_YCC), precision="highest")
    luma_table, chroma_table = quantization_tables(jnp.maximum(quality, 1.0))
    y = _quantize_blocks(ycc[..., 0] - 128.0, luma_table) + 128.0
    chroma = []
    for c in (1, 2):
        plane = ycc[..., c]
        small = plane.reshape(n, plane.shape[1] // 2, 2, plane.shape[2] // 2, 2).mean(axis=(2, 4))
        small = _quantize_blocks(small, chroma_table)  # the matrix centres chroma on 0: no level shift
        chroma.append(_upsample2(_upsample2(small, 1), 2))
    ycc = jnp.stack([y, chroma[0], chroma[1]], axis=-1)
    rgb = jnp.einsum("nhwc,dc->nhwd", ycc, jnp.asarray(_YCC_TO_RGB), precision="highest")
    rgb = jnp.round(jnp.clip(rgb, 0.0, 255.0))[:, :h, :w] / 255.0
    keep = (quality <= 0)[:, None, None, None]
    return jnp.where(keep, images.astype(jnp.float32), rgb)


def degrade(clean: jax.Array, blur_sigma: jax.Array, noise_sigma: jax.Array, jpeg_quality: jax.Array,
            color_matrix: jax.Array, color_bias: jax.Array, key: jax.Array | None = None, *,
            unit_noise: jax.Array | None = None) -> jax.Array:
    """The camera model (module docstring) applied to NHWC RGB ``clean`` in [0, 1], with per-image parameters
    ``blur_sigma``, ``noise_sigma``, ``jpeg_quality`` (N,), the colour map ``color_matrix`` (3, 3) and
    ``color_bias`` (3,), and the noise drawn from ``key`` (or ``unit_noise``, standard normal of ``clean``'s
    shape, given: :func:`fit` draws it once for all its candidates). Returns 8-bit values in [0, 1], float32."""
    if unit_noise is None:
        unit_noise = jax.random.normal(key, clean.shape, jnp.float32)
    x = gaussian_blur(clean, blur_sigma)
    x = jnp.einsum("nhwc,dc->nhwd", x, color_matrix.astype(jnp.float32)) + color_bias.astype(jnp.float32)
    x = x + noise_sigma.astype(jnp.float32)[:, None, None, None] * unit_noise
    x = jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0) / 255.0
    return jpeg(x, jpeg_quality)


def degrade_batch(clean: jax.Array, fitted: Degradation, key: jax.Array, jitter: float) -> jax.Array:
    """:func:`degrade` with every image's parameters drawn around ``fitted``: blur and noise sigmas times
    U(1 - jitter, 1 + jitter), the JPEG quality likewise (kept in [1, 100]; no JPEG stays none)."""
    n = clean.shape[0]
    k_params, k_noise = jax.random.split(key)
    factors = jax.random.uniform(k_params, (3, n), jnp.float32, 1.0 - jitter, 1.0 + jitter)
    quality = jnp.where(fitted.jpeg_quality > 0, jnp.clip(fitted.jpeg_quality * factors[2], 1.0, 100.0), 0.0)
    return degrade(clean, fitted.blur_sigma * factors[0], fitted.noise_sigma * factors[1], quality,
                   jnp.asarray(fitted.color_matrix, jnp.float32).reshape(3, 3),
                   jnp.asarray(fitted.color_bias, jnp.float32), k_noise)


# -------------------------------------------------------------------------------------------------- fitting

def _luma_chroma(images: jax.Array) -> jax.Array:
    return jnp.einsum("nhwc,dc->nhwd", images.astype(jnp.float32), jnp.asarray(_RGB_TO_YCC))


def _gradient_energy(plane: jax.Array) -> jax.Array:
    return 0.5 * (jnp.mean(jnp.abs(jnp.diff(plane, axis=1))) + jnp.mean(jnp.abs(jnp.diff(plane, axis=2))))


def _halve(plane: jax.Array) -> jax.Array:
    n, h, w = plane.shape
    return plane[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def _blockiness(plane: jax.Array) -> jax.Array:
    """How much larger the mean |difference| across one of the 8 column (row) phases is than across the others:
    1 for no block grid; JPEG's 8x8 blocks make it larger. Per crop (each crop of a set may have its photo's
    grid at another offset), then the median over the crops."""
    ratios = []
    for axis in (1, 2):
        d = jnp.abs(jnp.diff(plane, axis=axis))
        m = d.shape[axis] // 8 * 8
        d = jax.lax.slice_in_dim(d, 0, m, axis=axis)
        d = jnp.moveaxis(d, axis, -1).reshape(d.shape[0], -1, m // 8, 8).mean(axis=(1, 2))  # (N, 8 phases)
        ratios.append(jnp.max(d, axis=1) / jnp.maximum(jnp.mean(d, axis=1), 1e-8))
    return jnp.median(0.5 * (ratios[0] + ratios[1]))


_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def _activity_quantiles(plane: jax.Array) -> jax.Array:
    """Quantiles over 8x8 blocks of the RMS high-pass (``x`` minus its 3x3 box mean) of (N, H, W) planes: the low
    ones are set by noise (or its absence: JPEG flattens quiet blocks), the high ones by edges and sharpness."""
    n, h, w = plane.shape
    padded = jnp.pad(plane, ((0, 0), (1, 1), (1, 1)), mode="edge")
    box = sum(padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9.0
    high = jnp.square(plane - box)[:, :h // 8 * 8, :w // 8 * 8]
    blocks = jnp.sqrt(high.reshape(n, h // 8, 8, w // 8, 8).mean(axis=(2, 4)))
    return jnp.quantile(blocks.reshape(-1), jnp.asarray(_QUANTILES))


STATISTICS = (*(f"luma activity q{q:g}" for q in _QUANTILES), *(f"half-scale luma activity q{q:g}" for q in _QUANTILES),
              *(f"chroma activity q{q:g}" for q in _QUANTILES), "gradient full/half", "gradient half/quarter",
              "8x8 blockiness")


@jax.jit
def texture_statistics(images: jax.Array) -> jax.Array:
    """:data:`STATISTICS` of a set of NHWC RGB crops in [0, 1]: the distribution of local high-pass activity of
    luma at full and half resolution and of chroma, the gradient-energy ratios full/half and half/quarter
    resolution (lower = blurrier), the 8x8 blockiness."""
    ycc = _luma_chroma(images)
    luma = ycc[..., 0]
    half = _halve(luma)
    quarter = _halve(half)
    chroma = jnp.concatenate([ycc[..., 1], ycc[..., 2]], axis=0)
    g1, g2, g4 = _gradient_energy(luma), _gradient_energy(half), _gradient_energy(quarter)
    return jnp.concatenate([_activity_quantiles(luma), _activity_quantiles(half), _activity_quantiles(chroma),
                            jnp.stack([g1 / jnp.maximum(g2, 1e-8), g2 / jnp.maximum(g4, 1e-8), _blockiness(luma)])])


# Statistics are compared as logs; the floors (activities, about 0.3 of an 8-bit level) keep the near-zero
# activity of flat or JPEG-flattened blocks from dominating.
_FLOORS = np.array([0.001] * 15 + [0.0] * 3, np.float32)
_WEIGHTS = np.array([1.0] * 15 + [1.0, 1.0, 2.0], np.float32)


def statistics_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Weighted squared distance of the logs of two :func:`texture_statistics` vectors."""
    la, lb = np.log(np.asarray(a) + _FLOORS), np.log(np.asarray(b) + _FLOORS)
    return float(np.sum(_WEIGHTS * np.square(la - lb)))


def _degraded_statistics(clean, blur_sigma, noise_sigma, jpeg_quality, color_matrix, color_bias, unit_noise):
    n = clean.shape[0]
    full = lambda v: jnp.full((n,), v, jnp.float32)  # noqa: E731
    return texture_statistics(degrade(clean, full(blur_sigma), full(noise_sigma), full(jpeg_quality),
                                      color_matrix, color_bias, unit_noise=unit_noise))


# Several candidate cameras per call (one program, one compilation): the refinement passes try 27 candidates,
# so a chunk much larger than 8 would mostly compute padding.
_candidate_statistics = jax.jit(jax.vmap(_degraded_statistics, in_axes=(None, 0, 0, 0, None, None, None)))
_CHUNK = 8
_CHUNK_PIXELS = 2**23  # at most this many crop pixels per call (~100 MB per float32 RGB intermediate)


def fit(source_crops: np.ndarray, target_crops: np.ndarray, color_matrix: np.ndarray, color_bias: np.ndarray,
        seed: int = 0, fixed: dict | None = None) -> tuple[Degradation, dict]:
    """The camera model whose degraded ``target_crops`` look most like ``source_crops`` (module docstring).

    Both are (N, s, s, 3) float32 in [0, 1] (s >= 16); ``color_matrix`` (3, 3) and ``color_bias`` (3,) the
    target -> source colour map. ``fixed``: parameters known beforehand (``{"jpeg_quality": 0}``), not searched.
    Deterministic for a seed. Returns the fit and a record of the search (the
    statistics of both sets and of the fit, its distance, the candidates tried)."""
    source_stats = np.asarray(texture_statistics(jnp.asarray(source_crops)))
    clean = jnp.asarray(target_crops)
    m, b = jnp.asarray(color_matrix, jnp.float32), jnp.asarray(color_bias, jnp.float32)
    unit_noise = jax.random.normal(jax.random.key(seed), clean.shape, jnp.float32)  # the same for every candidate
    scores: dict[tuple[float, float, float], float] = {}
    statistics: dict[tuple[float, float, float], np.ndarray] = {}  # of each candidate, for the record

    chunk = max(1, min(_CHUNK, _CHUNK_PIXELS // (clean.shape[0] * clean.shape[1] * clean.shape[2])))

    def best_of(points):
        points = [tuple(round(float(v), 4) for v in p) for p in points]
        todo = list(dict.fromkeys(p for p in points if p not in scores))
        for i in range(0, len(todo), chunk):
            part = todo[i:i + chunk]
            values = np.asarray(part + [part[-1]] * (chunk - len(part)), np.float32)  # one shape: one compile
            stats = np.asarray(_candidate_statistics(clean, values[:, 0], values[:, 1], values[:, 2], m, b,
                                                      unit_noise))
            for point, s in zip(part, stats):
                scores[point], statistics[point] = statistics_distance(s, source_stats), s
        return min(points, key=lambda p: (scores[p], p))

    fixed = dict(fixed or {})
    names = ("blur_sigma", "noise_sigma", "jpeg_quality")
    unknown = set(fixed) - set(names)
    if unknown:
        raise ValueError(f"fit: unknown fixed parameter(s) {sorted(unknown)}; expected some of {names}")
    grids = [(float(fixed[n]),) if n in fixed else g for n, g in zip(names, (BLUR_GRID, NOISE_GRID, JPEG_GRID))]
    best = best_of(itertools.product(*grids))
    for scale in (1.0, 0.5):  # a finer grid around the best point, twice
        steps = (0.25 * scale, max(0.0025, 0.3 * scale * best[1]),
                 max(2.5, 0.25 * scale * best[2]) if best[2] > 0 else 10.0)
        axes = [[v] if n in fixed else sorted({max(0.0, v + k * s) for k in (-1, 0, 1)})
                for n, v, s in zip(names, best, steps)]
        axes[2] = [q for q in axes[2] if q == 0 or 1 <= q <= 100]
        best = best_of(itertools.product(*axes))
    fitted = Degradation(best[0], best[1], best[2], tuple(np.asarray(color_matrix, np.float64).reshape(-1).tolist()),
                         tuple(np.asarray(color_bias, np.float64).reshape(-1).tolist()))
    best_of([(0.0, 0.0, 0.0)])
    identity = scores[(0.0, 0.0, 0.0)]
    record = {"source_statistics": source_stats.tolist(),
              "clean_target_statistics": np.asarray(texture_statistics(clean)).tolist(),
              "fit_statistics": statistics[best].tolist(),  # as scored (a separate program would cost another compile)
              "distance": scores[best], "distance_undegraded": identity,
              "candidates": len(scores), "fixed": fixed,
              "statistics": list(STATISTICS)}
    return fitted, record


def save(path: str | Path, fitted: Degradation, record: dict) -> None:
    from wespe.atomic_write import atomic_write
    with atomic_write(Path(path)) as f:
        f.write((json.dumps({"degradation": fitted.to_json(), "fit": record}, indent=2) + "\n").encode())


def load(path: str | Path) -> Degradation:
    return Degradation.from_json(json.loads(Path(path).read_text())["degradation"])
