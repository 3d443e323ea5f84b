"""Whole-image inference with the DPED generator at any resolution: one pass, or exact tiled passes.

``enhance(generator, image)`` runs the generator on an H x W x 3 (or N x H x W x 3) image in [0, 1]. When the
image fits the memory budget it is a single jitted call of the generator. Otherwise (or when ``tile`` is given)
the image is processed in tiles, and the result still equals whole-image inference to float32 rounding.

Why tiling needs care
---------------------
With ``norm='instance'`` every residual block normalises its conv outputs with the per-channel mean and
variance over the *whole image*, so each output pixel depends on every input pixel. Running the generator on
crops (even with generous overlap) normalises each crop with its own statistics: seams and colour shifts.

The exact method
----------------
* Receptive-field halo. Apart from the norms, the network is a stack of stride-1 SAME convolutions and
  pointwise ops, so an output pixel depends on the input only within the summed kernel radii
  (:func:`wespe.inference.tiles.receptive_halo`, from :meth:`wespe.models.Generator.stages`): 4 (conv_in 9x9)
  + 1 per 3x3 conv (2 per block, 2 mid convs) + 4 (conv_out 9x9) = ``10 + 2 * num_blocks`` pixels (18 at the
  defaults). Each tile is a ``tile + 2 * halo`` window of the zero-padded image; all tiles of a pass have the
  same shape (edge tiles reach past the image), and after every layer whose output feeds a conv, activations
  outside the true image are reset to zero (a mask). Convolutions therefore see exactly the SAME zero padding
  of the whole image at the true border; wrong values only creep in from the window's cut edges, one kernel
  radius per conv, and never reach the tile's core. Tiles smaller than the halo and images smaller than a
  tile are handled the same way.
* Whole-image statistics. Every instance norm needs the mean and variance of its input over the whole image
  before anything after it can be computed. Each tile's core pixels inside the image are reduced on the device
  to per-channel (count, mean, M2), and these are combined across tiles on the host in float64 with Chan et
  al.'s parallel-variance formula: the whole image's biased variance, as ``InstanceNorm.statistics``.
  Two ways to get there, both exact:

  - ``staged`` (the default): :mod:`wespe.inference.staged_tiling` runs the network stage by stage (norm to
    norm, :meth:`wespe.models.Generator.stages`) over tiles and keeps the two width-channel activations between
    stages in host memory (512 bytes per pixel at width 64), so every conv is computed once and each stage's
    tiles need only that stage's 1-6 px halo: about one forward pass of work plus copies. On a CPU whose budget
    does not hold the buffers beside the tiles, one or both go to an unlinked temporary file (``$TMPDIR``), read
    and written with pread/pwrite (the page cache holds them, not the process; timings: the README's
    Benchmarks).
  - ``streamed`` (:mod:`wespe.inference.streamed_tiling`): nothing but tiles in memory. For norm ``k`` (in
    network order) every tile is run up to the pre-norm activation of norm ``k`` (with the already-known
    statistics of norms ``0..k-1``, with a halo of just the receptive field up to that conv), and a final pass
    produces the output: ``number of instance-norm layers + 1`` passes, each recomputing the network up to its
    norm, about 4.6x one forward pass at width 64 times the halo overhead ``(tile + 2 * halo)^2 / tile^2``
    (1.3x for 256-pixel tiles).

One jit compilation per pass or stage (all tiles share one shape; compiled functions are cached across calls
for the same architecture). ``norm='batch'`` (running averages at inference, i.e. a fixed per-pixel affine map)
and ``norm='none'`` need no statistics: a single tiled pass.

Memory and devices
------------------
The memory budget per device (:func:`wespe.inference.device_memory.budget_bytes`) is ``memory_budget_mb`` if
given, else the ``WESPE_ENHANCE_MEMORY_MB`` environment variable, else what the machine has free (half the host's
available memory on a CPU, cgroup limits respected; 80% of an accelerator's free memory), else 1024 MiB when the
machine says nothing. What a whole image needs is not guessed: the whole-image program is compiled for the
photo's size and XLA's memory analysis of it (temporaries + output + input) is compared with the budget; an
image that fits runs in that one pass (a batch of same-size images in chunks of as many as fit), and only one
that does not is tiled, with tiles sized by the bytes per pixel that analysis measured
(:mod:`wespe.inference.tiles`). Tiles are batched and every batch is sharded over ``devices`` (default
``jax.devices()``) along a 1-D mesh; the host prepares the next batch while the devices compute.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wespe.errors import UserError
from wespe.inference import device_memory, staged_tiling, tiles
from wespe.inference.streamed_tiling import StreamedTiler, instance_norm_indices
from wespe.models import inference_view

__all__ = ["TILINGS", "enhance", "whole_image_bytes"]

TILINGS = ("auto", "staged", "streamed")


# ----------------------------------------------------------------------------------------------------------------
# The whole-image pass (cached by jax on the static graphdef and compute dtype)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _whole_image(graphdef, state, x, compute_dtype="float32"):
    return nnx.merge(graphdef, state)(x.astype(compute_dtype)).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------------------
# Input checks


def _as_float_images(image) -> tuple[np.ndarray, bool]:
    """(N, H, W, C) float32 and whether the input was a single image."""
    arr = np.asarray(image)
    if arr.ndim not in (3, 4):
        raise UserError(f"enhance expects an H x W x 3 or N x H x W x 3 image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    else:
        raise UserError(f"enhance expects a float image in [0, 1] or uint8 / uint16, got dtype {arr.dtype}")
    single = arr.ndim == 3
    if single:
        arr = arr[None]
    if 0 in arr.shape:
        raise UserError(f"enhance got an empty image, shape {np.shape(image)}")
    if not np.all(np.isfinite(arr)):
        raise UserError("enhance got an image with NaN or infinite values")
    return arr, single


def _check_options(tiling: str, compute_dtype: str) -> None:
    if tiling not in TILINGS:
        raise UserError(f"enhance tiling must be one of {TILINGS}, got {tiling!r}")
    if compute_dtype not in ("float32", "bfloat16"):
        raise UserError(f"enhance compute_dtype must be 'float32' or 'bfloat16', got {compute_dtype!r}")


def _check_channels(generator: nnx.Module, images: np.ndarray, image) -> None:
    channels = generator.conv_in.kernel.shape[-2]
    if images.shape[-1] != channels:
        raise UserError(f"enhance expects {channels}-channel images (last axis), got shape {np.shape(image)}")


# ----------------------------------------------------------------------------------------------------------------
# Whole images


def _compile_whole_image(generator: nnx.Module, graphdef, state, shape: tuple[int, ...], compute_dtype: str,
                         device: jax.Device):
    """The whole-image program for ``shape`` (N, H, W, C), compiled for ``device``, and the bytes it needs beyond
    the parameters: XLA's memory analysis (temporaries + output + input), or a generous per-pixel estimate
    where the backend gives none."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=jax.sharding.SingleDeviceSharding(device))
    compiled = _whole_image.lower(graphdef, state, x, compute_dtype).compile()
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - backends without an analysis raise their own error types
        m = None
    if m is None:
        return compiled, math.prod(shape[:3]) * tiles.estimated_bytes_per_pixel(generator)
    return compiled, int(m.temp_size_in_bytes + m.output_size_in_bytes + math.prod(shape) * 4)


def whole_image_bytes(generator: nnx.Module, shape: tuple[int, ...], compute_dtype: str = "float32",
                      device: jax.Device | None = None) -> int:
    """Bytes one whole-image pass over images of ``shape`` (N, H, W, C) needs on ``device`` beyond the
    generator's parameters (see :func:`_compile_whole_image`). :func:`enhance` compares this with its budget."""
    device = device or jax.devices()[0]
    generator = inference_view(generator)
    graphdef, state = nnx.split(generator)
    state = jax.device_put(state, device)
    return _compile_whole_image(generator, graphdef, state, tuple(shape), compute_dtype, device)[1]


def _whole_images(generator: nnx.Module, images: np.ndarray, budget_bytes: float, device: jax.Device,
                  compute_dtype: str) -> tuple[np.ndarray | None, float]:
    """The generator on whole images, as many per call as fit ``budget_bytes`` (None where one image does not
    fit), and the bytes per pixel that XLA's analysis of the one-image program measured (to size tiles)."""
    n, h, w, c = images.shape
    graphdef, state = nnx.split(generator)
    state = jax.device_put(state, device)
    compiled, one_image = _compile_whole_image(generator, graphdef, state, (1, h, w, c), compute_dtype, device)
    bytes_per_pixel = one_image / (h * w)
    if one_image > budget_bytes:
        return None, bytes_per_pixel
    chunk = max(1, int(budget_bytes // one_image))
    outputs = []
    for i in range(0, n, chunk):
        batch = jax.device_put(images[i:i + chunk], device)
        if batch.shape[0] == 1:
            outputs.append(np.asarray(compiled(state, batch)))
        else:
            outputs.append(np.asarray(_whole_image(graphdef, state, batch, compute_dtype)))
    return np.concatenate(outputs), bytes_per_pixel


# ----------------------------------------------------------------------------------------------------------------
# Tiles


def _tiled(generator: nnx.Module, images: np.ndarray, tile, budget_bytes: float, bytes_per_pixel: float,
           devices: Sequence[jax.Device], compute_dtype: str, tiling: str, instance_norms: Sequence[int]
           ) -> np.ndarray:
    """Exact tiled inference: the staged tiler where it applies and its plan fits (:func:`tiles.staged_plan`),
    else the streamed one."""
    if instance_norms and staged_tiling.supports(generator) and tiling != "streamed":
        plan = tiles.staged_plan(generator, images.shape, tile, budget_bytes, devices[0].platform,
                                 forced=tiling == "staged")
        if plan is not None:
            return staged_tiling.StagedTiler(generator, images, plan.core, plan.tiles_per_device, devices,
                                             compute_dtype, spill=plan.spill).output()
    plan = tiles.streamed_plan(generator, images.shape, tile, budget_bytes, bytes_per_pixel)
    tiler = StreamedTiler(generator, images, plan.core, plan.tiles_per_device, devices, compute_dtype)
    for k in instance_norms:
        tiler.statistics(k)
    return tiler.output()


def enhance(generator: nnx.Module, image, *, tile: int | tuple[int, int] | None = None,
            memory_budget_mb: float | None = None, devices: Sequence[jax.Device] | None = None,
            compute_dtype: str = "float32", tiling: str = "auto") -> np.ndarray:
    """Run the generator on an H x W x 3 (or N x H x W x 3) image in [0, 1]; float32 output, same shape, unclipped.

    uint8 (and uint16) input is scaled to [0, 1]. ``tile``: largest side (or (height, width)) of the tiles' cores
    (evened out so that edge tiles do not run far past the image: :func:`wespe.inference.tiles.even_tiles`);
    default: one whole-image pass when the image fits ``memory_budget_mb`` (MiB per device; default the
    ``WESPE_ENHANCE_MEMORY_MB`` environment variable, else what the machine has free: see the module docstring),
    else the largest tile that fits. Tiled inference
    is exact (equal to the whole-image pass up to float32 rounding) for any image and tile size; see the module
    docstring. ``devices``: where tiles run (default ``jax.devices()``); batches of tiles are sharded over them.
    BatchNorm generators run on their running averages. ``compute_dtype``: dtype of activations and convs
    (``bfloat16`` halves activation memory on accelerators; parameters and norm statistics stay float32).
    ``tiling`` (when tiles are used): ``staged`` runs the network stage by stage with its activations in host
    memory, about one forward pass of work (:mod:`wespe.inference.staged_tiling`); ``streamed`` keeps nothing but
    tiles and recomputes the network once per instance norm; ``auto`` (default) is ``staged``, its buffers in host
    memory when they fit the budget beside the tiles, else (on a CPU) spilled to a temporary file, and
    ``streamed`` only when the temporary folder has no room for them either. All are exact.
    """
    _check_options(tiling, compute_dtype)
    images, single = _as_float_images(image)
    _check_channels(generator, images, image)
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise UserError("enhance needs at least one device")
    generator = inference_view(generator)
    instance_norms = instance_norm_indices(generator)
    budget_bytes = device_memory.budget_bytes(memory_budget_mb, devices[0])
    if tile is None:
        out, bytes_per_pixel = _whole_images(generator, images, budget_bytes, devices[0], compute_dtype)
    else:
        out, bytes_per_pixel = None, tiles.estimated_bytes_per_pixel(generator)
    if out is None:
        out = _tiled(generator, images, tile, budget_bytes, bytes_per_pixel, devices, compute_dtype, tiling,
                     instance_norms)
    return out[0] if single else out
