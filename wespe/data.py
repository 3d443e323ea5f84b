"""Training data: random patches from two folders of photos (source camera, target camera) as a grain pipeline.

:func:`make_train_iterator` checks both folders before anything compiles (:class:`DataError`, naming the flag
and the folder), then builds, per process::

    MapDataset.source(indices).seed(s).repeat().shuffle().random_map(load + crop + augment)
    -> [unpaired: zip of the two sides, each with its own seed]  -> this process's rows of each global batch
    -> .batch(global_batch_size // process_count) -> .to_iter_dataset()

and returns ``(iterator, report)``. Each ``next(iterator)`` is ``{"source": (B, p, p, 3) float32 in [0, 1],
"target": same}``. The shuffle comes after the infinite repeat: it permutes the whole repeated index range, so
elements are drawn close to uniformly over the files (not in exact epochs), which is fast for any set size.

* **Unpaired** (WESPE): the two folders are shuffled and cropped independently (seeds derived from ``seed``).
* **Paired** (DPED): files are matched by path relative to their folder without the extension
  (``sub/0001.jpg`` <-> ``sub/0001.png``), then the rest by file stem where that is unique; names found on one
  side only are reported and left out, as are pairs whose two images differ in size. Both images of a pair get
  the same crop offsets, flips and rotation.
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

The report (``<workdir>/data_report.json``) names, per side, the files ``used`` (for paired data: those of the
usable pairs) and the ``bad`` ones, each with its reason and kind; a file that fails at run time moves from the
first list to the second.

Decoding (EXIF orientation, any Pillow mode -> 8-bit RGB) is :func:`wespe.image_io.read_image`; the file types
are :data:`wespe.image_io.IMAGE_EXTENSIONS`, found recursively by :func:`wespe.image_io.list_images`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grain
import numpy as np
from tqdm import tqdm
from PIL import Image

# The kinds are re-exported: the data report (and its readers) name unusable files by them.
from wespe.errors import UserError
from wespe.image_io import (CORRUPT, IMAGE_EXTENSIONS, NOT_AN_IMAGE, TOO_LARGE, TRUNCATED,  # noqa: F401
                            UNREADABLE, ImageReadError, list_images, pillow_error, read_image)
from wespe.files import atomic_write

log = logging.getLogger(__name__)

REPORT_FILE = "data_report.json"
SCAN_THREADS = max(2, min(4, os.cpu_count() or 2))
PROGRESS_MIN_FILES = 500  # show a tqdm bar when scanning / caching at least this many files
_ORIENTATION_TAG = 0x0112
_FLAGS = {"source": "--source", "target": "--target"}

# Kinds of unusable files (the report counts them by kind): ImageReadError's kinds plus these.
TOO_SMALL = "too small"
RUNTIME_FAILURE = "failed at run time"


class DataError(UserError):
    """Unusable training data (missing folder, no usable image, bad batch split, ...), raised before training."""


@dataclasses.dataclass
class ScanResult:
    """Files of a folder that can be used (``good``, sorted) and those that cannot (``bad``: dicts with ``path``,
    ``reason`` and ``kind``). ``sizes`` maps each good file to its upright (width, height)."""

    folder: Path
    good: list[Path]
    bad: list[dict]
    sizes: dict[Path, tuple[int, int]] = dataclasses.field(default_factory=dict)

    @property
    def num_files(self) -> int:
        return len(self.good) + len(self.bad)

    def skipped_by_kind(self) -> dict[str, int]:
        return dict(collections.Counter(b["kind"] for b in self.bad).most_common())


class DataReport(dict):
    """The data report: a plain JSON-serialisable dict, plus :meth:`summary_line`."""

    def summary_line(self) -> str:
        parts = []
        for side in ("source", "target"):
            s = self[side]
            text = f"{side} {s['num_good']} usable"
            if s["num_bad"]:
                text += f" ({s['num_bad']} skipped: {_kinds_text(s['skipped_by_kind'])})"
            parts.append(text)
        if self["paired"]:
            p = self["pairs"]
            dropped = []
            if self["unmatched"]["count"]:
                dropped.append(f"{self['unmatched']['count']} unmatched")
            if p["unusable"]:
                dropped.append(f"{len(p['unusable'])} unusable")
            parts.append(f"{p['num_usable']} pairs" + (f" ({', '.join(dropped)})" if dropped else ""))
        if self["storage"] == "cached":
            parts.append(f"cached in memory ({_bytes_text(self['decoded_bytes'])})")
        else:
            parts.append(f"streamed from disk ({_bytes_text(self['decoded_bytes'])} decoded > cache limit "
                         f"{_bytes_text(self['cache_max_bytes'])})")
        return "data: " + ", ".join(parts)


def _kinds_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())


def _bytes_text(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.{0 if n >= 10 * size else 1}f} {unit}"
    return f"{n} B"


# ------------------------------------------------------------------------------------------------- scanning

def _label(folder: str | os.PathLike, flag: str | None) -> str:
    return f"{flag}={folder}" if flag else str(folder)


def check_folder(folder: str | os.PathLike, flag: str | None) -> Path:
    path = Path(folder)
    if not path.exists():
        raise DataError(f"{_label(folder, flag)} does not exist")
    if not path.is_dir():
        raise DataError(f"{_label(folder, flag)} is not a folder")
    return path


def _strip_path(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _header_size(path: Path) -> tuple[int, int]:
    """Upright (width, height) from the header (EXIF orientations 5-8 swap them); raises ImageReadError."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            try:
                # The base-class getexif: PNG's own one decodes the whole image to look for a late eXIf chunk.
                orientation = int(Image.Image.getexif(im).get(_ORIENTATION_TAG, 1) or 1)
            except Exception:
                orientation = 1
    except Exception as e:  # noqa: BLE001 - Pillow reports bad headers with many exception types
        raise pillow_error(path, e, "cannot read image header") from e
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _check_file(path: Path, patch_size: int, decode: bool, keep: bool
                ) -> tuple[tuple[int, int] | None, np.ndarray | None, dict | None]:
    """(upright size, decoded array if ``keep``, bad entry or None) for one file."""
    try:
        if decode:
            array, _ = read_image(path)
            size = (array.shape[1], array.shape[0])
        else:
            array, size = None, _header_size(path)
    except ImageReadError as e:
        message = _strip_path(str(e), path)
        return None, None, {"path": str(path), "reason": message, "kind": e.kind}
    except Exception as e:  # noqa: BLE001 - never let one odd file stop the scan
        return None, None, {"path": str(path), "reason": f"unexpected error: {e!r}", "kind": CORRUPT}
    if min(size) < patch_size:
        return size, None, {"path": str(path), "kind": TOO_SMALL,
                            "reason": f"too small: {size[0]}x{size[1]} (after EXIF orientation) < patch "
                                      f"{patch_size}x{patch_size}"}
    return size, (array if keep else None), None


def _parallel(fn: Callable[[Path], Any], items: Sequence[Path], desc: str, progress: bool | None) -> list:
    show = len(items) >= PROGRESS_MIN_FILES if progress is None else (progress and len(items) >= PROGRESS_MIN_FILES)
    results = []
    with tqdm(total=len(items), desc=desc, unit="file", dynamic_ncols=True, file=sys.stderr,
              disable=not show) as bar, \
            ThreadPoolExecutor(max_workers=SCAN_THREADS, thread_name_prefix="wespe-scan") as pool:
        for result in pool.map(fn, items):
            results.append(result)
            bar.update(1)
    return results


def _scan_files(folder: Path, files: Sequence[Path], patch_size: int, decode: bool, *, keep: bool = False,
                progress: bool | None = None, desc: str = "scanning") -> tuple[ScanResult, dict[Path, np.ndarray]]:
    results = _parallel(lambda p: _check_file(p, patch_size, decode, keep), files, desc, progress)
    scan, arrays = ScanResult(folder=folder, good=[], bad=[]), {}
    for path, (size, array, bad) in zip(files, results):
        if bad is not None:
            scan.bad.append(bad)
        else:
            scan.good.append(path)
            scan.sizes[path] = size
            if keep:
                arrays[path] = array
    return scan, arrays


def scan_folder(folder: str | os.PathLike, *, patch_size: int, decode: bool = True, flag: str | None = None,
                progress: bool | None = None) -> ScanResult:
    """Check every photo under ``folder`` (recursive, sorted; the extensions of :mod:`wespe.image_io`).

    A file is bad if it is not an image, is corrupt or truncated, or is smaller than ``patch_size`` on a side
    after EXIF orientation. ``decode=True`` decodes every file in full (catches truncated and corrupt pixel data;
    for small sets); ``decode=False`` reads only the headers (size, orientation), so bad pixel data is found at
    run time instead. Runs on a few threads, with a tqdm bar for large folders (``progress`` None = auto).
    A missing folder raises :class:`DataError` (naming ``flag``, e.g. ``--source``, if given); an empty result
    is returned as is.
    """
    path = check_folder(folder, flag)
    if patch_size < 1:
        raise DataError(f"patch_size must be positive, got {patch_size}")
    scan, _ = _scan_files(path, list_images([path]), patch_size, decode, progress=progress,
                          desc=f"scanning {path.name or path}")
    return scan


def _require_usable(scan: ScanResult, flag: str | None, patch_size: int) -> None:
    if scan.good:
        return
    label = _label(scan.folder, flag)
    if not scan.bad:
        raise DataError(f"{label}: no image files found (searched recursively for "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    examples = "; ".join(f"{b['path']}: {b['reason']}" for b in scan.bad[:3])
    raise DataError(f"{label}: no usable image for {patch_size}x{patch_size} patches ({len(scan.bad)} files "
                    f"skipped: {_kinds_text(scan.skipped_by_kind())}; e.g. {examples})")


# -------------------------------------------------------------------------------------------------- pairing

def _match_pairs(source_dir: Path, source_files: Sequence[Path], target_dir: Path, target_files: Sequence[Path]
                 ) -> tuple[list[tuple[Path, Path]], list[Path], list[Path]]:
    """Pairs by relative path without extension, then by unique stem; returns (pairs, unmatched_s, unmatched_t)."""
    pairs: list[tuple[Path, Path]] = []
    left_s, left_t = list(source_files), list(target_files)
    keys: list[Callable[[Path, Path], str]] = [
        lambda folder, p: p.relative_to(folder).with_suffix("").as_posix(),
        lambda folder, p: p.stem,
    ]
    for key in keys:
        by_s = collections.defaultdict(list)
        by_t = collections.defaultdict(list)
        for p in left_s:
            by_s[key(source_dir, p)].append(p)
        for p in left_t:
            by_t[key(target_dir, p)].append(p)
        matched_s, matched_t = set(), set()
        for k, ss in by_s.items():
            ts = by_t.get(k, [])
            if len(ss) == 1 and len(ts) == 1:  # an ambiguous name (a.jpg + a.png) is left unmatched
                pairs.append((ss[0], ts[0]))
                matched_s.add(ss[0])
                matched_t.add(ts[0])
        left_s = [p for p in left_s if p not in matched_s]
        left_t = [p for p in left_t if p not in matched_t]
    pairs.sort(key=lambda pair: str(pair[0]))
    return pairs, left_s, left_t


# ----------------------------------------------------------------------------------------------- the pipeline

class _Store:
    """Images of one side (unpaired: tuples of 1 path) or of pairs (tuples of 2), cached or decoded per use.

    :meth:`get` returns the arrays of entry ``i``, or of the next entry that loads if it fails (a failed entry is
    remembered, logged and reported through ``on_failure``)."""

    def __init__(self, entries: Sequence[tuple[Path, ...]], sides: tuple[str, ...], patch_size: int,
                 cache: dict[Path, np.ndarray] | None,
                 on_failure: Callable[[str, Path, str, tuple[Path, ...]], None]):
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
                    failure = (side, path, _strip_path(str(e), path) or type(e).__name__)
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


def _side_report(scan: ScanResult, flag: str) -> dict:
    return {"folder": str(scan.folder), "flag": flag, "num_files": scan.num_files, "num_good": len(scan.good),
            "num_bad": len(scan.bad), "skipped_by_kind": scan.skipped_by_kind(), "bad": list(scan.bad),
            "used": [str(p) for p in scan.good]}


def _write_report(report: DataReport, workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    with atomic_write(workdir / REPORT_FILE) as f:
        f.write((json.dumps(report, indent=2) + "\n").encode("utf-8"))


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
    if patch_size < 1:
        raise DataError(f"patch_size must be positive, got {patch_size}")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} is not in range for process_count={process_count}")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise DataError(f"the global batch size {global_batch_size} must be a positive multiple of the process "
                        f"count {process_count} (each process loads global_batch_size / process_count patches)")
    if seed < 0:
        raise DataError(f"the data seed must be non-negative, got {seed}")
    per_process = global_batch_size // process_count
    source_path = check_folder(source_dir, _FLAGS["source"])
    target_path = check_folder(target_dir, _FLAGS["target"])
    if source_path.resolve() == target_path.resolve():
        raise DataError(f"{_label(source_dir, _FLAGS['source'])} and {_label(target_dir, _FLAGS['target'])} are "
                        "the same folder; the source and target photos must be different sets")
    progress = process_index == 0
    scans = {}
    for side, path in (("source", source_path), ("target", target_path)):
        scans[side], _ = _scan_files(path, list_images([path]), patch_size, decode=False, progress=progress,
                                     desc=f"scanning {side}")
        _require_usable(scans[side], _FLAGS[side], patch_size)

    unusable_pairs: list[dict] = []
    unmatched: dict = {"count": 0, "source": [], "target": []}
    if paired:
        all_s = sorted(list(scans["source"].good) + [Path(b["path"]) for b in scans["source"].bad], key=str)
        all_t = sorted(list(scans["target"].good) + [Path(b["path"]) for b in scans["target"].bad], key=str)
        pairs, left_s, left_t = _match_pairs(source_path, all_s, target_path, all_t)
        unmatched = {"count": len(left_s) + len(left_t), "source": [str(p) for p in left_s],
                     "target": [str(p) for p in left_t]}
        entries = _usable_pairs(pairs, scans, unusable_pairs)
    else:
        entries = None
    needed = ({p for e in entries for p in e} if paired
              else set(scans["source"].good) | set(scans["target"].good))
    sizes = {**scans["source"].sizes, **scans["target"].sizes}
    decoded_bytes = sum(sizes[p][0] * sizes[p][1] * 3 for p in needed)
    cached = decoded_bytes <= cache_max_bytes
    cache: dict[Path, np.ndarray] | None = None
    if cached:  # decode everything once: a full check, and the cache
        cache = {}
        for side in ("source", "target"):
            files = [p for p in scans[side].good if p in needed]
            full, arrays = _scan_files(scans[side].folder, files, patch_size, decode=True, keep=True,
                                       progress=progress, desc=f"decoding {side}")
            cache.update(arrays)
            scans[side].sizes.update(full.sizes)  # decoded sizes (a PNG's late eXIf chunk can rotate it)
            scans[side].bad = sorted(scans[side].bad + full.bad, key=lambda b: b["path"])
            failed = {Path(b["path"]) for b in full.bad}
            scans[side].good = [p for p in scans[side].good if p not in failed]
            for p in failed:
                scans[side].sizes.pop(p, None)
        if paired:  # again: a pair with a file that failed the full decode is now unusable
            unusable_pairs.clear()
            entries = _usable_pairs(pairs, scans, unusable_pairs)
        for side in ("source", "target"):
            _require_usable(scans[side], _FLAGS[side], patch_size)
        decoded_bytes = sum(a.nbytes for a in cache.values())
    if paired and not entries:
        raise DataError(
            f"{_label(source_dir, _FLAGS['source'])} and {_label(target_dir, _FLAGS['target'])}: no usable pair "
            f"for paired training ({len(scans['source'].good)} and {len(scans['target'].good)} usable files, "
            f"{unmatched['count']} names without a partner, {len(unusable_pairs)} pairs unusable); pairs are "
            "matched by path without extension, then by file stem")

    report = DataReport(
        paired=bool(paired), patch_size=patch_size, global_batch_size=global_batch_size,
        per_process_batch_size=per_process, process_index=process_index, process_count=process_count, seed=seed,
        flips=bool(flips), rot90=bool(rot90),
        source=_side_report(scans["source"], _FLAGS["source"]), target=_side_report(scans["target"], _FLAGS["target"]),
        storage="cached" if cached else "streamed", decoded_bytes=int(decoded_bytes), cache_max_bytes=cache_max_bytes,
        runtime_failures=0)
    if paired:  # only the files of usable pairs are used
        report["source"]["used"], report["target"]["used"] = [str(a) for a, _ in entries], [str(b) for _, b in entries]
        report["pairs"] = {"num_usable": len(entries), "unusable": unusable_pairs}
        report["unmatched"] = unmatched
    fingerprint = hashlib.sha256()
    for line in ([f"{a}\t{b}" for a, b in entries] if paired else
                 [str(p) for p in scans["source"].good] + ["--"] + [str(p) for p in scans["target"].good]):
        fingerprint.update(line.encode() + b"\n")
    report["fingerprint"] = fingerprint.hexdigest()[:16]
    report["summary"] = report.summary_line()
    writer_dir = Path(workdir) if workdir is not None and process_index == 0 else None
    report_lock = threading.Lock()

    def on_failure(side: str, path: Path, reason: str, entry: tuple[Path, ...]) -> None:
        log.warning("data: %s %s failed to decode at run time (%s); using the next usable %s instead",
                    side, path, reason, "pair" if paired else "image")
        with report_lock:
            s = report[side]
            s["bad"].append({"path": str(path), "reason": reason, "kind": RUNTIME_FAILURE})
            s["num_bad"] += 1
            s["num_good"] = max(0, s["num_good"] - 1)
            if str(path) in s["used"]:
                s["used"].remove(str(path))
            s["skipped_by_kind"][RUNTIME_FAILURE] = s["skipped_by_kind"].get(RUNTIME_FAILURE, 0) + 1
            report["runtime_failures"] += 1
            if paired:
                report["pairs"]["num_usable"] = max(0, report["pairs"]["num_usable"] - 1)
                report["pairs"]["unusable"].append({"source": str(entry[0]), "target": str(entry[1]),
                                                    "reason": f"the {side} file {RUNTIME_FAILURE}: {reason}"})
            report["summary"] = report.summary_line()
            if writer_dir is not None:
                try:
                    _write_report(report, writer_dir)
                except OSError as e:
                    log.warning("data: could not update %s: %s", writer_dir / REPORT_FILE, e)

    def side_dataset(size: int, side_seed: int, fn: Callable) -> grain.MapDataset:
        return grain.MapDataset.source(range(size)).seed(side_seed).repeat().shuffle().random_map(fn)

    if paired:
        store = _Store(entries, ("source", "target"), patch_size, cache, on_failure)

        def pair_fn(index: int, rng: np.random.Generator) -> dict:
            a, b = store.get(index)
            params = _draw(rng, a.shape[0], a.shape[1], patch_size)
            return {"source": _patch(a, params, patch_size, flips, rot90),
                    "target": _patch(b, params, patch_size, flips, rot90)}

        ds = side_dataset(len(entries), _derived_seed(seed, 0), pair_fn)
    else:
        branches = []
        for stream, side in enumerate(("source", "target"), start=1):
            side_store = _Store([(p,) for p in scans[side].good], (side,), patch_size, cache, on_failure)

            def side_fn(index: int, rng: np.random.Generator, _store: _Store = side_store) -> np.ndarray:
                (image,) = _store.get(index)
                return _patch(image, _draw(rng, image.shape[0], image.shape[1], patch_size), patch_size, flips, rot90)

            branches.append(side_dataset(len(side_store.entries), _derived_seed(seed, stream), side_fn))
        ds = grain.experimental.ZipMapDataset(branches).map(lambda st: {"source": st[0], "target": st[1]})
    ds = _ProcessRows(ds, process_index, process_count, per_process).batch(per_process, drop_remainder=True)
    threads = min(8, os.cpu_count() or 1) if num_threads is None else num_threads
    iterator = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)))
    if writer_dir is not None:
        _write_report(report, writer_dir)
    return iterator, report


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


def _usable_pairs(pairs: Sequence[tuple[Path, Path]], scans: dict[str, ScanResult], unusable: list[dict]
                  ) -> list[tuple[Path, Path]]:
    good_s, good_t = set(scans["source"].good), set(scans["target"].good)
    entries = []
    for s, t in pairs:
        if s not in good_s or t not in good_t:
            which = " and ".join(side for side, ok in (("source", s in good_s), ("target", t in good_t)) if not ok)
            unusable.append({"source": str(s), "target": str(t), "reason": f"the {which} file is unusable"})
        elif scans["source"].sizes[s] != scans["target"].sizes[t]:
            (ws, hs), (wt, ht) = scans["source"].sizes[s], scans["target"].sizes[t]
            unusable.append({"source": str(s), "target": str(t),
                             "reason": f"sizes differ: source {ws}x{hs}, target {wt}x{ht}"})
        else:
            entries.append((s, t))
    return entries


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


# ------------------------------------------------------------------------------------------- other helpers

def dped_folders(root: str | os.PathLike, phone: str) -> tuple[Path, Path]:
    """``(source, target)`` = ``<root>/<phone>/training_data/<phone>`` and ``.../training_data/canon`` of the
    DPED dataset (``root`` is the ``dped`` folder). Raises :class:`DataError` naming what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.dped_root={root} does not exist or is not a folder (expected the DPED 'dped' folder "
                        "holding <phone>/training_data/{<phone>,canon})")
    if not phone:
        raise DataError(f"data.dped_phone is not set; phones under {root}: {_subfolders(root)}")
    training = root / phone / "training_data"
    if not (root / phone).is_dir():
        raise DataError(f"data.dped_phone={phone}: no folder {root / phone}; phones under {root}: {_subfolders(root)}")
    if not training.is_dir():
        raise DataError(f"DPED layout: {training} is missing (expected {training}/{phone} and {training}/canon)")
    source, target = training / phone, training / "canon"
    for path in (source, target):
        if not path.is_dir():
            raise DataError(f"DPED layout: {path} is missing; {training} holds {_subfolders(training)}")
    return source, target


def _subfolders(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return ", ".join(names) if names else "none"


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
            log.warning("data: skipping %s for the sample crops: %s", files[i], _strip_path(str(e), files[i]))
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
