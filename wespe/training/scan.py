"""Checking training photo folders: which files are usable, how paired files match, and the data report.

Everything here runs before training starts and decides *which files* the pipeline of :mod:`wespe.training.data` draws
from; nothing here cuts patches.

* **Folders**: :func:`check_folder` (exists, is a folder; errors name the flag, e.g. ``--source``),
  :func:`dped_folders` (the DPED dataset's layout).
* **Scanning**: :func:`scan_folder` / :func:`scan_training_folders` find the photos (recursive, sorted; the types of
  :data:`wespe.image_io.IMAGE_EXTENSIONS`) and sort them into usable and bad ones. A file is bad if it is not an
  image, is corrupt or truncated, or is smaller than the patch on a side after EXIF orientation. A header-only scan
  (:func:`wespe.image_io.upright_size`) is cheap; :func:`full_decode_check` decodes in full (catching bad pixel data)
  and hands back the arrays for an in-memory cache.
* **Pairing** (DPED's paired training): :func:`pair_files` matches the files by :func:`wespe.image_paths.match_pairs`
  (the rule evaluation pairs by too); names found on one side only, and pairs whose two images differ in size, are
  left out and reported.
* **The report** (``<workdir>/data_report.json``, :class:`DataReport`) names, per side, the files ``used`` (for
  paired data: those of the usable pairs) and the ``bad`` ones, each with its reason and kind; a file that fails at
  run time moves from the first list to the second (:meth:`DataReport.record_runtime_failure`).

Unusable data raises :class:`DataError` before anything compiles, naming the flag and the folder.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wespe.atomic_write import atomic_write
from wespe.errors import UserError
from wespe.image_io import CORRUPT, IMAGE_EXTENSIONS, ImageReadError, read_image, upright_size
from wespe.image_paths import image_key, list_images, match_pairs

REPORT_FILE = "data_report.json"
SCAN_THREADS = max(2, min(4, os.cpu_count() or 2))
PROGRESS_MIN_FILES = 500  # show a tqdm bar when scanning / caching at least this many files
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

    def record_runtime_failure(self, side: str, path: Path, reason: str, entry: tuple[Path, ...]) -> None:
        """Move ``path`` (of ``entry``: a file, or a source/target pair) from the used files to the bad ones."""
        s = self[side]
        s["bad"].append({"path": str(path), "reason": reason, "kind": RUNTIME_FAILURE})
        s["num_bad"] += 1
        s["num_good"] = max(0, s["num_good"] - 1)
        if str(path) in s["used"]:
            s["used"].remove(str(path))
        s["skipped_by_kind"][RUNTIME_FAILURE] = s["skipped_by_kind"].get(RUNTIME_FAILURE, 0) + 1
        self["runtime_failures"] += 1
        if self["paired"]:
            self["pairs"]["num_usable"] = max(0, self["pairs"]["num_usable"] - 1)
            self["pairs"]["unusable"].append({"source": str(entry[0]), "target": str(entry[1]),
                                              "reason": f"the {side} file {RUNTIME_FAILURE}: {reason}"})
        self["summary"] = self.summary_line()


def _kinds_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())


def _bytes_text(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.{0 if n >= 10 * size else 1}f} {unit}"
    return f"{n} B"


# -------------------------------------------------------------------------------------------------- folders

def _label(folder: str | os.PathLike, flag: str | None) -> str:
    return f"{flag}={folder}" if flag else str(folder)


def check_folder(folder: str | os.PathLike, flag: str | None) -> Path:
    path = Path(folder)
    if not path.exists():
        raise DataError(f"{_label(folder, flag)} does not exist")
    if not path.is_dir():
        raise DataError(f"{_label(folder, flag)} is not a folder")
    return path


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


# ------------------------------------------------------------------------------------------------- scanning

def without_path_prefix(message: str, path: Path) -> str:
    """An error message without the ``"<path>: "`` that ImageReadError puts first (the report names the file)."""
    return message.removeprefix(f"{path}: ")


def _check_file(path: Path, patch_size: int, decode: bool, keep: bool
                ) -> tuple[tuple[int, int] | None, np.ndarray | None, dict | None]:
    """(upright size, decoded array if ``keep``, bad entry or None) for one file."""
    try:
        if decode:
            array, _ = read_image(path)
            size = (array.shape[1], array.shape[0])
        else:
            array, size = None, upright_size(path)
    except ImageReadError as e:
        message = without_path_prefix(str(e), path)
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


def scan_training_folders(source_dir: str | os.PathLike, target_dir: str | os.PathLike, patch_size: int, *,
                          progress: bool) -> dict[str, ScanResult]:
    """Header-only scans of the ``--source`` and ``--target`` folders, keyed by side; raises :class:`DataError`
    for a missing folder, the same folder twice, or a side without a usable photo."""
    source_path = check_folder(source_dir, _FLAGS["source"])
    target_path = check_folder(target_dir, _FLAGS["target"])
    if source_path.resolve() == target_path.resolve():
        raise DataError(f"{_label(source_dir, _FLAGS['source'])} and {_label(target_dir, _FLAGS['target'])} are "
                        "the same folder; the source and target photos must be different sets")
    scans = {}
    for side, path in (("source", source_path), ("target", target_path)):
        scans[side], _ = _scan_files(path, list_images([path]), patch_size, decode=False, progress=progress,
                                     desc=f"scanning {side}")
        _require_usable(scans[side], _FLAGS[side], patch_size)
    return scans


def full_decode_check(scans: dict[str, ScanResult], needed: Collection[Path], patch_size: int, *,
                      progress: bool) -> dict[Path, np.ndarray]:
    """Decode the ``needed`` good files of both sides in full and return their arrays (the in-memory cache).

    Files that fail move to their scan's ``bad`` list, and the decoded sizes replace the header ones (a PNG's late
    eXIf chunk can rotate it). Raises :class:`DataError` if a side is left without a usable photo."""
    cache: dict[Path, np.ndarray] = {}
    for side in ("source", "target"):
        files = [p for p in scans[side].good if p in needed]
        full, arrays = _scan_files(scans[side].folder, files, patch_size, decode=True, keep=True,
                                   progress=progress, desc=f"decoding {side}")
        cache.update(arrays)
        scans[side].sizes.update(full.sizes)
        scans[side].bad = sorted(scans[side].bad + full.bad, key=lambda b: b["path"])
        failed = {Path(b["path"]) for b in full.bad}
        scans[side].good = [p for p in scans[side].good if p not in failed]
        for p in failed:
            scans[side].sizes.pop(p, None)
    for side in ("source", "target"):
        _require_usable(scans[side], _FLAGS[side], patch_size)
    return cache


# -------------------------------------------------------------------------------------------------- pairing

@dataclasses.dataclass
class Pairing:
    """Paired data: the files matched across the two folders (``matched``), those of them usable (``usable``:
    both files good and the same size) and why the others are not (``unusable``, report entries)."""

    matched: list[tuple[Path, Path]]
    unmatched: dict  # names without a partner, as the report lists them: {"count", "source", "target"}
    usable: list[tuple[Path, Path]] = dataclasses.field(default_factory=list)
    unusable: list[dict] = dataclasses.field(default_factory=list)

    def refresh(self, scans: dict[str, ScanResult]) -> None:
        """Recompute ``usable`` / ``unusable`` from the scans (after a full decode has found more bad files)."""
        self.usable, self.unusable = _usable_pairs(self.matched, scans)


def _usable_pairs(pairs: Sequence[tuple[Path, Path]], scans: dict[str, ScanResult]
                  ) -> tuple[list[tuple[Path, Path]], list[dict]]:
    good_s, good_t = set(scans["source"].good), set(scans["target"].good)
    entries, unusable = [], []
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
    return entries, unusable


def pair_files(scans: dict[str, ScanResult]) -> Pairing:
    """Match every scanned file (good or bad, so that a bad one is reported as an unusable pair, not unmatched)."""
    all_s = sorted(list(scans["source"].good) + [Path(b["path"]) for b in scans["source"].bad], key=str)
    all_t = sorted(list(scans["target"].good) + [Path(b["path"]) for b in scans["target"].bad], key=str)
    pairs, left_s, left_t = match_pairs([(image_key(p, scans["source"].folder), p) for p in all_s],
                                        [(image_key(p, scans["target"].folder), p) for p in all_t])
    pairing = Pairing(matched=pairs, unmatched={"count": len(left_s) + len(left_t), "source": [str(p) for p in left_s],
                                                "target": [str(p) for p in left_t]})
    pairing.refresh(scans)
    return pairing


def require_pairs(pairing: Pairing, scans: dict[str, ScanResult], source_dir: str | os.PathLike,
                  target_dir: str | os.PathLike) -> None:
    if not pairing.usable:
        raise DataError(
            f"{_label(source_dir, _FLAGS['source'])} and {_label(target_dir, _FLAGS['target'])}: no usable pair "
            f"for paired training ({len(scans['source'].good)} and {len(scans['target'].good)} usable files, "
            f"{pairing.unmatched['count']} names without a partner, {len(pairing.unusable)} pairs unusable); pairs "
            "are matched by path without extension, then by file stem")


# --------------------------------------------------------------------------------------------------- report

def _side_report(scan: ScanResult, flag: str) -> dict:
    return {"folder": str(scan.folder), "flag": flag, "num_files": scan.num_files, "num_good": len(scan.good),
            "num_bad": len(scan.bad), "skipped_by_kind": scan.skipped_by_kind(), "bad": list(scan.bad),
            "used": [str(p) for p in scan.good]}


def training_report(settings: dict, scans: dict[str, ScanResult], pairing: Pairing | None, *, storage: str,
                    decoded_bytes: int, cache_max_bytes: int) -> DataReport:
    """The report of a training run: the pipeline's ``settings`` (``paired``, ``patch_size``, ..., written first,
    in their order), each side's files, the pairs, and a fingerprint of the files used."""
    report = DataReport(
        **settings,
        source=_side_report(scans["source"], _FLAGS["source"]), target=_side_report(scans["target"], _FLAGS["target"]),
        storage=storage, decoded_bytes=int(decoded_bytes), cache_max_bytes=cache_max_bytes, runtime_failures=0)
    if pairing is not None:  # only the files of usable pairs are used
        entries = pairing.usable
        report["source"]["used"], report["target"]["used"] = [str(a) for a, _ in entries], [str(b) for _, b in entries]
        report["pairs"] = {"num_usable": len(entries), "unusable": pairing.unusable}
        report["unmatched"] = pairing.unmatched
    fingerprint = hashlib.sha256()
    for line in ([f"{a}\t{b}" for a, b in pairing.usable] if pairing is not None else
                 [str(p) for p in scans["source"].good] + ["--"] + [str(p) for p in scans["target"].good]):
        fingerprint.update(line.encode() + b"\n")
    report["fingerprint"] = fingerprint.hexdigest()[:16]
    report["summary"] = report.summary_line()
    return report


def write_report(report: DataReport, workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    with atomic_write(workdir / REPORT_FILE) as f:
        f.write((json.dumps(report, indent=2) + "\n").encode("utf-8"))
