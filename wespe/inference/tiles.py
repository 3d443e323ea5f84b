"""Tile geometry for exact tiled inference, shared by :mod:`wespe.inference.enhance` and both tilers: halos (from
the generator's stages, :meth:`wespe.models.Generator.stages`), tile cores, grids and batches, what windows and
the staged tiler's buffers cost in memory, and the plan each tiler runs within the memory budget.

``budget_bytes`` is always the whole per-device budget (:func:`wespe.inference.device_memory.budget_bytes`);
``tile_budget_bytes`` is what is left of it for the tiles once the staged tiler's buffers are held.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from collections.abc import Sequence

import numpy as np
from flax import nnx

from wespe.errors import UserError
from wespe.inference import device_memory

__all__ = ["MAX_TILES_PER_BATCH", "STAGED_BATCH_PIXELS", "TilePlan", "batch_size", "choose_tile", "even_tiles",
           "grid", "max_stage_halo", "receptive_halo", "staged_buffer_bytes", "staged_plan", "streamed_plan",
           "tile_shape", "tiles_per_batch", "window_bytes"]

MAX_TILES_PER_BATCH = 4096  # bounds host-side batch assembly for tiny tiles
# What a batch of windows costs in host memory while it runs, per window pixel and width channel: the window
# arrays (two slots), their device copies, two batches of outputs in flight and XLA's temporaries. Measured at
# 12 MP, width 64, both buffers spilled: peak RSS 2.54 GB with 250-px tiles, 4.65 GB with 500-px tiles, i.e.
# ~11 KB per window pixel (the whole-image program needs 792 B per pixel: tiles pay for being in flight).
WINDOW_BYTES_PER_PIXEL_CHANNEL = 176
# Window pixels per device per batch of the staged tiler (and, unless a tile is given, per tile): a stage holds
# ~6 KB per window pixel (windows in and out, XLA's temporaries, host copies), and bigger batches barely pay
# (the README's Benchmarks).
STAGED_BATCH_PIXELS = 2 ** 18
# Live activations per pixel ~ this many width-channel float32 maps (block input, conv output, normalised map,
# XLA temporaries / conv workspace). A rough, deliberately generous estimate.
ACTIVATION_FACTOR = 8


# ----------------------------------------------------------------------------------------------------------------
# Halos, from the generator's stages


def receptive_halo(generator: nnx.Module, stop_at: int | None = None) -> int:
    """Pixels of image context each side a pixel needs: of the final output, or of the pre-norm activation of
    norm slot ``stop_at``. The stages' radii add up; the colour path reads the image directly, within its own
    radius. ``10 + 2 * num_blocks`` for the DPED generator."""
    reach = image_reach = 0
    for stage in generator.stages():
        reach += stage.radius
        image_reach = max(image_reach, stage.image_radius)
        if stop_at is not None and stage.produces == stop_at:
            return max(reach, image_reach)
    if stop_at is not None:
        raise UserError(f"stop_at={stop_at} is not a norm slot (the generator has {generator.num_norm_slots})")
    return max(reach, image_reach)


def max_stage_halo(generator: nnx.Module) -> int:
    """The largest halo of any stage: the staged tiler's windows are at most this much larger than their cores."""
    return max(stage.halo for stage in generator.stages())


# ----------------------------------------------------------------------------------------------------------------
# Tile cores, grids and batches


def grid(height: int, width: int, core: tuple[int, int]) -> tuple[int, int]:
    """Tile rows and columns covering an image with tiles ``core``."""
    return -(-height // core[0]), -(-width // core[1])


def even_tiles(core: tuple[int, int], height: int, width: int) -> tuple[int, int]:
    """The same number of tiles as ``core`` needs, made as even as possible: 866 rows in tiles of 512 become two
    of 433, not 512 + 354 valid rows and 158 computed past the image."""
    ny, nx = grid(height, width, core)
    return -(-height // ny), -(-width // nx)


def tiles_per_batch(total: int, most: int, num_devices: int) -> int:
    """Tiles per batch: at most ``most`` (a multiple of ``num_devices``), as few batches as that allows, and
    the batches as even as possible (6 tiles with room for 8: one batch of 6, not 8 with 2 computed twice)."""
    most = max(num_devices, most // num_devices * num_devices)
    batches = -(-total // most)
    per_batch = -(-total // batches)
    return -(-per_batch // num_devices) * num_devices


def batch_size(total: int, tiles_per_device: int, num_devices: int) -> int:
    """Tiles per batch for ``total`` tiles, at most ``tiles_per_device`` per device and
    :data:`MAX_TILES_PER_BATCH` in all (:func:`tiles_per_batch`)."""
    most = max(1, min(tiles_per_device, MAX_TILES_PER_BATCH // num_devices))
    return tiles_per_batch(total, most * num_devices, num_devices)


def choose_tile(height: int, width: int, halo: int, budget_bytes: float, bytes_per_pixel: float
                ) -> tuple[int, int]:
    """Largest tile (th, tw), at most the image, whose (th + 2 halo) x (tw + 2 halo) window fits ``budget_bytes``.

    A side clipped to the image gives the other side the freed area (long thin images get long tiles)."""
    area = max(budget_bytes / bytes_per_pixel, 1.0)
    side = max(math.isqrt(int(area)) - 2 * halo, 1)
    th, tw = min(side, height), min(side, width)
    if tw == width and th < height:
        th = min(height, max(int(area // (tw + 2 * halo)) - 2 * halo, th))
    elif th == height and tw < width:
        tw = min(width, max(int(area // (th + 2 * halo)) - 2 * halo, tw))
    return th, tw


def tile_shape(tile, height: int, width: int) -> tuple[int, int]:
    """A caller's ``tile`` (an int side or a (height, width) pair), checked and clipped to the image."""
    if isinstance(tile, (int, np.integer)) and not isinstance(tile, bool):
        th = tw = int(tile)
    elif isinstance(tile, Sequence) and len(tile) == 2 and all(isinstance(t, (int, np.integer)) for t in tile):
        th, tw = (int(t) for t in tile)
    else:
        raise UserError(f"tile must be an int or a (height, width) pair of ints, got {tile!r}")
    if th < 1 or tw < 1:
        raise UserError(f"tile sides must be >= 1, got {tile!r}")
    return min(th, height), min(tw, width)


def _core(tile, height: int, width: int, halo: int, budget_bytes: float, bytes_per_pixel: float
          ) -> tuple[int, int]:
    """The tiles' core: ``tile`` if given, else the largest that fits ``budget_bytes``; evened out."""
    core = choose_tile(height, width, halo, budget_bytes, bytes_per_pixel) if tile is None \
        else tile_shape(tile, height, width)
    return even_tiles(core, height, width)


# ----------------------------------------------------------------------------------------------------------------
# Memory


def window_bytes(core: tuple[int, int], halo: int, bytes_per_pixel: float) -> float:
    """What one window of tile ``core`` costs while its batch runs."""
    return (core[0] + 2 * halo) * (core[1] + 2 * halo) * bytes_per_pixel


def _width(generator: nnx.Module) -> int:
    return generator.conv_in.kernel.shape[-1]


def estimated_bytes_per_pixel(generator: nnx.Module) -> int:
    """A generous estimate of a pass's memory per pixel, used only where XLA gives no memory analysis."""
    channels = generator.conv_in.kernel.shape[-2]
    return 4 * (max(_width(generator), channels) * ACTIVATION_FACTOR + 2 * channels)


def staged_window_pixel_bytes(generator: nnx.Module) -> int:
    """Host memory per window pixel of the staged tiler while its batch runs
    (:data:`WINDOW_BYTES_PER_PIXEL_CHANNEL`)."""
    return _width(generator) * WINDOW_BYTES_PER_PIXEL_CHANNEL


def staged_buffer_bytes(generator: nnx.Module, shape: tuple[int, ...], core: tuple[int, int]) -> int:
    """Host memory of the staged tiler's two activation buffers (``H`` and ``A``, float32) for images of
    ``shape`` (N, H, W, C) and tiles ``core``: the whole tile grid plus the largest stage halo on every side."""
    n, h, w, _ = shape
    ny, nx = grid(h, w, core)
    pad = max_stage_halo(generator)
    return 2 * n * (ny * core[0] + 2 * pad) * (nx * core[1] + 2 * pad) * _width(generator) * 4


# ----------------------------------------------------------------------------------------------------------------
# Plans


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """What a tiler runs: tiles ``core``, at most ``tiles_per_device`` per device per batch, and (staged tiler)
    the activation buffers to ``spill`` to a temporary file."""

    core: tuple[int, int]
    tiles_per_device: int
    spill: tuple[str, ...] = ()


def streamed_plan(generator: nnx.Module, shape: tuple[int, ...], tile, budget_bytes: float,
                  bytes_per_pixel: float) -> TilePlan:
    """The streamed tiler's tiles: ``tile`` or the largest whose window fits ``budget_bytes`` at
    ``bytes_per_pixel``, and as many per batch as fit."""
    _, h, w, _ = shape
    halo = receptive_halo(generator)
    core = _core(tile, h, w, halo, budget_bytes, bytes_per_pixel)
    return TilePlan(core, max(1, int(budget_bytes // window_bytes(core, halo, bytes_per_pixel))))


def staged_plan(generator: nnx.Module, shape: tuple[int, ...], tile, budget_bytes: float, platform: str, *,
                forced: bool) -> TilePlan | None:
    """The staged tiler's plan, or None where the streamed tiler should run instead (``forced``: never).

    Tiles: ``tile``, else windows of at most :data:`STAGED_BATCH_PIXELS`. On a CPU the two activation buffers
    and the tiles share ``budget_bytes``; buffers that do not fit beside the tiles are spilled to a temporary
    file, first ``A``, then ``H`` as well, as long as the temporary folder has room for them (else None: the
    streamed tiler needs no buffers). On an accelerator the buffers live in host memory beside it, and None
    where the host cannot hold them.
    """
    _, h, w, _ = shape
    halo = max_stage_halo(generator)
    pixel_bytes = staged_window_pixel_bytes(generator)
    core = _core(tile, h, w, halo, min(budget_bytes, STAGED_BATCH_PIXELS * pixel_bytes), pixel_bytes)
    one_window = window_bytes(core, halo, pixel_bytes)
    buffers = staged_buffer_bytes(generator, shape, core)
    spill: tuple[str, ...] = ()
    tile_budget_bytes = budget_bytes
    if platform == "cpu":
        half = buffers / 2  # H and A are the same size
        for spill in ((), ("A",), ("H", "A")):
            if budget_bytes - half * (2 - len(spill)) >= max(one_window, budget_bytes / 4):
                break
        if spill and shutil.disk_usage(tempfile.gettempdir()).free < 1.1 * half * len(spill) and not forced:
            return None
        tile_budget_bytes = max(budget_bytes - half * (2 - len(spill)), one_window)
    elif not forced:
        host = device_memory.host_available()
        if host is not None and buffers > device_memory.CPU_FRACTION * host:
            return None
    window_pixels = (core[0] + 2 * halo) * (core[1] + 2 * halo)
    tiles_per_device = min(max(1, int(tile_budget_bytes // one_window)), max(1, STAGED_BATCH_PIXELS // window_pixels))
    return TilePlan(core, tiles_per_device, spill)


def tile_origins(num_images: int, rows: int, cols: int, core: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Every tile of a ``rows`` x ``cols`` grid of ``core``-sized tiles over each of ``num_images`` images, image
    by image, row by row: its image index ``(T,)`` and its top-left corner ``(T, 2)`` in pixels, int32."""
    s, iy, ix = np.meshgrid(np.arange(num_images), np.arange(rows), np.arange(cols), indexing="ij")
    origins = np.stack([iy.reshape(-1) * core[0], ix.reshape(-1) * core[1]], axis=1)
    return s.reshape(-1).astype(np.int32), origins.astype(np.int32)
