"""The quality benchmark's baselines: classical enhancements (pure NumPy) and colour transfers fitted to the
training sets (no network), each a function of a float RGB image in [0, 1].

Their outputs show what a trained network has to beat: :data:`BASELINES` are fixed recipes, and
:func:`fitted_baselines` fits wespe_plus's colour path alone (and that colour fit followed by a classical denoiser,
:func:`nlm_denoise`), so the gap to a trained preset is what training adds.
"""

from __future__ import annotations

import numpy as np

from wespe.evaluation.quality_data import BenchmarkData

# ITU-R BT.601 luma weights to 3 digits, for autocontrast's percentiles. Not wespe.ops.GRAYSCALE_WEIGHTS: that is
# tf.image.rgb_to_grayscale's 4-digit rounding (0.2989, ...) the losses follow; these keep the baselines' recorded
# results reproducible.
_LUMA = np.array([0.299, 0.587, 0.114])


def grey_world(x: np.ndarray) -> np.ndarray:
    """Grey-world white balance of a float RGB image: scale each channel so its mean equals the mean of the three
    channel means (a neutral average colour). Not clipped: the caller decides (values may exceed 1)."""
    x = np.asarray(x, np.float64)
    means = x.reshape(-1, 3).mean(0)
    return x * (means.mean() / np.maximum(means, 1e-8))


def autocontrast(x: np.ndarray, low: float = 0.5, high: float = 99.5, clip: bool = True) -> np.ndarray:
    """Luma percentile stretch: the ``low`` / ``high`` percentiles of the BT.601 luma map to 0 / 1, by one affine
    map applied to all three channels (so the colour balance is kept). A flat image is returned as is."""
    x = np.asarray(x, np.float64)
    lo, hi = np.percentile(x @ _LUMA, [low, high])
    if hi - lo < 1e-8:
        return np.clip(x, 0, 1) if clip else x
    y = (x - lo) / (hi - lo)
    return np.clip(y, 0, 1) if clip else y


def grey_world_autocontrast(x: np.ndarray) -> np.ndarray:
    """Grey-world white balance, then the luma 0.5% / 99.5% percentile stretch; float RGB in [0, 1] -> [0, 1]."""
    return autocontrast(grey_world(x))


def unsharp(x: np.ndarray, sigma: float = 1.5, amount: float = 0.8) -> np.ndarray:
    """Unsharp mask ``x + amount * (x - gaussian(x, sigma))`` per channel, clipped to [0, 1]: the formula of
    ``skimage.filters.unsharp_mask(x, radius=sigma, amount=amount, channel_axis=2)`` (a Gaussian truncated at 4
    sigma, border mode ``reflect``)."""
    import scipy.ndimage
    x = np.asarray(x, np.float64)
    blurred = np.stack([scipy.ndimage.gaussian_filter(x[..., c], sigma, mode="reflect") for c in range(3)], -1)
    return np.clip(x + amount * (x - blurred), 0, 1)


def classical_combo(x: np.ndarray) -> np.ndarray:
    """:func:`grey_world_autocontrast` followed by :func:`unsharp`."""
    return unsharp(grey_world_autocontrast(x))


BASELINES = {"grey_world_autocontrast": grey_world_autocontrast, "unsharp": unsharp,
             "classical_combo": classical_combo}


# The names fitted_baselines returns (known before any fit: a preset may not take one of them).
FITTED_NAMES = ("moment_transfer", "moment_transfer_base", "bandpass_transfer_base",
                "bandpass_transfer_base_nlm")
# The row that is wespe_plus's generator before its first step (config.color_init="bandpass"): the colour start
# the oracle rows and the "what the network adds" comparisons start from.
COLOUR_START = "bandpass_transfer_base"

# Non-local means settings of the colour-fit + denoiser baseline: scikit-image's documented example values (5x5
# patches searched within 6 px, fast mode) and its recommended h = 0.8 sigma for fast mode with sigma given.
NLM_PATCH_SIZE = 5
NLM_PATCH_DISTANCE = 6
NLM_H_PER_SIGMA = 0.8


def nlm_denoise(x: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Non-local means (:func:`skimage.restoration.denoise_nl_means`, fast mode, 5x5 patches, search distance 6,
    all three channels in one patch distance) of a float RGB image, its strength set from the image itself: sigma
    is the mean over the channels of :func:`wespe.evaluation.quality_metrics.noise_sigma` (Immerkær's estimator;
    scikit-image's ``estimate_sigma`` would need PyWavelets), ``h = 0.8 sigma``. ``x`` is clipped to [0, 1] first: the
    saved output is clipped anyway, and out-of-range values would count as noise. Deterministic.

    The estimator sees pixel-scale noise only. After a strong JPEG (the quality benchmark's camera: quality 30-45) what
    is left of the noise sits in the 8x8 blocks' low frequencies, so sigma comes out about a tenth of the camera's
    noise and the denoiser changes little: the result of this self-calibrating recipe there, kept as it is rather
    than tuned on the test photos. ``sigma`` given (the oracle rows: the camera's own noise level) replaces the
    estimate."""
    from skimage.restoration import denoise_nl_means

    from wespe.evaluation.quality_metrics import noise_sigma
    x = np.clip(np.asarray(x, np.float64), 0, 1)
    if sigma is None:  # one sigma for all channels: denoise_nl_means compares whole RGB patches with one h
        sigma = float(np.mean(noise_sigma(x)))
    if sigma == 0:  # nothing to remove (a locally bilinear image, e.g. flat): h = 0 would copy it anyway
        return x
    return denoise_nl_means(x, h=NLM_H_PER_SIGMA * sigma, sigma=sigma, patch_size=NLM_PATCH_SIZE,
                            patch_distance=NLM_PATCH_DISTANCE, fast_mode=True, channel_axis=-1)


def fitted_baselines(data: BenchmarkData) -> dict:
    """Colour transfers fitted to the unpaired training sets, no network: the per-channel mean/std transfer of
    :func:`wespe.color_map.moment_transfer` from the source set's colours to the target set's (the pools
    wespe_plus builds), applied to every pixel (``moment_transfer``) or, as wespe_plus's colour path does, to a
    Gaussian base layer with the detail passed through (``moment_transfer_base``: exactly wespe_plus's
    generator before its first training step with ``color_init="moments"``); ``bandpass_transfer_base`` is the
    same with ``wespe.color_map.fitted_colour_map``'s ``bandpass`` estimator (wespe_plus's colour start,
    :data:`COLOUR_START`), and ``bandpass_transfer_base_nlm`` that colour start followed by the classical
    denoiser :func:`nlm_denoise` (sigma estimated on the colour-fitted photo, whose colour map scales the noise).
    They show what the trained networks add to the colour fit, and to a colour fit plus a denoiser."""
    from wespe import color_map
    from wespe.training import color_pool

    pools = color_pool.build_color_pools(data.source, data.target, band=True)
    matrix, bias = color_map.fitted_colour_map(pools, "moments")
    bandpass_transfer_base = base_colour_path(*color_map.fitted_colour_map(pools, "bandpass"))

    def moment_transfer(x):
        return np.asarray(x, np.float64) @ matrix.T.astype(np.float64) + bias

    return {"moment_transfer": moment_transfer, "moment_transfer_base": base_colour_path(matrix, bias),
            "bandpass_transfer_base": bandpass_transfer_base,
            "bandpass_transfer_base_nlm": lambda x: nlm_denoise(bandpass_transfer_base(x))}


def base_colour_path(matrix: np.ndarray, bias: np.ndarray):
    """wespe_plus's colour path with the colour map ``matrix @ x + bias`` ((3, 3), (3,)): the map applied to a
    Gaussian base layer, the detail passed through (the generator's ``global_color="base_affine"`` with no
    network), as a function of a float RGB image."""
    import jax.numpy as jnp
    from flax import nnx

    from wespe.models import Generator
    colour_path = Generator(width=1, num_blocks=0, output="residual", global_color="base_affine", rngs=nnx.Rngs(0))
    colour_path.color_matrix[...] = jnp.asarray(matrix, jnp.float32)
    colour_path.color_bias[...] = jnp.asarray(bias, jnp.float32)
    return lambda x: np.asarray(colour_path.color(jnp.asarray(x, jnp.float32)[None]))[0]


# Rows that read each test photo's true camera (camera_params.json): not methods (nothing can know these), bounds
# that split the gap between the colour start and the clean photo into its parts.
ORACLE_NAMES = ("oracle_nlm", "oracle_set_colour", "oracle_photo_colour", "oracle_photo_colour_nlm")


def oracle_baselines(camera: dict, ranges: dict, colour_start) -> dict:
    """The :data:`ORACLE_NAMES` for one test photo degraded by ``camera`` (its
    :func:`wespe.training.synthetic_camera.draw_camera`
    draw) from the family ``ranges``, each reading something of ``camera`` that no unpaired fit can know:

    * ``oracle_nlm``: ``colour_start`` (the fitted :data:`COLOUR_START`), then :func:`nlm_denoise` at the
      camera's own noise level instead of the level estimated from the photo: what a well-set denoiser adds to
      the colour start;

    and the same colour path as :data:`COLOUR_START` (:func:`base_colour_path`) with a true colour map:

    * ``oracle_set_colour``: the exact inverse of the family's centre camera
    (:func:`wespe.training.synthetic_camera.centre_camera`):
      the one set-level map a fit to many photos of the family would approach. Its gap to
      :data:`COLOUR_START` is the error of estimating the set-level colour from the training sets;
    * ``oracle_photo_colour``: the exact inverse of this photo's own colour steps: a per-photo colour correction;
      the gap from the row above is what per-photo colour adds;
    * ``oracle_photo_colour_nlm``: that, then :func:`nlm_denoise` at the camera's own noise level (not
      estimated): what a denoiser adds once the colour is right.
    """
    from wespe.training import synthetic_camera as camera_model
    set_colour = base_colour_path(*camera_model.colour_inverse(camera_model.centre_camera(ranges)))
    photo_colour = base_colour_path(*camera_model.colour_inverse(camera))
    sigma = float(camera["noise_sigma"])
    return {"oracle_nlm": lambda x: nlm_denoise(colour_start(x), sigma=sigma),
            "oracle_set_colour": set_colour, "oracle_photo_colour": photo_colour,
            "oracle_photo_colour_nlm": lambda x: nlm_denoise(photo_colour(x), sigma=sigma)}


def apply_uint8(method, image: np.ndarray) -> np.ndarray:
    """A float-in-[0, 1] method applied to a uint8 RGB photo; the result quantised as ``round(clip(y) * 255)``."""
    y = method(np.asarray(image, np.float64) / 255.0)
    return np.round(np.clip(y, 0, 1) * 255).astype(np.uint8)

