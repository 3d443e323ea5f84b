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
``<dir>/generator.npz``, and :func:`load_generator` given a directory reads ``<dir>/generator.npz`` (a training
work directory can carry its exported generator there).

:func:`load_generator` rebuilds ``Generator(**config)`` and fills every variable; a missing or unreadable file,
a file that is not an exported generator, a newer format version, missing or unexpected variables, and shape
mismatches each raise :class:`ExportFormatError` naming the file (and the variable).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wespe.errors import UserError
from wespe.models import Generator
from wespe.files import atomic_write

FORMAT_NAME = "wespe-generator"
FORMAT_VERSION = 1
METADATA_KEY = "__wespe_generator__"
DEFAULT_FILENAME = "generator.npz"


class ExportFormatError(UserError):
    """An exported generator file that is missing, unreadable, corrupt or does not fit the generator it describes."""


def _variables(generator: Generator) -> dict[str, nnx.Variable]:
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
    variables = _variables(generator)
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


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
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
                                "written by wespe.export.save_generator")
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


def load_generator(path: str | os.PathLike) -> Generator:
    """Rebuild the generator stored by :func:`save_generator` at ``path`` (a ``.npz`` file, or a directory
    holding ``generator.npz``)."""
    path = Path(path)
    file = path / DEFAULT_FILENAME if path.is_dir() else path
    if path.is_dir() and not file.exists():
        raise ExportFormatError(f"{path} is a directory without an exported generator ({DEFAULT_FILENAME}) in it")
    metadata, arrays = _read(file)
    config = metadata["config"]
    allowed = {"width", "num_blocks", "norm", "channels", "output", "global_color"}  # the last two: optional
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ExportFormatError(f"{file}: unknown generator config key(s) {', '.join(unknown)}")
    try:
        # Abstract construction: no random initialisation to run (its first eager use compiles for seconds).
        generator = nnx.eval_shape(lambda: Generator(**config, rngs=nnx.Rngs(0)))
    except (TypeError, ValueError) as e:
        raise ExportFormatError(f"{file}: invalid generator config {config}: {e}") from e
    variables = _variables(generator)
    missing = sorted(set(variables) - set(arrays))
    unexpected = sorted(set(arrays) - set(variables))
    if missing or unexpected:
        details = "; ".join(part for part in (
            f"missing {', '.join(missing)}" if missing else "",
            f"unexpected {', '.join(unexpected)}" if unexpected else "") if part)
        raise ExportFormatError(f"{file}: variables do not match a Generator with config {config} ({details})")
    for name, var in variables.items():
        value, expected = arrays[name], var.get_value()  # expected: a jax.ShapeDtypeStruct
        if value.shape != tuple(expected.shape):
            raise ExportFormatError(f"{file}: variable {name} has shape {value.shape}, but a Generator with config "
                                    f"{config} needs {tuple(expected.shape)}")
        if not np.issubdtype(value.dtype, np.floating):
            raise ExportFormatError(f"{file}: variable {name} has dtype {value.dtype}, expected a float array")
        var.set_value(jnp.asarray(value, dtype=expected.dtype))
    unfilled = [".".join(map(str, path)) for path, node in nnx.iter_graph(generator)
                if isinstance(node, nnx.Variable) and isinstance(node.get_value(), jax.ShapeDtypeStruct)]
    if unfilled:  # e.g. RNG state, which this format does not store
        raise ExportFormatError(f"{file}: the generator has variables this format does not store: "
                                f"{', '.join(unfilled)}")
    return generator
