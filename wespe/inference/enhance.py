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
  pointwise ops, so an output pixel depends on the input only within the summed kernel radii: 4 (conv_in 9x9)
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

  - ``staged`` (the default): :mod:`wespe.inference.staged_tiling` runs the network stage by stage (norm to norm) over
    tiles and keeps the two width-channel activations between stages in host memory (512 bytes per pixel at
    width 64), so every conv is computed once and each stage's tiles need only that stage's 1-6 px halo: about
    one forward pass of work plus copies. On a CPU whose budget does not hold the buffers beside the tiles, one
    or both go to an unlinked temporary file (``$TMPDIR``), read and written with pread/pwrite (the page
    cache holds them, not the process: 12 MP in 67 s at 4.7 GB peak RSS on 2 cores).
  - ``streamed``: nothing but tiles in memory. For norm ``k`` (in network order) every tile is run up to the
    pre-norm activation of norm ``k`` (with the already-known statistics of norms ``0..k-1``, with a halo of
    just the receptive field up to that conv), and a final pass produces the output: ``number of instance-norm
    layers + 1`` passes, each recomputing the network up to its norm, about 4.6x one forward pass at width 64
    times the halo overhead ``(tile + 2 * halo)^2 / tile^2`` (1.3x for 256-pixel tiles).

One jit compilation per pass or stage (all tiles share one shape; compiled functions are cached across calls
for the same architecture). ``norm='batch'`` (running averages at inference, i.e. a fixed per-pixel affine map)
and ``norm='none'`` need no statistics: a single tiled pass.

Memory and devices
------------------
The memory budget per device is ``memory_budget_mb`` if given, else the ``WESPE_ENHANCE_MEMORY_MB`` environment
variable, else what the machine has free (:mod:`wespe.inference.device_memory`: half the host's available memory on a
CPU, cgroup limits respected; 80% of an accelerator's free memory), else 1024 MiB when the machine says
nothing. What a whole image needs is not guessed: the whole-image program is compiled for the photo's size and
XLA's memory analysis of it (temporaries + output + input) is compared with the budget; an image that fits runs
in that one pass (a batch of same-size images in chunks of as many as fit), and only one that does not is
tiled, with tiles sized by the bytes per pixel that analysis measured. Tiles are batched and every batch is
sharded over ``devices`` (default ``jax.devices()``) along a 1-D mesh; the host prepares the next batch while
the devices compute.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import tempfile
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wespe.errors import UserError
from wespe.inference import device_memory, staged_tiling
from wespe.inference.staged_tiling import even_tiles
from wespe.inference.streamed_tiling import StreamedTiler, instance_norm_indices, receptive_halo
from wespe.models import inference_view

__all__ = ["DEFAULT_MEMORY_BUDGET_MB", "MEMORY_BUDGET_ENV", "TILINGS", "choose_tile", "enhance", "whole_image_bytes"]

MEMORY_BUDGET_ENV = "WESPE_ENHANCE_MEMORY_MB"
TILINGS = ("auto", "staged", "streamed")
DEFAULT_MEMORY_BUDGET_MB = 1024.0
# Live activations per pixel ~ this many width-channel float32 maps (block input, conv output, normalised map,
# XLA temporaries / conv workspace). A rough, deliberately generous estimate.
_ACTIVATION_FACTOR = 8


# ----------------------------------------------------------------------------------------------------------------
# The whole-image pass (cached by jax on the static graphdef and compute dtype)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _whole_image(graphdef, state, x, compute_dtype="float32"):
    return nnx.merge(graphdef, state)(x.astype(compute_dtype)).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------------------
# Input checks and sizing


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


def _estimated_bytes_per_pixel(generator: nnx.Module) -> int:
    """A generous estimate, used only where XLA gives no memory analysis."""
    width = generator.conv_in.kernel.shape[-1]
    channels = generator.conv_in.kernel.shape[-2]
    return 4 * (max(width, channels) * _ACTIVATION_FACTOR + 2 * channels)


def budget_bytes(memory_budget_mb: float | None, device: jax.Device) -> float:
    """The per-device budget (module docstring: argument, environment, machine, constant)."""
    if memory_budget_mb is None and os.environ.get(MEMORY_BUDGET_ENV):
        try:
            memory_budget_mb = float(os.environ[MEMORY_BUDGET_ENV])
        except ValueError:
            raise UserError(f"${MEMORY_BUDGET_ENV}={os.environ[MEMORY_BUDGET_ENV]!r} is not a number of MiB") from None
    if memory_budget_mb is None:
        machine = device_memory.budget_bytes(device)
        if machine:  # None: the machine says nothing; 0 (a full cgroup) is no budget to run in either
            return float(machine)
        memory_budget_mb = DEFAULT_MEMORY_BUDGET_MB
    if not memory_budget_mb > 0:
        raise UserError(f"memory_budget_mb must be > 0, got {memory_budget_mb}")
    return memory_budget_mb * 2 ** 20


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
        return compiled, math.prod(shape[:3]) * _estimated_bytes_per_pixel(generator)
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


def choose_tile(height: int, width: int, halo: int, budget_bytes: float, bytes_per_pixel: int) -> tuple[int, int]:
    """Largest tile (th, tw), at most the image, whose (th + 2 halo) x (tw + 2 halo) window fits the budget.

    A side clipped to the image gives the other side the freed area (long thin images get long tiles)."""
    area = max(budget_bytes / bytes_per_pixel, 1.0)
    side = max(int(math.isqrt(int(area))) - 2 * halo, 1)
    th, tw = min(side, height), min(side, width)
    if tw == width and th < height:
        th = min(height, max(int(area // (tw + 2 * halo)) - 2 * halo, th))
    elif th == height and tw < width:
        tw = min(width, max(int(area // (th + 2 * halo)) - 2 * halo, tw))
    return th, tw


def _tile_shape(tile, height: int, width: int) -> tuple[int, int]:
    if isinstance(tile, (int, np.integer)) and not isinstance(tile, bool):
        th = tw = int(tile)
    elif isinstance(tile, Sequence) and len(tile) == 2 and all(isinstance(t, (int, np.integer)) for t in tile):
        th, tw = (int(t) for t in tile)
    else:
        raise UserError(f"tile must be an int or a (height, width) pair of ints, got {tile!r}")
    if th < 1 or tw < 1:
        raise UserError(f"tile sides must be >= 1, got {tile!r}")
    return min(th, height), min(tw, width)


# ----------------------------------------------------------------------------------------------------------------
# The tiled drivers


def _staged(generator, images, tile, budget: float, devices, compute_dtype, *, forced: bool
            ) -> np.ndarray | None:
    """The staged tiler's output, or None where the streamed tiler should run instead (``forced``: never).

    Tiles: ``tile``, else windows of at most ``STAGED_BATCH_PIXELS`` (12 MP on 2 cores: 500-px tiles ran in
    60 s at 10.5 GB peak, 1000-px ones in 77 s at 15.4 GB). On a CPU the two activation buffers and the tiles
    share the budget; buffers that do not fit are spilled to a temporary file (``StagedTiler(spill=...)``):
    first ``A``, then ``H`` as well, as long as the temporary folder has room for them (else the streamed
    tiler, which needs no buffers). On an accelerator the buffers live in host memory beside it.
    """
    _, h, w, _ = images.shape
    halo = staged_tiling.max_halo(generator)
    per_pixel = staged_tiling.window_pixel_bytes(generator)
    window_budget = min(budget, staged_tiling.STAGED_BATCH_PIXELS * per_pixel)
    core = even_tiles(choose_tile(h, w, halo, window_budget, per_pixel) if tile is None
                      else _tile_shape(tile, h, w), h, w)
    window_bytes = staged_tiling.window_bytes(generator, core)
    buffers = staged_tiling.host_bytes(generator, images.shape, core)
    spill: tuple[str, ...] = ()
    if devices[0].platform == "cpu":
        half = buffers / 2  # H and A are the same size
        for spill in ((), ("A",), ("H", "A")):
            if budget - half * (2 - len(spill)) >= max(window_bytes, budget / 4):
                break
        if spill and shutil.disk_usage(tempfile.gettempdir()).free < 1.1 * half * len(spill) and not forced:
            return None
        budget = max(budget - half * (2 - len(spill)), window_bytes)
    elif not forced:
        host = device_memory.host_available()
        if host is not None and buffers > device_memory.CPU_FRACTION * host:
            return None
    batch_per_device = max(1, int(budget // window_bytes))
    tiler = staged_tiling.StagedTiler(generator, images, core, batch_per_device, devices, compute_dtype, spill=spill)
    return tiler.output()


def enhance(generator: nnx.Module, image, *, tile: int | tuple[int, int] | None = None,
            memory_budget_mb: float | None = None, devices: Sequence[jax.Device] | None = None,
            compute_dtype: str = "float32", tiling: str = "auto") -> np.ndarray:
    """Run the generator on an H x W x 3 (or N x H x W x 3) image in [0, 1]; float32 output, same shape, unclipped.

    uint8 (and uint16) input is scaled to [0, 1]. ``tile``: largest side (or (height, width)) of the tiles' cores
    (evened out so that edge tiles do not run far past the image: :func:`even_tiles`);
    default: one whole-image pass when the image fits ``memory_budget_mb`` (MiB per device; default the
    ``WESPE_ENHANCE_MEMORY_MB`` environment variable, else what the machine has free: see the module docstring),
    else the largest tile that fits. Tiled inference
    is exact (equal to the whole-image pass up to float32 rounding) for any image and tile size; see the module
    docstring. ``devices``: where tiles run (default ``jax.devices()``); batches of tiles are sharded over them.
    BatchNorm generators run on their running averages. ``compute_dtype``: dtype of activations and convs
    (``bfloat16`` halves activation memory on accelerators; parameters and norm statistics stay float32).
    ``tiling`` (when tiles are used): ``staged`` runs the network stage by stage with its activations in host
    memory, about one forward pass of work (:mod:`wespe.inference.staged_tiling`); ``streamed`` keeps nothing but tiles
    and recomputes the network once per instance norm; ``auto`` (default) is ``staged``, its buffers in host
    memory when they fit the budget beside the tiles, else (on a CPU) spilled to a temporary file, and
    ``streamed`` only when the temporary folder has no room for them either. All are exact.
    """
    if tiling not in TILINGS:
        raise UserError(f"enhance tiling must be one of {TILINGS}, got {tiling!r}")
    if compute_dtype not in ("float32", "bfloat16"):
        raise UserError(f"enhance compute_dtype must be 'float32' or 'bfloat16', got {compute_dtype!r}")
    images, single = _as_float_images(image)
    channels = generator.conv_in.kernel.shape[-2]
    if images.shape[-1] != channels:
        raise UserError(f"enhance expects {channels}-channel images (last axis), got shape {np.shape(image)}")
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise UserError("enhance needs at least one device")
    generator = inference_view(generator)
    stats_norms = instance_norm_indices(generator)
    budget = budget_bytes(memory_budget_mb, devices[0])
    n, h, w, c = images.shape

    if tile is None:
        graphdef, state = nnx.split(generator)
        state = jax.device_put(state, devices[0])
        compiled, one_image = _compile_whole_image(generator, graphdef, state, (1, h, w, c), compute_dtype, devices[0])
        bpp = one_image / (h * w)
        if one_image <= budget:
            # Whole images, as many per call as fit: the plain generator call, no tiling needed.
            chunk = max(1, int(budget // one_image))
            outputs = []
            for i in range(0, n, chunk):
                batch = jax.device_put(images[i:i + chunk], devices[0])
                if batch.shape[0] == 1:
                    outputs.append(np.asarray(compiled(state, batch)))
                else:
                    outputs.append(np.asarray(_whole_image(graphdef, state, batch, compute_dtype)))
            out = np.concatenate(outputs)
            return out[0] if single else out
    else:
        bpp = _estimated_bytes_per_pixel(generator)

    staged = bool(stats_norms) and staged_tiling.supports(generator) and tiling != "streamed"
    if staged:
        out = _staged(generator, images, tile, budget, devices, compute_dtype, forced=tiling == "staged")
        if out is not None:
            return out[0] if single else out
    halo = receptive_halo(generator)
    core = even_tiles(choose_tile(h, w, halo, budget, bpp) if tile is None else _tile_shape(tile, h, w), h, w)
    window_bytes = (core[0] + 2 * halo) * (core[1] + 2 * halo) * bpp
    batch_per_device = max(1, int(budget // window_bytes))
    tiler = StreamedTiler(generator, images, core, batch_per_device, devices, compute_dtype)
    for k in stats_norms:
        tiler.statistics(k)
    out = tiler.output()
    return out[0] if single else out
