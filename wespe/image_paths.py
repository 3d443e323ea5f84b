"""Which photo files the inputs name, and where their outputs go: the listing and output planning behind
``launch/enhance.py``, evaluation and the training folders.

Folders are searched recursively for :data:`wespe.image_io.IMAGE_EXTENSIONS` (any case; hidden files and folders
skipped); a file named explicitly is taken whatever its extension. Outputs keep the path relative to the folder
they were found in, and every clash (two inputs to one output, an output overwriting its input, an output folder
that is a file) is an error before any work.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from wespe.errors import PathNotFoundError, UserError
from wespe.image_io import IMAGE_EXTENSIONS


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _expand(inputs: Iterable[str | os.PathLike], exclude: Iterable[str | os.PathLike] = ()
            ) -> list[tuple[Path, Path]]:
    """(image path, path relative to its output folder) for each input, deduplicated by resolved path."""
    excluded = [Path(p).resolve() for p in exclude]
    seen: set[Path] = set()
    found: list[tuple[Path, Path]] = []

    def add(path: Path, relative: Path, *, found_in_folder: bool) -> None:
        key = path.resolve()
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


def plan_outputs(inputs: Iterable[str | os.PathLike], output_dir: str | os.PathLike
                 ) -> list[tuple[Path, Path]]:
    """``(input, output)`` pairs: a file named directly goes to ``output_dir/<name>``, a file found in a folder
    to ``output_dir/<its path relative to that folder>``. Files found under ``output_dir`` while searching an
    input folder are skipped (a rerun does not enhance earlier outputs).

    Raises ``ValueError`` before any work if ``output_dir`` cannot be a folder (:func:`check_output_dir`), two
    inputs would be written to the same output, or an output would overwrite its input; ``FileNotFoundError``
    for a missing input.
    """
    output_dir = check_output_dir(output_dir)
    pairs = sorted(((path, output_dir / relative) for path, relative in _expand(inputs, exclude=[output_dir])),
                   key=lambda pair: str(pair[0]))
    _check_distinct(pairs)
    return pairs


def _check_distinct(pairs: Sequence[tuple[Path, Path]]) -> None:
    owners: dict[Path, Path] = {}
    for source, target in pairs:
        key = target.resolve()
        if key == source.resolve():
            raise UserError(f"output {target} would overwrite its input; choose another output folder")
        if key in owners:
            raise UserError(f"inputs {owners[key]} and {source} would both be written to {target}; "
                             "enhance them into separate output folders")
        owners[key] = source
