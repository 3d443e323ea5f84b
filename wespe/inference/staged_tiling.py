"""Exact tiled inference at about the cost of one forward pass: the generator run stage by stage over tiles.

:mod:`wespe.inference.streamed_tiling` needs no memory beyond its tiles, but recomputes the network from the input
once per instance norm (about 4.6x one pass at the defaults). This tiler instead keeps the two width-channel
activations the network carries between norms in host memory, one full-resolution float32 array each (``H``,
the residual stream; ``A``, the pre-norm conv output), so each conv is computed once. Its stages are the
generator's own (:meth:`wespe.models.Generator.stages`, run by :meth:`wespe.models.Generator.run_stage`), at the
defaults:

==============================  ==============================================================  ================
stage (applies -> produces)     computes, per tile                                              whole-image stats
==============================  ==============================================================  ================
image -> slot 0                 ``H = relu(conv_in(x))``, ``A = blocks[0].conv1(H)``            norm 0
slot 2b -> 2b + 1               ``A = blocks[b].conv2(relu(norm1_b(A)))``                      norm 2b + 1
slot 2b + 1 -> 2b + 2           ``H = H + relu(norm2_b(A))``, ``A = blocks[b+1].conv1(H)``      norm 2b + 2
last slot -> output             ``H + relu(norm2_last(A))`` -> relu(mid1) -> relu(mid2) -> output (image)
==============================  ==============================================================  ================

Each stage reads windows of its inputs with only its own halo (:attr:`wespe.models.Stage.halo`: 1 px for a 3x3
conv; 5 for the first stage, 6 for the last), so tiles overlap little. As in the streamed tiler, activations
outside the true image are reset to zero before every conv (SAME padding of the whole image), and each stage's
tile cores reduce the next norm's input to per-tile (count, mean, M2), merged on the host in float64 (Chan et
al.): the whole image's statistics.

Stages that rewrite the buffers they read (those after a norm) write in place, one row of tiles late: a tile
row's results are stored only once every tile whose window overlaps it has been read (``ceil(halo / tile
height)`` rows later), so no window ever sees a half-updated neighbour. Host memory: ``2 * width * 4`` bytes per
pixel (512 B at width 64: 1.5 GB at 3 MP, 6.1 GB at 12 MP) plus one tile row;
:func:`wespe.inference.tiles.staged_buffer_bytes` says how much, and :func:`wespe.inference.tiles.staged_plan`
decides whether they stay in memory, are spilled to a file, or the streamed tiler runs instead.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wespe.inference import tiles
from wespe.models import InstanceNorm, Stage

__all__ = ["RunningMoments", "StagedTiler", "supports"]


def supports(generator: nnx.Module) -> bool:
    """Whether this tiler applies: a generator whose every block norm is an InstanceNorm (other generators need
    no statistics and take a single tiled pass)."""
    slots = generator.num_norm_slots
    return slots > 0 and all(isinstance(generator.norm_at(slot), InstanceNorm) for slot in range(slots))


@functools.partial(jax.jit, static_argnames=("graphdef", "stage", "halo", "core", "compute_dtype"))
def _stage_pass(state, windows, sample_index, origins, image_hw, mean, var, *, graphdef, stage, halo, core,
                compute_dtype):
    """One batch of tiles through one stage (its norm applied with the whole-image ``mean``, ``var`` of each
    tile's sample): its outputs on the whole windows (float32; the host keeps the cores:
    slicing them here would be one more copy) and, where it produces a norm's input, per-tile (count (B,),
    mean (B, width), M2 (B, width)) over the core pixels inside the image."""
    generator = nnx.merge(graphdef, state)
    th, tw = core
    _, wh, ww, _ = next(iter(windows.values())).shape
    rows = origins[:, 0:1] - halo + jnp.arange(wh)
    cols = origins[:, 1:2] - halo + jnp.arange(ww)
    rows_in, cols_in = (rows >= 0) & (rows < image_hw[0]), (cols >= 0) & (cols < image_hw[1])
    mask = rows_in[:, :, None, None] & cols_in[:, None, :, None]
    m, v = mean[sample_index][:, None, None, :], var[sample_index][:, None, None, :]
    outs = generator.run_stage(stage, {k: w.astype(compute_dtype) for k, w in windows.items()}, mask=mask,
                               normalize=lambda norm, a, slot: norm.normalize(a, m, v))
    outs = {k: o.astype(jnp.float32) for k, o in outs.items()}
    if stage.produces is None:
        return outs, None
    in_core = jnp.arange(wh)[None, :] - halo, jnp.arange(ww)[None, :] - halo
    w = (rows_in & (in_core[0] >= 0) & (in_core[0] < th))[:, :, None, None] & (
        cols_in & (in_core[1] >= 0) & (in_core[1] < tw))[:, None, :, None]
    t = outs["A"]
    count = jnp.sum(w, axis=(1, 2, 3), dtype=jnp.float32)
    mu = jnp.sum(jnp.where(w, t, 0.0), axis=(1, 2)) / jnp.maximum(count, 1.0)[:, None]
    m2 = jnp.sum(jnp.where(w, jnp.square(t - mu[:, None, None, :]), 0.0), axis=(1, 2))
    return outs, (count, mu, m2)


class RunningMoments:
    """Per-sample count, mean and M2 of a per-channel quantity, merged batch by batch in float64 (Chan et al.'s
    parallel variance); ``variance`` is the biased one, as ``InstanceNorm.statistics``."""

    def __init__(self, num_samples: int, width: int):
        self.n = np.zeros(num_samples)
        self.mean = np.zeros((num_samples, width))
        self.m2 = np.zeros((num_samples, width))

    def add(self, sample: np.ndarray, count, mean, m2) -> None:
        """Merge tiles of samples ``sample`` (T,) with their own (count (T,), mean (T, C), M2 (T, C))."""
        c, mu, m2 = (np.asarray(a, np.float64) for a in (count, mean, m2))
        num, width = self.mean.shape
        nb = np.bincount(sample, weights=c, minlength=num)
        total = np.zeros((num, width))
        np.add.at(total, sample, c[:, None] * mu)
        mean_b = total / np.maximum(nb, 1)[:, None]
        m2_b = np.zeros((num, width))
        np.add.at(m2_b, sample, m2 + c[:, None] * np.square(mu - mean_b[sample]))
        n_new = self.n + nb
        safe = np.maximum(n_new, 1)[:, None]
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (nb[:, None] / safe)
        self.m2 = self.m2 + m2_b + np.square(delta) * (self.n * nb)[:, None] / safe
        self.n = n_new

    @property
    def variance(self) -> np.ndarray:
        return self.m2 / np.maximum(self.n, 1)[:, None]


class _ArrayBuffer:
    """A stage buffer in host memory: (N, rows, cols, C) float32."""

    def __init__(self, shape: tuple[int, ...]):
        self.array = np.zeros(shape, np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    def read_into(self, out: np.ndarray, s: int, y: int, x: int) -> None:
        out[...] = self.array[s, y:y + out.shape[0], x:x + out.shape[1]]

    def write(self, s: int, y: int, x: int, data: np.ndarray) -> None:
        self.array[s, y:y + data.shape[0], x:x + data.shape[1]] = data


class _FileBuffer:
    """A stage buffer spilled to an unlinked temporary file (row-major (N, rows, cols, C) float32), read and
    written with pread/pwrite row by row: its pages live in the kernel's page cache, which can write them to
    disk and drop them under memory pressure, instead of in the process (no mmap: mapped pages would count as
    the process's resident memory). A sparse file reads as zeros, like the in-memory buffer."""

    def __init__(self, shape: tuple[int, ...], directory: str | None):
        import tempfile
        self.shape = shape
        self.file = tempfile.TemporaryFile(dir=directory, prefix="wespe-staged-")
        self.fd = self.file.fileno()
        os.ftruncate(self.fd, int(np.prod(shape)) * 4)
        _, self.rows, self.cols, self.channels = shape

    def _offset(self, s: int, y: int, x: int) -> int:
        return ((int(s) * self.rows + int(y)) * self.cols + int(x)) * self.channels * 4  # Python ints: > 2 GiB

    def read_into(self, out: np.ndarray, s: int, y: int, x: int) -> None:
        row_bytes = out.shape[1] * self.channels * 4
        for r in range(out.shape[0]):  # each window row is contiguous in out and in the file
            if os.preadv(self.fd, [memoryview(out[r]).cast("B")], self._offset(s, y + r, x)) != row_bytes:
                raise OSError(f"short read from the staged tiler's buffer file {self.file.name}")

    def write(self, s: int, y: int, x: int, data: np.ndarray) -> None:
        for r in range(data.shape[0]):
            row = np.ascontiguousarray(data[r])
            if os.pwritev(self.fd, [memoryview(row).cast("B")], self._offset(s, y + r, x)) != row.nbytes:
                raise OSError(f"short write to the staged tiler's buffer file {self.file.name} (disk full?)")

    def close(self) -> None:
        self.file.close()


def on_devices(state, devices: Sequence, height: int, width: int) -> tuple:
    """A tiler's placement on ``devices`` (one mesh axis, ``tiles``): the tiles' sharding, the replicated sharding,
    the generator's state and the image's (height, width) replicated on every device."""
    mesh = Mesh(np.asarray(devices), ("tiles",))
    replicated = NamedSharding(mesh, PartitionSpec())
    image_hw = jax.device_put(np.array([height, width], np.int32), replicated)
    return NamedSharding(mesh, PartitionSpec("tiles")), replicated, jax.device_put(state, replicated), image_hw


class StagedTiler:
    """The generator's stages over tiles ``core`` of an (N, H, W, C) image batch, batched at most
    ``tiles_per_device`` tiles per device and sharded over ``devices``."""

    def __init__(self, generator, images, core, tiles_per_device, devices, compute_dtype="float32", *,
                 spill: Sequence[str] = (), spill_dir: str | None = None):
        if not supports(generator):
            raise ValueError("StagedTiler needs a generator whose block norms are all InstanceNorm")
        self.generator, self.compute_dtype, self.core = generator, compute_dtype, core
        self.graphdef, state = nnx.split(generator)
        self.n, self.h, self.w, self.c = images.shape
        th, tw = core
        self.ny, self.nx = tiles.grid(self.h, self.w, core)
        self.pad = pad = tiles.max_stage_halo(generator)
        width = generator.conv_in.kernel.shape[-1]
        # Every buffer covers the whole tile grid plus the largest halo on every side, zero outside the image.
        spatial = (self.n, self.ny * th + 2 * pad, self.nx * tw + 2 * pad)
        # ``spill``: the activation buffers ("H", "A") kept in a temporary file in ``spill_dir`` instead.
        unknown = set(spill) - {"H", "A"}
        if unknown:
            raise ValueError(f"spill: only the buffers H and A can be spilled, got {sorted(unknown)}")
        self.buffers = {"x": _ArrayBuffer(spatial + (self.c,))}
        for name in ("H", "A"):
            self.buffers[name] = (_FileBuffer(spatial + (width,), spill_dir) if name in spill
                                  else _ArrayBuffer(spatial + (width,)))
        self.buffers["x"].array[:, pad:pad + self.h, pad:pad + self.w] = images
        self.sample, self.origins = tiles.tile_origins(self.n, self.ny, self.nx, core)
        self.batch = tiles.batch_size(len(self.sample), tiles_per_device, len(devices))
        self.sharded, self.replicated, self.state, self.image_hw = on_devices(state, devices, self.h, self.w)
        num_norms = generator.num_norm_slots
        self.means = np.zeros((num_norms, self.n, width), np.float32)
        self.variances = np.ones((num_norms, self.n, width), np.float32)
        self._window_arrays: dict = {}

    def _gather(self, names: Sequence[str], halo: int, idx: np.ndarray, slot: int) -> dict:
        """The windows of tiles ``idx``, copied into reused arrays (``slot`` 0 / 1 alternate between batches:
        fresh arrays every batch cost a page fault per 4 KiB, ~20% of the run on small CPU machines)."""
        th, tw = self.core
        wh, ww = th + 2 * halo, tw + 2 * halo
        shift = self.pad - halo
        windows = {}
        for position, name in enumerate(names):
            buf = self.buffers[name]
            size = len(idx) * wh * ww * buf.shape[-1]
            key = (position, slot)  # one flat array per input position, reused by every stage (as a prefix)
            if key not in self._window_arrays or self._window_arrays[key].size < size:
                self._window_arrays[key] = np.empty(self._window_elements(len(idx), buf.shape[-1]), np.float32)
            windows[name] = self._window_arrays[key][:size].reshape(len(idx), wh, ww, buf.shape[-1])
            for j, (s, (y, x)) in enumerate(zip(self.sample[idx], self.origins[idx])):
                buf.read_into(windows[name][j], s, y + shift, x + shift)
        return windows

    def _window_elements(self, count: int, channels: int) -> int:
        th, tw = self.core
        largest = max(channels, self.buffers["H"].shape[-1])
        return count * (th + 2 * self.pad) * (tw + 2 * self.pad) * largest

    def _store(self, outputs: dict, halo: int, start: int, count: int, out: np.ndarray | None) -> None:
        th, tw = self.core
        pad = self.pad
        for i in range(count):
            s, (y, x) = self.sample[start + i], self.origins[start + i]
            ye, xe = min(y + th, self.h), min(x + tw, self.w)  # only pixels inside the image are kept
            for name, window in outputs.items():
                core = window[i, halo:halo + ye - y, halo:halo + xe - x]
                if name == "y":
                    out[s, y:ye, x:xe] = core
                else:
                    self.buffers[name].write(s, pad + y, pad + x, core)

    def run_stage(self, stage: Stage, out: np.ndarray | None = None) -> None:
        """Every tile through ``stage``: its outputs into the buffers (or ``out``), its statistics into
        ``self.means`` / ``self.variances``. Batches are assembled while the previous one computes."""
        halo = stage.halo
        in_place = bool(set(stage.reads) & set(stage.writes))
        lag = -(-halo // self.core[0]) if in_place else 0  # tile rows a result waits before it is stored
        applies, produces = stage.applies, stage.produces
        k = applies if applies is not None else 0
        mean = jax.device_put(self.means[k], self.replicated)
        var = jax.device_put(self.variances[k], self.replicated)
        moments = RunningMoments(self.n, self.means.shape[-1]) if produces is not None else None
        total = len(self.sample)
        waiting: list[tuple[int, int, dict]] = []  # consumed results not yet stored (in-place stages)

        def consume(start, count, result):
            outputs, stats = result
            outputs = {name: np.asarray(o) for name, o in outputs.items()}
            if moments is not None:
                moments.add(self.sample[start:start + count], *(np.asarray(a)[:count] for a in stats))
            waiting.append((start, count, outputs))

        def store_ready(gathered_rows: int) -> None:
            # A result of tile row r may be stored once rows up to r + lag have all been gathered.
            while waiting and (waiting[0][0] + waiting[0][1] - 1) // self.nx + lag < gathered_rows:
                self._store(waiting[0][2], halo, waiting[0][0], waiting[0][1], out)
                waiting.pop(0)

        pending = None
        for start in range(0, total, self.batch):
            idx = np.minimum(np.arange(start, start + self.batch), total - 1)  # the last batch repeats a tile
            windows = self._gather(stage.reads, halo, idx, slot=(start // self.batch) % 2)
            args = jax.device_put((windows, self.sample[idx], self.origins[idx]), self.sharded)
            result = _stage_pass(self.state, *args, self.image_hw, mean, var, graphdef=self.graphdef,
                                 stage=stage, halo=halo, core=self.core, compute_dtype=self.compute_dtype)
            if pending is not None:
                consume(*pending)
            pending = (start, min(self.batch, total - start), result)
            store_ready(min(start + self.batch, total) // self.nx)
        if pending is not None:
            consume(*pending)
        store_ready(math.inf)
        if moments is not None:
            self.means[produces] = moments.mean
            self.variances[produces] = moments.variance

    def output(self) -> np.ndarray:
        out = np.empty((self.n, self.h, self.w, self.c), np.float32)
        try:
            for stage in self.generator.stages():
                self.run_stage(stage, out)
        finally:
            for buf in self.buffers.values():
                if isinstance(buf, _FileBuffer):
                    buf.close()
        return out
