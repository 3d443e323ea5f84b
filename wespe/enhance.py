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

  - ``staged`` (the default): :mod:`wespe.staged_tiling` runs the network stage by stage (norm to norm) over
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
variable, else what the machine has free (:mod:`wespe.device_memory`: half the host's available memory on a
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
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wespe import device_memory, staged_tiling
from wespe.errors import UserError
from wespe.staged_tiling import MAX_TILES_PER_BATCH, conv_radius, even_tiles, tiles_per_batch
from wespe.models import BASE_TAPS, InstanceNorm

__all__ = [
    "DEFAULT_MEMORY_BUDGET_MB", "MEMORY_BUDGET_ENV", "choose_tile", "enhance", "inference_view",
    "even_tiles", "instance_norm_indices", "norm_layers", "receptive_halo", "tile_forward", "whole_image_bytes",
]

MEMORY_BUDGET_ENV = "WESPE_ENHANCE_MEMORY_MB"
TILINGS = ("auto", "staged", "streamed")
DEFAULT_MEMORY_BUDGET_MB = 1024.0
# Live activations per pixel ~ this many width-channel float32 maps (block input, conv output, normalised map,
# XLA temporaries / conv workspace). A rough, deliberately generous estimate.
_ACTIVATION_FACTOR = 8


# ----------------------------------------------------------------------------------------------------------------
# Network structure


def norm_layers(generator: nnx.Module) -> list[nnx.Module | None]:
    """The generator's norm slots in network order: block 0 norm1, norm2, block 1 norm1, ... (None: no norm)."""
    return [norm for block in generator.blocks for norm in (block.norm1, block.norm2)]


def instance_norm_indices(generator: nnx.Module) -> list[int]:
    """Indices (into ``norm_layers``) of the norms that need whole-image statistics (InstanceNorm)."""
    indices = []
    for k, norm in enumerate(norm_layers(generator)):
        if isinstance(norm, InstanceNorm):
            indices.append(k)
        elif norm is not None and not isinstance(norm, nnx.BatchNorm):
            raise TypeError(f"tiled inference does not know the norm layer {type(norm).__name__}")
    return indices


def receptive_halo(generator: nnx.Module, stop_at: int | None = None) -> int:
    """Pixels of context each side an output pixel needs: of the final output, or of the pre-norm activation
    of norm ``stop_at`` (index into ``norm_layers``). ``10 + 2 * num_blocks`` for the DPED generator."""
    halo = conv_radius(generator.conv_in)
    for b, block in enumerate(generator.blocks):
        for j, conv in enumerate((block.conv1, block.conv2)):
            halo += conv_radius(conv)
            if stop_at == 2 * b + j:
                return halo
    if stop_at is not None:
        raise UserError(f"stop_at={stop_at} is not a norm index (the generator has {2 * len(generator.blocks)})")
    halo += conv_radius(generator.conv_mid1) + conv_radius(generator.conv_mid2) + conv_radius(generator.conv_out)
    if getattr(generator, "global_color", "none") == "base_affine":  # the colour path's base-layer blur
        halo = max(halo, BASE_TAPS // 2)
    return halo


def inference_view(generator: nnx.Module) -> nnx.Module:
    """The generator as used for inference: BatchNorm layers on their running averages (a no-op otherwise)."""
    if any(isinstance(n, nnx.BatchNorm) for n in norm_layers(generator)):
        return nnx.view(generator, only=nnx.BatchNorm, use_running_average=True)
    return generator


def tile_forward(generator: nnx.Module, x: jax.Array, mask: jax.Array, means: Sequence[jax.Array | None],
                 variances: Sequence[jax.Array | None], stop_at: int | None = None) -> jax.Array:
    """``Generator.__call__`` on a window of the image, with given instance-norm statistics.

    ``x``: (B, h, w, C) window, zero outside the true image; ``mask``: (B, h, w, 1) bool, True inside the image.
    Activations outside the image are reset to zero before every conv, so convs see the whole image's SAME zero
    padding. ``means[k]``, ``variances[k]``: (B, 1, 1, width) statistics for InstanceNorm slot ``k`` of
    ``norm_layers`` (ignored for other norms; BatchNorm must be on running averages). ``stop_at=k`` returns the
    pre-norm activation of norm ``k`` (the conv output) instead of the image.
    """
    def keep(h):
        return jnp.where(mask, h, jnp.zeros((), h.dtype))

    def norm(module, h, k):
        if module is None:
            return h
        if isinstance(module, InstanceNorm):
            return module.normalize(h, means[k], variances[k])
        return module(h)  # BatchNorm on running averages: a per-pixel affine map

    h = keep(jax.nn.relu(generator.conv_in(x)))
    for b, block in enumerate(generator.blocks):
        t = block.conv1(h)
        if stop_at == 2 * b:
            return t
        t = keep(jax.nn.relu(norm(block.norm1, t, 2 * b)))
        t = block.conv2(t)
        if stop_at == 2 * b + 1:
            return t
        t = jax.nn.relu(norm(block.norm2, t, 2 * b + 1))
        h = keep(t + h)
    h = keep(jax.nn.relu(generator.conv_mid1(h)))
    h = keep(jax.nn.relu(generator.conv_mid2(h)))
    return generator.output_map(x, h, mask)


# ----------------------------------------------------------------------------------------------------------------
# Jitted passes (cached by jax on the static graphdef, pass, halo and tile shape)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _whole_image(graphdef, state, x, compute_dtype="float32"):
    return nnx.merge(graphdef, state)(x.astype(compute_dtype)).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("graphdef", "stop_at", "halo", "core", "compute_dtype"))
def _tile_pass(state, windows, sample_index, origins, image_hw, means, variances, *, graphdef, stop_at, halo,
               core, compute_dtype="float32"):
    """One batch of tiles. ``origins``: (B, 2) top-left image coordinates of each tile's core; ``means`` /
    ``variances``: (N, K, width) per-sample statistics of every norm slot. Returns the cores' outputs
    (B, th, tw, C), or for a stats pass per-tile (count (B,), mean (B, width), M2 (B, width)) over the core
    pixels inside the image."""
    generator = nnx.merge(graphdef, state)
    th, tw = core
    _, wh, ww, _ = windows.shape
    rows = origins[:, 0:1] - halo + jnp.arange(wh)
    cols = origins[:, 1:2] - halo + jnp.arange(ww)
    rows_in = (rows >= 0) & (rows < image_hw[0])
    cols_in = (cols >= 0) & (cols < image_hw[1])
    mask = rows_in[:, :, None, None] & cols_in[:, None, :, None]
    m, v = means[sample_index], variances[sample_index]
    num_norms = means.shape[1]
    out = tile_forward(generator, windows.astype(compute_dtype), mask, [m[:, k, None, None, :] for k in range(num_norms)],
                       [v[:, k, None, None, :] for k in range(num_norms)], stop_at)
    out = out[:, halo:halo + th, halo:halo + tw].astype(jnp.float32)
    if stop_at is None:
        return out
    w = mask[:, halo:halo + th, halo:halo + tw].astype(jnp.float32)
    count = jnp.sum(w, axis=(1, 2, 3))
    mean = jnp.sum(out * w, axis=(1, 2)) / jnp.maximum(count, 1.0)[:, None]
    m2 = jnp.sum(jnp.square(out - mean[:, None, None, :]) * w, axis=(1, 2))
    return count, mean, m2


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


def _budget_bytes(memory_budget_mb: float | None, device: jax.Device) -> float:
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


def _compile_whole_image(generator: nnx.Module, graphdef, state, shape: tuple[int, ...], dtype: str,
                         device: jax.Device):
    """The whole-image program for ``shape`` (N, H, W, C), compiled for ``device``, and the bytes it needs beyond
    the parameters: XLA's memory analysis (temporaries + output + input), or a generous per-pixel estimate
    where the backend gives none."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=jax.sharding.SingleDeviceSharding(device))
    compiled = _whole_image.lower(graphdef, state, x, dtype).compile()
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - backends without an analysis raise their own error types
        m = None
    if m is None:
        return compiled, math.prod(shape[:3]) * _estimated_bytes_per_pixel(generator)
    return compiled, int(m.temp_size_in_bytes + m.output_size_in_bytes + math.prod(shape) * 4)


def whole_image_bytes(generator: nnx.Module, shape: tuple[int, ...], dtype: str = "float32",
                      device: jax.Device | None = None) -> int:
    """Bytes one whole-image pass over images of ``shape`` (N, H, W, C) needs on ``device`` beyond the
    generator's parameters (see :func:`_compile_whole_image`). :func:`enhance` compares this with its budget."""
    device = device or jax.devices()[0]
    generator = inference_view(generator)
    graphdef, state = nnx.split(generator)
    return _compile_whole_image(generator, graphdef, jax.device_put(state, device), tuple(shape), dtype, device)[1]


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
# The tiled driver


class _Tiler:
    """Tiles of an (N, H, W, C) image batch, batched and sharded over devices."""

    def __init__(self, generator, images, core, batch_per_device, devices, compute_dtype="float32"):
        self.generator = generator
        self.compute_dtype = compute_dtype
        self.graphdef, state = nnx.split(generator)
        self.n, self.h, self.w, self.c = images.shape
        self.core = core
        th, tw = core
        self.max_halo = receptive_halo(generator)
        ny, nx = -(-self.h // th), -(-self.w // tw)
        hp = self.max_halo
        self.padded = np.pad(images, ((0, 0), (hp, hp + ny * th - self.h), (hp, hp + nx * tw - self.w), (0, 0)))
        s, iy, ix = np.meshgrid(np.arange(self.n), np.arange(ny), np.arange(nx), indexing="ij")
        self.sample = s.reshape(-1).astype(np.int32)
        self.origins = np.stack([iy.reshape(-1) * th, ix.reshape(-1) * tw], axis=1).astype(np.int32)
        ndev = len(devices)
        self.batch = tiles_per_batch(len(self.sample), max(1, min(batch_per_device, MAX_TILES_PER_BATCH // ndev))
                                     * ndev, ndev)
        mesh = Mesh(np.asarray(devices), ("tiles",))
        self.sharded = NamedSharding(mesh, PartitionSpec("tiles"))
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.state = jax.device_put(state, self.replicated)
        self.image_hw = jax.device_put(np.array([self.h, self.w], np.int32), self.replicated)
        width = generator.conv_in.kernel.shape[-1]
        num_norms = len(norm_layers(generator))
        self.means = np.zeros((self.n, num_norms, width), np.float32)
        self.variances = np.ones((self.n, num_norms, width), np.float32)

    def _batches(self, halo: int) -> Iterator[tuple[int, int, tuple]]:
        th, tw = self.core
        wh, ww = th + 2 * halo, tw + 2 * halo
        windows_view = np.lib.stride_tricks.sliding_window_view(self.padded, (wh, ww), axis=(1, 2))
        shift = self.max_halo - halo
        total = len(self.sample)
        for start in range(0, total, self.batch):
            idx = np.arange(start, start + self.batch)
            idx = np.minimum(idx, total - 1)  # pad the last batch with repeats of the last tile (ignored)
            s, o = self.sample[idx], self.origins[idx]
            windows = windows_view[s, o[:, 0] + shift, o[:, 1] + shift]  # (B, C, wh, ww)
            windows = np.ascontiguousarray(np.moveaxis(windows, 1, -1))
            args = tuple(jax.device_put(a, self.sharded) for a in (windows, s, o))
            yield start, min(self.batch, total - start), args

    def run(self, stop_at: int | None, consume) -> None:
        """Run every tile through one pass; ``consume(start, count, result)`` gets host arrays, one batch behind
        the device so that batch assembly overlaps device compute."""
        halo = receptive_halo(self.generator, stop_at)
        means = jax.device_put(self.means, self.replicated)
        variances = jax.device_put(self.variances, self.replicated)
        pending = None
        for start, count, (windows, s, o) in self._batches(halo):
            result = _tile_pass(self.state, windows, s, o, self.image_hw, means, variances,
                                graphdef=self.graphdef, stop_at=stop_at, halo=halo, core=self.core,
                                compute_dtype=self.compute_dtype)
            if pending is not None:
                consume(*pending)
            pending = (start, count, result)
        if pending is not None:
            consume(*pending)

    def statistics(self, k: int) -> None:
        """Whole-image mean / biased variance of norm ``k``'s input, per sample, into self.means / variances."""
        moments = staged_tiling.RunningMoments(self.n, self.means.shape[-1])

        def consume(start, count, result):
            moments.add(self.sample[start:start + count], *(np.asarray(r)[:count] for r in result))

        self.run(k, consume)
        self.means[:, k] = moments.mean
        self.variances[:, k] = moments.variance

    def output(self) -> np.ndarray:
        th, tw = self.core
        out = np.empty((self.n, self.h, self.w, self.c), np.float32)

        def consume(start, count, result):
            result = np.asarray(result)
            for i in range(count):
                s, (y, x) = self.sample[start + i], self.origins[start + i]
                ye, xe = min(y + th, self.h), min(x + tw, self.w)
                out[s, y:ye, x:xe] = result[i, :ye - y, :xe - x]

        self.run(None, consume)
        return out


def _staged(generator, images, tile, budget: float, devices, dtype, *, forced: bool
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
    return staged_tiling.StagedTiler(generator, images, core, batch_per_device, devices, dtype, spill=spill).output()


def enhance(generator: nnx.Module, image, *, tile: int | tuple[int, int] | None = None,
            memory_budget_mb: float | None = None, devices: Sequence[jax.Device] | None = None,
            dtype: str = "float32", tiling: str = "auto") -> np.ndarray:
    """Run the generator on an H x W x 3 (or N x H x W x 3) image in [0, 1]; float32 output, same shape, unclipped.

    uint8 (and uint16) input is scaled to [0, 1]. ``tile``: largest side (or (height, width)) of the tiles' cores
    (evened out so that edge tiles do not run far past the image: :func:`even_tiles`);
    default: one whole-image pass when the image fits ``memory_budget_mb`` (MiB per device; default the
    ``WESPE_ENHANCE_MEMORY_MB`` environment variable, else what the machine has free: see the module docstring),
    else the largest tile that fits. Tiled inference
    is exact (equal to the whole-image pass up to float32 rounding) for any image and tile size; see the module
    docstring. ``devices``: where tiles run (default ``jax.devices()``); batches of tiles are sharded over them.
    BatchNorm generators run on their running averages. ``dtype``: compute dtype of activations and convs
    (``bfloat16`` halves activation memory on accelerators; parameters and norm statistics stay float32).
    ``tiling`` (when tiles are used): ``staged`` runs the network stage by stage with its activations in host
    memory, about one forward pass of work (:mod:`wespe.staged_tiling`); ``streamed`` keeps nothing but tiles
    and recomputes the network once per instance norm; ``auto`` (default) is ``staged``, its buffers in host
    memory when they fit the budget beside the tiles, else (on a CPU) spilled to a temporary file, and
    ``streamed`` only when the temporary folder has no room for them either. All are exact.
    """
    if tiling not in TILINGS:
        raise UserError(f"enhance tiling must be one of {TILINGS}, got {tiling!r}")
    if dtype not in ("float32", "bfloat16"):
        raise UserError(f"enhance dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    images, single = _as_float_images(image)
    channels = generator.conv_in.kernel.shape[-2]
    if images.shape[-1] != channels:
        raise UserError(f"enhance expects {channels}-channel images (last axis), got shape {np.shape(image)}")
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise UserError("enhance needs at least one device")
    generator = inference_view(generator)
    stats_norms = instance_norm_indices(generator)
    budget = _budget_bytes(memory_budget_mb, devices[0])
    n, h, w, c = images.shape

    if tile is None:
        graphdef, state = nnx.split(generator)
        state = jax.device_put(state, devices[0])
        compiled, one_image = _compile_whole_image(generator, graphdef, state, (1, h, w, c), dtype, devices[0])
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
                    outputs.append(np.asarray(_whole_image(graphdef, state, batch, dtype)))
            out = np.concatenate(outputs)
            return out[0] if single else out
    else:
        bpp = _estimated_bytes_per_pixel(generator)

    staged = bool(stats_norms) and staged_tiling.supports(generator) and tiling != "streamed"
    if staged:
        out = _staged(generator, images, tile, budget, devices, dtype, forced=tiling == "staged")
        if out is not None:
            return out[0] if single else out
    halo = receptive_halo(generator)
    core = even_tiles(choose_tile(h, w, halo, budget, bpp) if tile is None else _tile_shape(tile, h, w), h, w)
    window_bytes = (core[0] + 2 * halo) * (core[1] + 2 * halo) * bpp
    batch_per_device = max(1, int(budget // window_bytes))
    tiler = _Tiler(generator, images, core, batch_per_device, devices, dtype)
    for k in stats_norms:
        tiler.statistics(k)
    out = tiler.output()
    return out[0] if single else out
