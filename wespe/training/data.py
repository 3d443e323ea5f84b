"""Training batches: random patches from two folders of photos (source camera, target camera) as a grain pipeline.

:func:`make_train_iterator` checks both folders before anything compiles (:mod:`wespe.training.scan`: which files are
usable, how paired files match, the data report), then builds, per process::

    MapDataset.source(indices).seed(s).repeat().shuffle().random_map(load + crop + augment)
    -> [unpaired: zip of the two sides, each with its own seed]  -> this process's rows of each global batch
    -> .batch(global_batch_size // process_count) -> .to_iter_dataset()

and returns ``(iterator, report)``. Each ``next(iterator)`` is ``{"source": (B, p, p, 3) float32 in [0, 1],
"target": same}``. The shuffle comes after the infinite repeat: it permutes the whole repeated index range, so
elements are drawn close to uniformly over the files (not in exact epochs), which is fast for any set size.

* **Unpaired** (WESPE): the two folders are shuffled and cropped independently (seeds derived from ``seed``).
* **Paired** (DPED): both images of a pair (:func:`wespe.training.scan.pair_files`) get the same crop offsets, flips
  and rotation.
* **Randomness** comes only from the per-element generator grain hands to ``random_map`` (keyed by the seed and
  the element's global position), so a seed gives the same stream on any number of threads, and the per-process
  slices of a global batch are the rows the single-process pipeline would give.
* **Memory**: when the decoded set (uint8, both sides) fits ``cache_max_bytes`` every image is decoded once
  up front (a full decode check) and kept in memory; otherwise images are decoded per use ("streamed") after a
  header-only check. A file that fails to decode at run time is logged, added to the report's bad list, and
  replaced by the next usable file (deterministically); the run goes on.
* **Resume**: the iterator is grain's; ``get_state()`` is a small JSON-serialisable dict and ``set_state`` on a
  new iterator built with the same arguments continues the stream exactly (:func:`iterator_state_to_json`,
  :func:`iterator_state_from_json` for checkpoint metadata).

:func:`fixed_eval_crops` cuts the fixed crops of the sample grids. Decoding (EXIF orientation, any Pillow mode ->
8-bit RGB) is :func:`wespe.image_io.read_image`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import grain
import numpy as np

from wespe.image_io import ImageReadError, read_image
from wespe.image_paths import list_images
from wespe.training.scan import (REPORT_FILE, TOO_SMALL, DataError, DataReport, Pairing, ScanResult, check_folder,
                                 full_decode_check, pair_files, require_pairs, scan_training_folders, training_report,
                                 without_path_prefix, write_report)

logger = logging.getLogger(__name__)

OnFailure = Callable[[str, Path, str, tuple[Path, ...]], None]  # (side, path, reason, entry) of a run-time failure


# ------------------------------------------------------------------------------------------------- patches

class _Store:
    """Images of one side (unpaired: tuples of 1 path) or of pairs (tuples of 2), cached or decoded per use.

    :meth:`get` returns the arrays of entry ``i``, or of the next entry that loads if it fails (a failed entry is
    remembered, logged and reported through ``on_failure``)."""

    def __init__(self, entries: Sequence[tuple[Path, ...]], sides: tuple[str, ...], patch_size: int,
                 cache: dict[Path, np.ndarray] | None,
                 on_failure: OnFailure):
        self.entries = list(entries)
        self.sides = sides
        self.patch_size = patch_size
        self.cache = cache
        self.on_failure = on_failure
        self.failed: set[int] = set()
        self._lock = threading.Lock()

    def _load(self, path: Path) -> np.ndarray:
        if self.cache is not None:
            return self.cache[path]
        array, _ = read_image(path)
        if min(array.shape[:2]) < self.patch_size:
            raise ImageReadError(f"{path}: too small at run time: {array.shape[1]}x{array.shape[0]} < patch "
                                 f"{self.patch_size}x{self.patch_size}", TOO_SMALL)
        return array

    def get(self, index: int) -> tuple[np.ndarray, ...]:
        n = len(self.entries)
        for step in range(n):
            j = (int(index) + step) % n
            if j in self.failed:
                continue
            arrays, failure = [], None
            for side, path in zip(self.sides, self.entries[j]):
                try:
                    arrays.append(self._load(path))
                except Exception as e:  # noqa: BLE001 - any decode failure: skip this entry, keep training
                    failure = (side, path, without_path_prefix(str(e), path) or type(e).__name__)
                    break
            if failure is None and len(arrays) == 2 and arrays[0].shape != arrays[1].shape:
                failure = (self.sides[1], self.entries[j][1],
                           f"size {arrays[1].shape[1]}x{arrays[1].shape[0]} differs from its pair "
                           f"{self.entries[j][0]} ({arrays[0].shape[1]}x{arrays[0].shape[0]}) at run time")
            if failure is None:
                return tuple(arrays)
            with self._lock:
                first = j not in self.failed
                self.failed.add(j)
            if first:
                self.on_failure(*failure, self.entries[j])
        raise DataError(f"every {'/'.join(self.sides)} image failed to decode at run time; see the warnings")


def _draw(rng: np.random.Generator, height: int, width: int, patch_size: int) -> tuple[int, int, bool, bool, int]:
    """Crop offsets, horizontal/vertical flips and quarter turns: always the same draws, whatever is enabled."""
    y = int(rng.integers(0, height - patch_size + 1))
    x = int(rng.integers(0, width - patch_size + 1))
    flips = rng.random(2) < 0.5
    turns = int(rng.integers(0, 4))
    return y, x, bool(flips[0]), bool(flips[1]), turns


def _patch(image: np.ndarray, params: tuple[int, int, bool, bool, int], patch_size: int, flips: bool, rot90: bool
           ) -> np.ndarray:
    y, x, hflip, vflip, turns = params
    patch = image[y:y + patch_size, x:x + patch_size]
    if flips and hflip:
        patch = patch[:, ::-1]
    if flips and vflip:
        patch = patch[::-1]
    if rot90 and turns:
        patch = np.rot90(patch, turns)
    return np.divide(patch, 255, dtype=np.float32)  # exact: 255 / 255 == 1


def _derived_seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint32)[0])



# ----------------------------------------------------------------------------------------------- the pipeline

def make_train_iterator(source_dir: str | os.PathLike, target_dir: str | os.PathLike, *, paired: bool,
                        patch_size: int, global_batch_size: int, seed: int, flips: bool = False, rot90: bool = False,
                        process_index: int = 0, process_count: int = 1, cache_max_bytes: int = 2**31,
                        workdir: str | os.PathLike | None = None, num_threads: int | None = None
                        ) -> tuple[grain.DatasetIterator, DataReport]:
    """The training batches of this process and the data report (see the module docstring).

    Raises :class:`DataError` before building anything for a missing folder, a folder without a usable image,
    ``source_dir == target_dir``, no usable pair (paired), or a ``global_batch_size`` that does not divide over
    ``process_count``. ``num_threads`` (default min(8, CPUs)) threads decode and crop batches ahead.
    ``workdir``: process 0 writes ``workdir/data_report.json`` (and rewrites it when a file fails at run time).
    """
    per_process = _per_process_batch_size(patch_size, global_batch_size, seed, process_index, process_count)
    files = _training_files(source_dir, target_dir, paired=paired, patch_size=patch_size,
                            cache_max_bytes=cache_max_bytes, progress=process_index == 0)
    settings = {"paired": bool(paired), "patch_size": patch_size, "global_batch_size": global_batch_size,
                "per_process_batch_size": per_process, "process_index": process_index,
                "process_count": process_count, "seed": seed, "flips": bool(flips), "rot90": bool(rot90)}
    report = training_report(settings, files.scans, files.pairing,
                             storage="cached" if files.cache is not None else "streamed",
                             decoded_bytes=files.decoded_bytes, cache_max_bytes=cache_max_bytes)
    writer_dir = Path(workdir) if workdir is not None and process_index == 0 else None
    ds = _patch_dataset(files, patch_size=patch_size, seed=seed, flips=flips, rot90=rot90,
                        on_failure=_failure_recorder(report, writer_dir))
    ds = _ProcessRows(ds, process_index, process_count, per_process).batch(per_process, drop_remainder=True)
    threads = min(8, os.cpu_count() or 1) if num_threads is None else num_threads
    iterator = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)))
    if writer_dir is not None:
        write_report(report, writer_dir)
    return iterator, report


def _per_process_batch_size(patch_size: int, global_batch_size: int, seed: int, process_index: int,
                            process_count: int) -> int:
    """This process's share of each global batch, after checking the arguments that shape the stream."""
    if patch_size < 1:
        raise DataError(f"patch_size must be positive, got {patch_size}")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} is not in range for process_count={process_count}")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise DataError(f"the global batch size {global_batch_size} must be a positive multiple of the process "
                        f"count {process_count} (each process loads global_batch_size / process_count patches)")
    if seed < 0:
        raise DataError(f"the data seed must be non-negative, got {seed}")
    return global_batch_size // process_count


@dataclasses.dataclass
class _TrainingFiles:
    """What the patches are drawn from: each side's scan, the pairs (paired data only), and the decoded images
    when they are kept in memory (``cache``; None = streamed). ``decoded_bytes``: the decoded set's size."""

    scans: dict[str, ScanResult]
    pairing: Pairing | None
    cache: dict[Path, np.ndarray] | None
    decoded_bytes: int


def _training_files(source_dir: str | os.PathLike, target_dir: str | os.PathLike, *, paired: bool, patch_size: int,
                    cache_max_bytes: int, progress: bool) -> _TrainingFiles:
    scans = scan_training_folders(source_dir, target_dir, patch_size, progress=progress)
    pairing = pair_files(scans) if paired else None
    needed = ({p for entry in pairing.usable for p in entry} if pairing is not None
              else set(scans["source"].good) | set(scans["target"].good))
    sizes = {**scans["source"].sizes, **scans["target"].sizes}
    decoded_bytes = sum(sizes[p][0] * sizes[p][1] * 3 for p in needed)  # from the headers: before decoding any
    cache = None
    if decoded_bytes <= cache_max_bytes:  # decode everything once: a full check, and the cache
        cache = full_decode_check(scans, needed, patch_size, progress=progress)
        if pairing is not None:  # again: a pair with a file that failed the full decode is now unusable
            pairing.refresh(scans)
        decoded_bytes = sum(a.nbytes for a in cache.values())
    if pairing is not None:
        require_pairs(pairing, scans, source_dir, target_dir)
    return _TrainingFiles(scans, pairing, cache, decoded_bytes)


def _failure_recorder(report: DataReport, writer_dir: Path | None) -> OnFailure:
    """What the stores call when a file fails at run time: log it, and update (and rewrite) the report."""
    lock = threading.Lock()  # the grain threads of one iterator share the report

    def on_failure(side: str, path: Path, reason: str, entry: tuple[Path, ...]) -> None:
        logger.warning("data: %s %s failed to decode at run time (%s); using the next usable %s instead",
                       side, path, reason, "pair" if report["paired"] else "image")
        with lock:
            report.record_runtime_failure(side, path, reason, entry)
            if writer_dir is not None:
                try:
                    write_report(report, writer_dir)
                except OSError as e:
                    logger.warning("data: could not update %s: %s", writer_dir / REPORT_FILE, e)

    return on_failure


def _patch_dataset(files: _TrainingFiles, *, patch_size: int, seed: int, flips: bool, rot90: bool,
                   on_failure: OnFailure) -> grain.MapDataset:
    """The unbatched stream of ``{"source", "target"}`` patches that every process slices its rows from."""

    def side_dataset(size: int, side_seed: int, fn: Callable) -> grain.MapDataset:
        return grain.MapDataset.source(range(size)).seed(side_seed).repeat().shuffle().random_map(fn)

    if files.pairing is not None:  # one stream of pairs: both images get the same draws
        store = _Store(files.pairing.usable, ("source", "target"), patch_size, files.cache, on_failure)

        def pair_fn(index: int, rng: np.random.Generator) -> dict:
            a, b = store.get(index)
            params = _draw(rng, a.shape[0], a.shape[1], patch_size)
            return {"source": _patch(a, params, patch_size, flips, rot90),
                    "target": _patch(b, params, patch_size, flips, rot90)}

        return side_dataset(len(files.pairing.usable), _derived_seed(seed, 0), pair_fn)
    branches = []  # unpaired: one stream per side, each with its own seed
    for stream, side in enumerate(("source", "target"), start=1):
        side_store = _Store([(p,) for p in files.scans[side].good], (side,), patch_size, files.cache, on_failure)

        def side_fn(index: int, rng: np.random.Generator, _store: _Store = side_store) -> np.ndarray:
            (image,) = _store.get(index)
            return _patch(image, _draw(rng, image.shape[0], image.shape[1], patch_size), patch_size, flips, rot90)

        branches.append(side_dataset(len(side_store.entries), _derived_seed(seed, stream), side_fn))
    return grain.experimental.ZipMapDataset(branches).map(lambda st: {"source": st[0], "target": st[1]})


class _ProcessRows(grain.MapDataset):
    """Process ``index``'s rows of every global batch: rows ``[index * per, (index + 1) * per)`` of batch k.

    Global batch k is elements ``[k * B, (k + 1) * B)`` of the stream whatever the process count, and process i
    loads the contiguous block i of it. ``jax.make_array_from_process_local_data`` places each process's rows in
    process order, so a run on N processes trains on exactly the batches of a single-process run.
    """

    def __init__(self, parent: grain.MapDataset, index: int, count: int, per_process: int):
        super().__init__(parent)
        self._index, self._count, self._per = index, count, per_process

    def __len__(self) -> int:
        return len(self._parent) // self._count

    def _parent_index(self, n: int) -> int:
        batch, row = divmod(n, self._per)
        return (batch * self._count + self._index) * self._per + row

    def __getitem__(self, n):
        if isinstance(n, slice):
            raise TypeError("_ProcessRows does not support slicing")
        return self._parent[self._parent_index(n)]

    def __str__(self) -> str:
        return f"_ProcessRows(process {self._index} of {self._count}, {self._per} rows per batch)"


# ---------------------------------------------------------------------------------------- checkpoint state

def iterator_state_to_json(state: dict) -> dict:
    """The iterator state as plain JSON data (for checkpoint metadata). Grain's state already is; this checks."""
    try:
        return json.loads(json.dumps(state))
    except (TypeError, ValueError) as e:
        raise TypeError(f"data iterator state is not JSON-serialisable: {e}") from e


def iterator_state_from_json(data: dict | str | bytes) -> dict:
    """The state for ``iterator.set_state`` from :func:`iterator_state_to_json`'s output (or its JSON text)."""
    return json.loads(data) if isinstance(data, (str, bytes)) else dict(data)


# ------------------------------------------------------------------------------------------ sample crops

def fixed_eval_crops(folder_or_files: str | os.PathLike | Iterable[str | os.PathLike], n: int, patch_size: int,
                     seed: int) -> np.ndarray:
    """``(n, patch_size, patch_size, 3)`` float32 crops in [0, 1] for sample grids, the same for a seed.

    The files (a folder, searched recursively, or a list) are shuffled with ``seed``; the centre crops of the
    first ``n`` usable ones (decodable, at least ``patch_size`` on a side) are taken. With fewer usable files than
    ``n`` the remaining rows are seeded random crops of the usable files, in turn. Files are only read until
    ``n`` usable ones are found. Raises :class:`DataError` if none is usable.
    """
    if isinstance(folder_or_files, (str, os.PathLike)):
        label = str(folder_or_files)
        files = list_images([check_folder(folder_or_files, None)])
    else:
        files = [Path(p) for p in folder_or_files]
        label = f"{len(files)} files"
    if n < 1:
        return np.zeros((0, patch_size, patch_size, 3), np.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files))
    images, crops = [], []
    for i in order:
        try:
            image, _ = read_image(files[i])
        except ImageReadError as e:
            logger.warning("data: skipping %s for the sample crops: %s", files[i],
                           without_path_prefix(str(e), files[i]))
            continue
        h, w = image.shape[:2]
        if min(h, w) < patch_size:
            continue
        images.append(image)
        y, x = (h - patch_size) // 2, (w - patch_size) // 2
        crops.append(image[y:y + patch_size, x:x + patch_size])
        if len(crops) == n:
            break
    if not crops:
        raise DataError(f"{label}: no usable image for {patch_size}x{patch_size} sample crops")
    k = 0
    while len(crops) < n:
        image = images[k % len(images)]
        y, x, *_ = _draw(rng, image.shape[0], image.shape[1], patch_size)
        crops.append(image[y:y + patch_size, x:x + patch_size])
        k += 1
    return np.divide(np.stack(crops), 255, dtype=np.float32)
