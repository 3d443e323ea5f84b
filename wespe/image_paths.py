"""Which photo files the inputs name, and where their outputs go: the listing and output planning behind
``launch/enhance.py``, evaluation and the training folders.

Folders are searched recursively for :data:`wespe.image_io.IMAGE_EXTENSIONS` (any case; hidden files and folders
skipped); a file named explicitly is taken whatever its extension. Outputs keep the path relative to the folder
they were found in, and every clash (two inputs to one output, an output overwriting its input, an output folder
that is a file, or that is an input folder or holds one) is an error before any work.

An output folder inside an input folder is fine: whatever lies under it is left out when that input folder is
searched (``exclude``), so a rerun does not take its own earlier outputs (enhanced photos, ``best_worst.png``)
for inputs. ``launch/enhance.py``, ``launch/evaluate.py`` and ``launch/sweep.py`` all rely on this.

A file that cannot be resolved (a symlink loop: ``a.jpg -> b.jpg -> a.jpg``) is listed like any other, so that
reading it reports it as a bad file (:func:`wespe.image_io.read_image` says "symlink loop") and the others go on.

**Pairing** (the one rule of training's paired mode, the held-out references and evaluation's references): a
photo's *key* is its path relative to the folder it was found in, without the extension (``sub/0001.jpg`` ->
``sub/0001``; a file named directly: its stem). :func:`match_pairs` pairs the photos whose key is held by exactly
one photo on each side, then, among the photos left, those whose file stem is held by exactly one photo on each
side (``sub/0001.jpg`` <-> ``0001.png``, a folder nested on one side only). A key or stem held by two photos of a
side (``a.jpg`` + ``a.png``) pairs neither: which one was meant is a guess. :func:`index_images` keys the photos of
an input for evaluation, keeping the first of a duplicated key and reporting the others.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from wespe.errors import PathNotFoundError, UserError
from wespe.image_io import IMAGE_EXTENSIONS

S = TypeVar("S")
T = TypeVar("T")


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def resolved(path: str | os.PathLike) -> Path:
    """``Path(path).resolve()``, except that a symlink loop (which ``resolve`` raises on: ``RuntimeError`` before
    Python 3.13) gives the absolute path as it is: such a file is still listed, and reported when it is read."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):
        return Path(os.path.abspath(path))


def _expand(inputs: Iterable[str | os.PathLike], exclude: Iterable[str | os.PathLike] = ()
            ) -> list[tuple[Path, Path]]:
    """(image path, path relative to its output folder) for each input, deduplicated by resolved path."""
    excluded = [resolved(p) for p in exclude]
    seen: set[Path] = set()
    found: list[tuple[Path, Path]] = []

    def add(path: Path, relative: Path, *, found_in_folder: bool) -> None:
        key = resolved(path)
        if key in seen or (found_in_folder and any(key.is_relative_to(e) for e in excluded)):
            return
        seen.add(key)
        found.append((path, relative))

    for item in inputs:
        item = Path(item)
        if item.is_dir():
            for folder, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
                for name in sorted(files):
                    if not _is_hidden(name) and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                        path = Path(folder) / name
                        add(path, path.relative_to(item), found_in_folder=True)
        elif item.exists():
            add(item, Path(item.name), found_in_folder=False)  # named explicitly: taken whatever its extension
        else:
            raise PathNotFoundError(f"input {item} does not exist")
    return found


def list_images(inputs: Iterable[str | os.PathLike], *, exclude: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """The photos named by ``inputs``: files as given (any extension), folders searched recursively for
    .jpg/.jpeg/.png/.webp/.tif/.tiff/.bmp (any case; hidden files and folders skipped). Sorted, each file once
    (by resolved path); files found in folders under ``exclude`` are left out. A missing input raises
    ``FileNotFoundError``."""
    return sorted((path for path, _ in _expand(inputs, exclude)), key=str)


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    """Raise ``ValueError`` if ``output_dir`` cannot become a folder to write into: it, or a folder above it, is
    an existing file, or the nearest existing folder is not writable. Cheap: call it before loading models."""
    output_dir = Path(output_dir)
    for path in (output_dir, *output_dir.parents):
        if not path.exists():
            continue
        if not path.is_dir():
            what = "is a file" if path == output_dir else f"lies under {path}, a file"
            raise UserError(f"output folder {output_dir} {what}, not a folder: choose another output folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"output folder {output_dir}: {path} is not writable")
        break
    return output_dir


def check_output_apart(output_dir: str | os.PathLike, inputs: Mapping[str, Iterable[str | os.PathLike | None]],
                       output_flag: str) -> None:
    """Raise :class:`UserError` if the output folder is one of the input folders, or holds one. Writing into an
    input folder mixes the outputs with the photos (replacing those of the same name, and a rerun would read
    them back as inputs); and everything under the output folder is left out of the inputs (``exclude``), so an
    input folder inside it would yield no photo at all. An output folder *inside* an input folder is fine.

    ``inputs``: ``{what: paths}``, ``what`` naming them in the message ("input", "--source"); files and missing
    paths are ignored (only a folder is searched). ``output_flag``: how the message names ``output_dir``."""
    output = resolved(output_dir)
    for what, paths in inputs.items():
        for path in paths:
            if path is None or not Path(path).is_dir():
                continue
            folder = resolved(path)
            if folder == output:
                relation, problem = "is", ("the outputs would land among the photos read (and replace those of "
                                           "the same name)")
            elif folder.is_relative_to(output):
                relation, problem = "holds", ("everything under the output folder is left out of the inputs (so "
                                              "that a rerun does not read its own outputs), which would leave no "
                                              "photo to read")
            else:
                continue
            raise UserError(f"{output_flag}={output_dir} {relation} the {what} folder {path}: {problem}; choose an "
                            f"output folder outside the inputs (a sub-folder of {path} is fine: it is left out of "
                            "the inputs)")


def plan_outputs(inputs: Iterable[str | os.PathLike], output_dir: str | os.PathLike, *,
                 output_flag: str = "--output") -> list[tuple[Path, Path]]:
    """``(input, output)`` pairs: a file named directly goes to ``output_dir/<name>``, a file found in a folder
    to ``output_dir/<its path relative to that folder>``. Files found under ``output_dir`` while searching an
    input folder are skipped (a rerun does not enhance earlier outputs).

    Raises ``ValueError`` before any work if ``output_dir`` cannot be a folder (:func:`check_output_dir`), is an
    input folder or holds one (:func:`check_output_apart`; ``output_flag`` names it), two inputs would be
    written to the same output, or an output would overwrite its input; ``FileNotFoundError`` for a missing
    input.
    """
    inputs = list(inputs)
    output_dir = check_output_dir(output_dir)
    check_output_apart(output_dir, {"input": inputs}, output_flag)
    pairs = sorted(((path, output_dir / relative) for path, relative in _expand(inputs, exclude=[output_dir])),
                   key=lambda pair: str(pair[0]))
    _check_distinct(pairs)
    return pairs


def _check_distinct(pairs: Sequence[tuple[Path, Path]]) -> None:
    owners: dict[Path, Path] = {}
    for source, target in pairs:
        key = resolved(target)
        if key == resolved(source):
            raise UserError(f"output {target} would overwrite its input; choose another output folder")
        if key in owners:
            raise UserError(f"inputs {owners[key]} and {source} would both be written to {target}; "
                             "enhance them into separate output folders")
        owners[key] = source


def image_key(path: Path, folder: Path | None = None) -> str:
    """The pairing key of ``path`` (module docstring): its path relative to ``folder`` without the extension, or,
    for a file named directly (``folder`` None), its stem."""
    return path.relative_to(folder).with_suffix("").as_posix() if folder is not None else path.stem


def keyed_images(inputs: str | os.PathLike | Sequence[str | os.PathLike], *,
                 exclude: Sequence[str | os.PathLike] = ()) -> list[tuple[str, Path]]:
    """``(key, path)`` of every photo named by ``inputs`` (a folder, a file, or a list of both; see
    :func:`list_images` for what a folder yields and ``exclude``), in the order of ``inputs``, each folder's photos
    sorted. A missing input raises ``FileNotFoundError``."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: list[tuple[str, Path]] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found += [(image_key(p, item), p) for p in list_images([item], exclude=exclude)]
        elif item.exists():
            found.append((image_key(item), item))
        else:
            raise PathNotFoundError(f"{item} does not exist")
    return found


def index_keyed(found: Iterable[tuple[str, Path]]) -> tuple[dict[str, Path], list[dict]]:
    """``({key: path}, duplicates)`` of :func:`keyed_images` output: the first photo of a key is kept (the index is
    sorted by key) and each later one is a skipped entry (``name``, ``path``, ``reason``)."""
    index: dict[str, Path] = {}
    duplicates: list[dict] = []
    for key, path in found:
        if key in index:
            duplicates.append({"name": key, "path": str(path),
                               "reason": f"another file has the same name without extension ({index[key]})"})
        else:
            index[key] = path
    return dict(sorted(index.items())), duplicates


def index_images(inputs: str | os.PathLike | Sequence[str | os.PathLike], *,
                 exclude: Sequence[str | os.PathLike] = ()) -> tuple[dict[str, Path], list[dict]]:
    """``{key: path}`` for the photos named by ``inputs`` (a folder, a file, or a list of both), keyed as the
    module docstring says. Duplicate keys are returned as skipped entries. Photos found under an ``exclude``
    folder are left out."""
    return index_keyed(keyed_images(inputs, exclude=exclude))


def _stem(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def match_pairs(source: Sequence[tuple[str, S]], target: Sequence[tuple[str, T]]
                ) -> tuple[list[tuple[S, T]], list[S], list[T]]:
    """Pair ``(key, item)`` entries of two sides by the rule of the module docstring: by key, then the rest by
    stem (the key's last component), each only where it is held by exactly one entry on each side.

    Returns ``(pairs, unpaired source items, unpaired target items)``: the pairs in the order of ``source``, the
    unpaired items in their input order."""
    partner: dict[int, int] = {}  # source position -> target position
    left_s, left_t = list(range(len(source))), list(range(len(target)))
    for name_of in (lambda key: key, _stem):
        by_s: dict[str, list[int]] = collections.defaultdict(list)
        by_t: dict[str, list[int]] = collections.defaultdict(list)
        for i in left_s:
            by_s[name_of(source[i][0])].append(i)
        for j in left_t:
            by_t[name_of(target[j][0])].append(j)
        for name, ss in by_s.items():
            ts = by_t.get(name, [])
            if len(ss) == 1 and len(ts) == 1:
                partner[ss[0]] = ts[0]
        paired_t = set(partner.values())
        left_s = [i for i in left_s if i not in partner]
        left_t = [j for j in left_t if j not in paired_t]
    pairs = [(source[i][1], target[partner[i]][1]) for i in sorted(partner)]
    return pairs, [source[i][1] for i in left_s], [target[j][1] for j in left_t]


def partners(names: Iterable[str], found: Sequence[tuple[str, T]]) -> dict[str, T]:
    """``{name: item}``: the entry of ``found`` (``(key, item)``) that each key of ``names`` pairs with by
    :func:`match_pairs`; names without a partner are absent."""
    pairs, _, _ = match_pairs([(name, name) for name in names], found)
    return dict(pairs)
