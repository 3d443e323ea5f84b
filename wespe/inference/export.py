"""Exported generators: one self-contained ``.npz`` file holding a :class:`wespe.models.Generator`.

This is the hand-off format for inference (``launch/enhance.py --checkpoint=...``): NumPy alone reads it,
no orbax, no optimizer state, no discriminators. Training checkpoints are a different thing (orbax, every
network and optimizer); exporting the generator from one of them produces this file.

Format (version 1), an uncompressed NumPy ``.npz`` archive (``np.load(path, allow_pickle=False)`` reads it):

* ``__wespe_generator__``: a 1-D ``uint8`` array holding UTF-8 JSON::

      {"format": "wespe-generator", "version": 1,
       "config": {"width": 64, "num_blocks": 4, "norm": "instance", "channels": 3, "output": "dped",
                  "global_color": "none"},
       "variables": {"conv_in.kernel": {"type": "Param", "shape": [9, 9, 3, 64], "dtype": "float32"}, ...}}

  ``config`` holds the keyword arguments of ``Generator(...)``; ``variables`` lists every array below with
  its NNX variable type (``Param`` for weights, ``BatchStat`` for batch-norm running statistics).
* one array per NNX variable of the generator, named by its dotted module path, e.g. ``conv_in.kernel``,
  ``blocks.0.conv1.bias``, ``blocks.0.norm1.scale``, ``blocks.0.norm1.mean`` (batch norm only),
  ``conv_out.kernel``. Kernels are HWIO, as in :mod:`wespe.models`.

A *directory* may stand for the file: :func:`save_generator` given a path without the ``.npz`` suffix writes
``<dir>/generator.npz``, and :func:`wespe.inference.loading.load_exported_generator` given a directory reads
``<dir>/generator.npz`` (a training work directory carries its exported generator there).

:func:`wespe.inference.loading.load_exported_generator` rebuilds ``Generator(**config)`` and fills every variable; a
missing or unreadable file, a file that is not an exported generator, a newer format version, missing or
unexpected variables, and shape mismatches each raise :class:`ExportFormatError` naming the file (and the
variable).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
from flax import nnx

from wespe.atomic_write import atomic_write
from wespe.errors import UserError
from wespe.models import Generator

FORMAT_NAME = "wespe-generator"
FORMAT_VERSION = 1
METADATA_KEY = "__wespe_generator__"
DEFAULT_FILENAME = "generator.npz"
# The Generator(...) keywords a file's config may hold (files of version 1 written before "output" and
# "global_color" existed lack them: the defaults rebuild those generators).
CONFIG_KEYS = ("width", "num_blocks", "norm", "channels", "output", "global_color")


class ExportFormatError(UserError):
    """An exported generator file that is missing, unreadable, corrupt or does not fit the generator it describes."""


def generator_variables(generator: Generator) -> dict[str, nnx.Variable]:
    """Every array-valued NNX variable of the generator by dotted path (the model's own Variable objects)."""
    found = {}
    for path, node in nnx.iter_graph(generator):
        if isinstance(node, nnx.Variable) and not isinstance(node, nnx.RngState):
            found[".".join(str(p) for p in path)] = node
    return dict(sorted(found.items()))


def generator_config(generator: Generator) -> dict:
    """The ``Generator(...)`` keyword arguments that rebuild this generator's structure."""
    return {"width": int(generator.width), "num_blocks": int(generator.num_blocks), "norm": str(generator.norm),
            "channels": int(generator.conv_in.kernel.shape[2]), "output": str(generator.output),
            "global_color": str(generator.global_color)}


def export_path(path: str | os.PathLike) -> Path:
    """The file an export path names: ``path`` itself if it ends in ``.npz``, else ``path/generator.npz``."""
    path = Path(path)
    return path if path.suffix.lower() == ".npz" else path / DEFAULT_FILENAME


def save_generator(generator: Generator, path: str | os.PathLike) -> Path:
    """Write ``generator`` to ``path`` (a ``.npz`` file, or a directory that gets ``generator.npz``).

    The file is written to a temporary name and renamed, so a crash never leaves a half-written export.
    Returns the path of the written file.
    """
    target = export_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    variables = generator_variables(generator)
    arrays = {name: np.asarray(var[...]) for name, var in variables.items()}
    metadata = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "config": generator_config(generator),
        "variables": {name: {"type": type(variables[name]).__name__, "shape": list(a.shape), "dtype": str(a.dtype)}
                      for name, a in arrays.items()},
    }
    arrays[METADATA_KEY] = np.frombuffer(json.dumps(metadata, indent=1).encode("utf-8"), dtype=np.uint8)
    with atomic_write(target) as f:
        np.savez(f, **arrays)
    return target


def read_export(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The metadata and arrays of an exported generator file, checked as far as the file alone allows (format
    name, version, a config object); :func:`wespe.inference.loading.load_exported_generator` builds the generator."""
    if not path.exists():
        raise ExportFormatError(f"exported generator {path} does not exist")
    if not path.is_file():
        raise ExportFormatError(f"exported generator {path} is not a file")
    try:
        with open(path, "rb") as f:
            data = f.read()
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ExportFormatError(f"{path}: cannot read as an exported generator (.npz archive); the file is corrupt, "
                                f"truncated or not a wespe export ({type(e).__name__}: {e})") from e
    raw = arrays.pop(METADATA_KEY, None)
    if raw is None:
        raise ExportFormatError(f"{path}: a .npz archive without the {METADATA_KEY!r} entry; not a generator "
                                "written by wespe.inference.export.save_generator")
    try:
        metadata = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportFormatError(f"{path}: the {METADATA_KEY!r} metadata is not valid JSON ({e})") from e
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ExportFormatError(f"{path}: metadata does not declare format {FORMAT_NAME!r}")
    version = metadata.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ExportFormatError(f"{path}: export format version {version!r} is not supported by this wespe "
                                f"(reads versions 1..{FORMAT_VERSION}); upgrade wespe")
    if not isinstance(metadata.get("config"), dict):
        raise ExportFormatError(f"{path}: metadata has no generator 'config' object")
    return metadata, arrays
