"""Getting a generator from anything: the one home of generator loading.

==========================================  ====================================================================
:func:`load_generator` (``wespe.``)         any of the below, told apart by what ``source`` is
:func:`load_dped_generator`                 the DPED authors' released generators (``dped_iphone``,
                                            ``dped_blackberry``, ``dped_sony`` in ``weights_dir``), or any
                                            TensorFlow checkpoint prefix of that network
:func:`load_exported_generator`             a file written by :func:`wespe.inference.export.save_generator`
                                            (``.npz``), or a folder holding ``generator.npz``
:func:`load_checkpoint_generator`           G of a training checkpoint of a workdir (its moving average when the
                                            run keeps one), built with the config saved in that checkpoint; by
                                            default the newest one that reads back intact
:func:`generator_for_flags`                 what the command lines' ``--pretrained`` / ``--checkpoint`` /
                                            ``--weights_dir`` name, with a description to print
==========================================  ====================================================================

The file formats themselves live in :mod:`wespe.inference.tf_checkpoint` (TensorFlow bundles),
:mod:`wespe.inference.pretrained` (DPED's variable names), :mod:`wespe.inference.export` (wespe's ``.npz``) and
:mod:`wespe.checkpoint` (orbax); this module turns each into a :class:`wespe.models.Generator`. Every loader builds
the network abstractly (``nnx.eval_shape``: no random initialiser runs) and fills every variable, or raises a
:class:`wespe.errors.UserError` naming the file and what is wrong with it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wespe import conv_tuning
from wespe.errors import UserError
from wespe.inference import export, pretrained
from wespe.inference.export import ExportFormatError
from wespe.inference.tf_checkpoint import TFCheckpointError, read_tf_checkpoint
from wespe.models import Generator

__all__ = ["checkpoint_steps", "generator_for_flags", "load_checkpoint_generator", "load_dped_generator",
           "load_exported_generator", "load_generator"]

logger = logging.getLogger(__name__)


def load_dped_generator(name_or_prefix: str | os.PathLike,
                        weights_dir: str | os.PathLike | None = None) -> Generator:
    """A default :class:`wespe.models.Generator` (width 64, 4 blocks, instance norm) holding official DPED weights.

    ``name_or_prefix``: ``dped_iphone``, ``dped_blackberry`` or ``dped_sony`` (the files
    ``{iphone,blackberry,sony}_orig.*`` inside ``weights_dir``), or an explicit checkpoint prefix such as
    ``path/to/models_orig/iphone_orig``. Every expected variable must be present with the right shape.
    """
    prefix = pretrained.checkpoint_prefix(name_or_prefix, weights_dir)
    tensors = read_tf_checkpoint(prefix)
    model = nnx.eval_shape(lambda: Generator(rngs=nnx.Rngs(0)))
    mapping = pretrained.dped_variable_map(model.num_blocks)
    missing = [name for name in mapping if name not in tensors]
    if missing:
        raise TFCheckpointError(f"{prefix}: not a DPED generator checkpoint; missing variable(s) "
                                f"{', '.join(missing)}")
    for name, path in mapping.items():
        module = model
        for attr in path[:-1]:
            module = module[attr] if isinstance(attr, int) else getattr(module, attr)
        param = getattr(module, path[-1])
        value = tensors[name]
        if value.shape != tuple(param.shape):
            raise TFCheckpointError(f"{prefix}: variable {name} has shape {value.shape}, expected "
                                    f"{tuple(param.shape)} for {'.'.join(map(str, path))}")
        param.set_value(jnp.asarray(value, dtype=param.dtype))
    return model


def load_exported_generator(path: str | os.PathLike) -> Generator:
    """Rebuild the generator :func:`wespe.inference.export.save_generator` stored at ``path`` (a ``.npz`` file, or a
    directory holding ``generator.npz``); :class:`wespe.inference.export.ExportFormatError` for anything that does not
    fit."""
    path = Path(path)
    file = path / export.DEFAULT_FILENAME if path.is_dir() else path
    if path.is_dir() and not file.exists():
        raise ExportFormatError(f"{path} is a directory without an exported generator ({export.DEFAULT_FILENAME}) "
                                "in it")
    metadata, arrays = export.read_export(file)
    config = metadata["config"]
    unknown = sorted(set(config) - set(export.CONFIG_KEYS))
    if unknown:
        raise ExportFormatError(f"{file}: unknown generator config key(s) {', '.join(unknown)}")
    try:
        generator = nnx.eval_shape(lambda: Generator(**config, rngs=nnx.Rngs(0)))
    except (TypeError, ValueError) as e:
        raise ExportFormatError(f"{file}: invalid generator config {config}: {e}") from e
    variables = export.generator_variables(generator)
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
    unfilled = [".".join(map(str, p)) for p, node in nnx.iter_graph(generator)
                if isinstance(node, nnx.Variable) and isinstance(node.get_value(), jax.ShapeDtypeStruct)]
    if unfilled:  # e.g. RNG state, which this format does not store
        raise ExportFormatError(f"{file}: the generator has variables this format does not store: "
                                f"{', '.join(unfilled)}")
    return generator


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
    """The finished checkpoint steps of a training workdir, ascending (empty if it has none)."""
    from wespe.checkpoint import Checkpointer  # orbax: only where a checkpoint is read
    folder = Path(workdir) / "checkpoints"
    if not folder.is_dir():
        return []
    with Checkpointer(folder, read_only=True) as ckpt:
        return ckpt.all_steps()


def load_checkpoint_generator(workdir: str | os.PathLike, step: int | None = None) -> tuple[Generator, int]:
    """G of training checkpoint ``step`` of ``workdir``, built with the config saved in that checkpoint (its
    moving average when the run keeps one). Returns ``(generator, step)``.

    ``step`` given: that checkpoint, or a :class:`wespe.checkpoint.CheckpointError` naming why it cannot be read.
    By default: the newest finished checkpoint that reads back intact; a damaged newer one (a file that differs
    from its checksum, a truncated file) is skipped with a warning naming it and why. Only read: nothing is
    moved (a training run resuming there sets damaged checkpoints aside itself)."""
    from wespe.checkpoint import Checkpointer, CheckpointError, CheckpointMismatchError

    workdir = Path(workdir)
    with Checkpointer(workdir / "checkpoints", read_only=True) as ckpt:
        if step is not None:
            return _checkpoint_generator(ckpt, int(step)), int(step)
        steps = ckpt.all_steps()[::-1]  # newest first
        if not steps:
            raise UserError(f"{workdir / 'checkpoints'} holds no finished checkpoint")
        damaged = []
        for candidate in steps:
            try:
                generator = _checkpoint_generator(ckpt, candidate)
            except CheckpointMismatchError:
                raise  # intact, but not the network this wespe builds: the older ones would not match either
            except CheckpointError as e:
                damaged.append((candidate, str(e)))
                continue
            for bad, why in damaged:
                logger.warning("checkpoint step %d of %s cannot be read back (%s); using step %d, the newest "
                               "intact one", bad, workdir, why, candidate)
            return generator, candidate
    raise CheckpointError(f"no checkpoint in {workdir / 'checkpoints'} can be read back ("
                          + "; ".join(f"step {bad}: {why}" for bad, why in damaged) + ")")


def _checkpoint_generator(ckpt, step: int) -> Generator:
    """G of checkpoint ``step`` of the read-only :class:`wespe.checkpoint.Checkpointer` ``ckpt``."""
    from wespe import config as configs
    from wespe import train_step
    from wespe.checkpoint import CheckpointError

    metadata = ckpt.metadata(step)
    if "config" not in metadata:
        raise CheckpointError(f"could not read checkpoint {ckpt.step_directory(step)}: its metadata has no config")
    config = configs.from_saved(metadata["config"])
    abstract, graphdefs = train_step.abstract_train_state(config)  # traced only: no initialiser runs
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)
    state, _ = ckpt.restore(step, like=like)
    return train_step.generator_from_state(state, graphdefs)


def _is_tf_prefix(source: str) -> bool:
    return source.endswith(".index") or os.path.isfile(source + ".index")


def _load(source: str | os.PathLike, weights_dir: str | os.PathLike | None, what: str) -> tuple[Generator, str]:
    """:func:`load_generator`, and what was loaded in words. ``what``: how errors name ``source``."""
    text = str(source)
    if text in pretrained.PRETRAINED or (weights_dir is not None and not os.path.exists(text)):
        return load_dped_generator(text, weights_dir), text
    if weights_dir is not None:
        raise UserError(f"{what}={text} names its generator itself: give it without --weights_dir (which only "
                        f"locates the official DPED generators {', '.join(sorted(pretrained.PRETRAINED))})")
    path = Path(source)
    if path.is_dir():
        if checkpoint_steps(path):
            generator, step = load_checkpoint_generator(path)  # the newest intact one
            return generator, f"{path} checkpoint step {step}"
        if not (path / export.DEFAULT_FILENAME).exists():
            raise UserError(f"{what}={path}: the folder holds neither a finished training checkpoint "
                            f"(checkpoints/<step>) nor an exported generator ({export.DEFAULT_FILENAME})")
    elif path.suffix.lower() != ".npz" and _is_tf_prefix(text):
        return load_dped_generator(text), text
    elif path.suffix.lower() != ".npz" and not path.exists():
        raise UserError(f"{what}={text}: no such file or folder, and not one of the official DPED generators "
                        f"{', '.join(sorted(pretrained.PRETRAINED))}")
    return load_exported_generator(path), str(path)


def load_generator(source: str | os.PathLike, *, weights_dir: str | os.PathLike | None = None) -> Generator:
    """A generator from anything that holds one, told apart by what ``source`` is:

    * ``dped_iphone``, ``dped_blackberry``, ``dped_sony``: the official DPED generators, whose files are in
      ``weights_dir`` (with ``weights_dir``, any name is taken as a checkpoint in it; see
      :func:`load_dped_generator`);
    * a training workdir: G of its newest finished checkpoint that reads back intact
      (:func:`load_checkpoint_generator`; for another step call that directly); a folder without checkpoints:
      its exported ``generator.npz``;
    * a ``.npz`` file: an exported generator (:func:`load_exported_generator`);
    * a TensorFlow checkpoint prefix (``<prefix>.index`` exists): a DPED-architecture generator in it.
    """
    return _load(source, weights_dir, "source")[0]


def generator_for_flags(*, pretrained_name: str | None = None, checkpoint: str | os.PathLike | None = None,
                        weights_dir: str | os.PathLike | None = None) -> tuple[Generator, str]:
    """The generator the command-line flags name, and a description of it to print: ``--pretrained`` (an official
    DPED generator, its files in ``--weights_dir``) or ``--checkpoint`` (anything else :func:`load_generator`
    reads: an exported ``.npz``, a folder holding ``generator.npz``, a training workdir); exactly one of the two."""
    conv_tuning.policy()  # a bad WESPE_CONV_CHOICE fails before loading, not when the generator is first traced
    if (pretrained_name is None) == (checkpoint is None):
        raise UserError("give exactly one of --pretrained (an official DPED generator: "
                        f"{', '.join(sorted(pretrained.PRETRAINED))}) and --checkpoint (an exported wespe "
                        f"generator or a training workdir), not {'both' if pretrained_name is not None else 'neither'}")
    if pretrained_name is not None:
        if pretrained_name not in pretrained.PRETRAINED:
            raise UserError(f"unknown pretrained generator {pretrained_name!r}; expected one of "
                            f"{', '.join(sorted(pretrained.PRETRAINED))}")
        return load_dped_generator(pretrained_name, weights_dir), pretrained_name
    if weights_dir is not None:
        raise UserError("--checkpoint names its generator itself: give it without --pretrained / --weights_dir")
    return _load(checkpoint, None, "--checkpoint")
