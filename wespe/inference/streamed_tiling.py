"""The streamed tiler: exact tiled inference keeping nothing but tiles in memory (``enhance(..., tiling="streamed")``).

For instance norm ``k`` (in network order) every tile is run up to the pre-norm activation of norm ``k`` (with the
already-known statistics of norms ``0..k-1``, and a halo of just the receptive field up to that conv); each tile's
core pixels inside the image are reduced on the device to per-channel (count, mean, M2) and combined across tiles on
the host in float64 (:class:`wespe.inference.staged_tiling.RunningMoments`); a final pass produces the output.
Windows are cut from the zero-padded image and activations outside the true image are reset to zero after every
layer that feeds a conv (:meth:`wespe.models.Generator.forward`), so the result equals the whole-image pass to
float32 rounding. Halos and batches: :mod:`wespe.inference.tiles`. See :mod:`wespe.inference.enhance` for when it
runs and :mod:`wespe.inference.staged_tiling` for the default tiler.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wespe.inference import staged_tiling, tiles
from wespe.models import InstanceNorm

__all__ = ["StreamedTiler", "instance_norm_indices", "norm_layers"]


def norm_layers(generator: nnx.Module) -> list[nnx.Module | None]:
    """The generator's norm layers by norm slot (:class:`wespe.models.Stage`; None: no norm)."""
    return [generator.norm_at(slot) for slot in range(generator.num_norm_slots)]


def instance_norm_indices(generator: nnx.Module) -> list[int]:
    """Indices (into ``norm_layers``) of the norms that need whole-image statistics (InstanceNorm)."""
    indices = []
    for k, norm in enumerate(norm_layers(generator)):
        if isinstance(norm, InstanceNorm):
            indices.append(k)
        elif norm is not None and not isinstance(norm, nnx.BatchNorm):
            raise TypeError(f"tiled inference does not know the norm layer {type(norm).__name__}")
    return indices


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
    out = generator.forward(windows.astype(compute_dtype), mask=mask,
                            means=[m[:, k, None, None, :] for k in range(num_norms)],
                            variances=[v[:, k, None, None, :] for k in range(num_norms)], stop_at=stop_at)
    out = out[:, halo:halo + th, halo:halo + tw].astype(jnp.float32)
    if stop_at is None:
        return out
    w = mask[:, halo:halo + th, halo:halo + tw].astype(jnp.float32)
    count = jnp.sum(w, axis=(1, 2, 3))
    mean = jnp.sum(out * w, axis=(1, 2)) / jnp.maximum(count, 1.0)[:, None]
    m2 = jnp.sum(jnp.square(out - mean[:, None, None, :]) * w, axis=(1, 2))
    return count, mean, m2


class StreamedTiler:
    """Tiles of an (N, H, W, C) image batch, batched and sharded over devices."""

    def __init__(self, generator, images, core, tiles_per_device, devices, compute_dtype="float32"):
        self.generator = generator
        self.compute_dtype = compute_dtype
        self.graphdef, state = nnx.split(generator)
        self.n, self.h, self.w, self.c = images.shape
        self.core = core
        th, tw = core
        self.max_halo = tiles.receptive_halo(generator)
        ny, nx = tiles.grid(self.h, self.w, core)
        hp = self.max_halo
        self.padded = np.pad(images, ((0, 0), (hp, hp + ny * th - self.h), (hp, hp + nx * tw - self.w), (0, 0)))
        self.sample, self.origins = tiles.tile_origins(self.n, ny, nx, core)
        self.batch = tiles.batch_size(len(self.sample), tiles_per_device, len(devices))
        self.sharded, self.replicated, self.state, self.image_hw = staged_tiling.on_devices(state, devices, self.h,
                                                                                           self.w)
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
        halo = tiles.receptive_halo(self.generator, stop_at)
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
