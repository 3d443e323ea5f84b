"""Training checkpoints: the whole :class:`wespe.train.TrainState` plus JSON metadata, via orbax.

This is the only module of the project that imports orbax. A checkpoint directory holds one sub-directory per
saved step::

    <directory>/<step>/state/      the TrainState arrays (orbax StandardSave: step, params, batch_stats, opt_state)
    <directory>/<step>/metadata/   a JSON document (config, data iterator state, RNG key data, wall-clock info, ...)

Saves are atomic: orbax writes ``<directory>/<step>.orbax-checkpoint-tmp`` and renames it to ``<step>`` only
once every process has finished writing (on object stores, which have no atomic rename, it writes
``commit_success.txt`` last instead). A save that crashes half-way therefore never becomes
:meth:`Checkpointer.latest_step`; leftover temporary directories are deleted when the next writing
:class:`Checkpointer` opens the directory (a ``read_only`` one leaves them alone). Only the newest ``keep``
checkpoints are kept.

Every process calls :meth:`Checkpointer.save` and :meth:`Checkpointer.restore` (orbax coordinates multi-host
writes; each process writes the shards it owns). :meth:`Checkpointer.restore` restores onto the shapes, dtypes
and shardings of a ``like`` tree, so a checkpoint written on one device mesh can be read onto another.

With ``async_save=True`` (the default), :meth:`Checkpointer.save` returns once the arrays are copied to host
memory and writes them in a background thread; the caller may then donate or delete the device arrays.
Call :meth:`Checkpointer.wait` (or :meth:`Checkpointer.close`, or leave the ``with`` block) before exiting.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp

from wespe.errors import JobFailed

__all__ = ["CheckpointError", "CheckpointMismatchError", "Checkpointer"]

_STATE, _METADATA = "state", "metadata"
T = TypeVar("T")


class CheckpointError(JobFailed):
    """A checkpoint cannot be saved or restored; the message names the checkpoint directory."""


class CheckpointMismatchError(CheckpointError):
    """An intact checkpoint whose tree (names, shapes) is not the one asked for: every older checkpoint of the
    same run would not match either, so this is not a reason to fall back to one."""


def _abstract_leaf(x: Any) -> Any:
    """What orbax should restore a leaf as: arrays become ShapeDtypeStructs carrying their sharding."""
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x  # jax.ShapeDtypeStruct (with or without .sharding), np.ndarray, Python scalars: orbax handles these


def _short(e: BaseException, limit: int = 1500) -> str:
    """The exception for a one-line message; tensorstore errors append kilobytes of JSON spec (kept in __cause__)."""
    text = f"{type(e).__name__}: {e}".split(". See full TensorStore details")[0]  # then kilobytes of JSON spec
    return text if len(text) <= limit else text[:limit] + " ..."


def _is_closed_loop_error(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _is_orbax_read_aftermath(unraisable) -> bool:
    """The reports of reads still in flight when an orbax restore failed: their callbacks find the event loop
    closed, and their coroutines are finalised with the read error (one per array chunk: thousands of lines for
    one truncated file). The restore's own error says it all."""
    if _is_closed_loop_error(unraisable.exc_value):
        return True
    code = getattr(unraisable.object, "cr_code", None)
    return code is not None and "orbax" in code.co_filename


def _from_orbax(tb) -> bool:
    while tb is not None:
        if "orbax" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


class _OrbaxTaskAftermath(logging.Filter):
    """asyncio's "Task exception was never retrieved" for the same reads, when their tasks are collected."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not (_is_closed_loop_error(exc) or _from_orbax(exc.__traceback__))


def _silence_orbax_read_aftermath() -> None:
    """Installs (once, chained to the current hook) a ``sys.unraisablehook`` that drops only
    :func:`_is_orbax_read_aftermath` reports, and a filter on the ``asyncio`` logger that drops only its reports
    of tasks that failed inside orbax."""
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _OrbaxTaskAftermath) for f in asyncio_log.filters):
        asyncio_log.addFilter(_OrbaxTaskAftermath())
    previous = sys.unraisablehook
    if getattr(previous, "_wespe_orbax_filter", False):
        return

    def hook(unraisable):
        if not _is_orbax_read_aftermath(unraisable):
            previous(unraisable)

    hook._wespe_orbax_filter = True
    sys.unraisablehook = hook


def _normalise_metadata(metadata: dict) -> dict:
    """The metadata as it will read back (JSON turns tuples into lists, keys into strings); fails early."""
    if not isinstance(metadata, dict):
        raise TypeError(f"checkpoint metadata must be a dict, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(metadata, allow_nan=True))
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint metadata must be JSON-serialisable: {e}") from e


class Checkpointer:
    """Saves and restores training checkpoints in ``directory`` (local path or a URL such as ``gs://...``).

    Args:
        directory: where the step directories live; created if missing.
        keep: how many of the newest checkpoints to keep (older ones are deleted after each save);
            ``None`` keeps all.
        async_save: write in a background thread (see the module docstring).
        read_only: only read (an evaluation or export job looking at a training run's directory): never
            creates the directory, never deletes anything (in particular not the temporary directory of a
            save that the training job is still writing), and :meth:`save` raises.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int | None = 3, async_save: bool = True,
                 read_only: bool = False):
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be >= 1 or None, got {keep}")
        directory = os.fspath(directory)
        if "://" not in directory:
            directory = os.path.abspath(directory)
        self.keep, self.async_save, self.read_only = keep, async_save, read_only
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep,
            enable_async_checkpointing=async_save,
            # A writer removes what crashed saves left behind (``<step>.orbax-checkpoint-tmp``) when it opens
            # the directory; a reader must not, as the writer may be in the middle of a save. (Read-only options
            # are spelled out in full: orbax warns about each one it has to override.)
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            save_interval_steps=0 if read_only else 1,
            read_only=read_only,
        )
        # Handlers given up front (not just item names) so that item_metadata() can read the saved tree.
        handlers = {_STATE: ocp.StandardCheckpointHandler(), _METADATA: ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(directory, options=options, item_handlers=handlers)
        self.directory = self._manager.directory  # an epath.Path
        self._pending_step: int | None = None  # the step of an async save that may still be running

    # -- queries -----------------------------------------------------------------------------------------------

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or ``None`` when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def all_steps(self) -> list[int]:
        """Steps of all finished checkpoints, ascending.

        A save still being written in the background is left out (orbax itself lists it as soon as it starts),
        as are the temporary directories of saves that never finished.
        """
        manager = self._live_manager()
        if self.read_only:
            manager.reload()  # a reader sees checkpoints that the writer finished since it opened the directory
        steps = set(manager.all_steps())
        if self._pending_step is not None:
            if self._manager.is_saving_in_progress():
                steps.discard(self._pending_step)
            else:
                self._pending_step = None
        return sorted(steps)

    def step_directory(self, step: int) -> str:
        """The directory that holds (or would hold) the checkpoint of ``step``."""
        return str(self.directory / str(int(step)))

    # -- save / restore ----------------------------------------------------------------------------------------

    def save(self, step: int, state: Any, metadata: dict) -> None:
        """Saves ``state`` (a pytree of arrays, normally a TrainState) and JSON ``metadata`` as ``step``.

        Call on every process. Raises :class:`CheckpointError` if ``step`` is already saved (or being saved)
        and :class:`TypeError` if ``metadata`` is not JSON-serialisable (both before anything is written).
        When saving asynchronously, first waits for the previous save to finish (saves never overlap; its
        error, if any, surfaces here), then returns once the arrays are copied to host memory.
        """
        step = int(step)
        metadata = _normalise_metadata(metadata)
        if self.read_only:
            raise CheckpointError(f"cannot save {self.step_directory(step)}: the Checkpointer is read-only")
        if step in self._live_manager().all_steps():
            being = " (its save is still running)" if step not in self.all_steps() else ""
            raise CheckpointError(f"checkpoint {self.step_directory(step)} already exists{being}")
        args = ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state), _METADATA: ocp.args.JsonSave(metadata)})
        try:
            # force: the caller decides when to save (orbax would otherwise skip steps <= its latest step).
            saved = self._manager.save(step, args=args, force=True)
        except Exception as e:
            raise CheckpointError(f"could not save checkpoint {self.step_directory(step)}: {_short(e)}") from e
        if not saved:  # should not happen with force=True
            raise CheckpointError(f"orbax declined to save checkpoint {self.step_directory(step)}")
        if self.async_save:
            self._pending_step = step

    def restore(self, step: int | None = None, *, like: T) -> tuple[T, dict]:
        """Restores checkpoint ``step`` (default: the latest) as ``(state, metadata)``.

        ``like`` gives the structure, dtypes and shardings of the result: an existing state (its arrays are
        not modified) or the same tree with :class:`jax.ShapeDtypeStruct` leaves that carry ``.sharding``
        (e.g. from ``jax.eval_shape`` plus the shardings of the current mesh). Leaves without a sharding are
        restored with the sharding they were saved with, which only works on the same topology.

        Raises :class:`CheckpointError`, naming the directory, when there is no such checkpoint or it cannot be
        read (missing or corrupt files, or a tree that does not match ``like``).
        """
        self.wait()  # a pending async save must finish first (it may be the step asked for)
        step = self._resolve_step(step)
        path = self.step_directory(step)
        abstract = jax.tree.map(_abstract_leaf, like)
        self._check_matches_saved_tree(step, abstract)
        args = ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract), _METADATA: ocp.args.JsonRestore()})
        _silence_orbax_read_aftermath()  # a failed read must be one CheckpointError, not pages of asyncio noise
        try:
            restored = self._manager.restore(step, args=args)
        except Exception as e:
            raise CheckpointError(f"could not restore checkpoint {path}: {_short(e)}") from e
        state, metadata = restored[_STATE], restored[_METADATA]
        if not isinstance(metadata, dict):
            raise CheckpointError(f"could not restore checkpoint {path}: its metadata is missing or not a JSON "
                                  f"object (got {type(metadata).__name__})")
        return state, metadata

    def metadata(self, step: int | None = None) -> dict:
        """The JSON metadata of checkpoint ``step`` (default: the latest) without reading any array.

        E.g. to compare the saved config with the current one before building the state to restore onto.
        Raises :class:`CheckpointError` like :meth:`restore`.
        """
        step = self._resolve_step(step)
        path = self.step_directory(step)
        try:
            metadata = self._manager.restore(step, args=ocp.args.Composite(**{_METADATA: ocp.args.JsonRestore()}))
            metadata = metadata[_METADATA]
        except Exception as e:
            raise CheckpointError(f"could not read the metadata of checkpoint {path}: {_short(e)}") from e
        if not isinstance(metadata, dict):
            raise CheckpointError(f"could not read the metadata of checkpoint {path}: missing or not a JSON "
                                  f"object (got {type(metadata).__name__})")
        return metadata

    def _resolve_step(self, step: int | None) -> int:
        """``step`` (default: the latest) if it is a finished checkpoint, else a CheckpointError."""
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise CheckpointError(f"no finished checkpoint in {self.directory}")
            return steps[-1]
        step = int(step)
        if step not in steps:
            raise CheckpointError(f"no finished checkpoint {self.step_directory(step)} (available steps: {steps})")
        return step

    def _check_matches_saved_tree(self, step: int, abstract: Any) -> None:
        """Compares ``like`` with the saved tree's names and shapes before any array is read.

        orbax checks the tree structure itself, but a shape mismatch (e.g. resuming with a different network
        width) only fails inside its concurrent reads, which then leave hundreds of "Event loop is closed"
        tracebacks behind. Dtypes may differ: orbax casts to the dtypes of ``like``.
        """
        path = self.step_directory(step)
        try:
            saved = self._manager.item_metadata(step)[_STATE]
            saved = ocp.tree.to_flat_dict(saved.tree if hasattr(saved, "tree") else saved, sep="/")
        except Exception:  # unreadable tree metadata: leave the diagnosis to restore itself
            return
        wanted = ocp.tree.to_flat_dict(abstract, sep="/")
        problems = [f"missing in the checkpoint: {k}" for k in wanted if k not in saved]
        problems += [f"in the checkpoint but not in `like`: {k}" for k in saved if k not in wanted]
        problems += [f"shape of {k}: checkpoint {tuple(saved[k].shape)}, `like` {tuple(np.shape(v))}"
                     for k, v in wanted.items()
                     if k in saved and hasattr(saved[k], "shape") and tuple(saved[k].shape) != tuple(np.shape(v))]
        if problems:
            more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise CheckpointMismatchError(f"could not restore checkpoint {path}: it does not match `like` "
                                  f"({len(problems)} differences):\n  " + "\n  ".join(problems[:10]) + more)

    def reload(self) -> None:
        """Re-reads the list of checkpoints from the directory (another process changed it)."""
        self._live_manager().reload()

    def set_aside(self, step: int, into: str | os.PathLike) -> str:
        """Moves the finished checkpoint ``step`` out of the directory, to ``into/<step>`` (``into/<step>.1``, ...
        if taken), so that it is no longer listed and its step can be saved again; returns the new path.

        For a checkpoint that cannot be read back (see :func:`wespe.loop` resuming from the newest intact one):
        it is kept for inspection rather than deleted. Local directories only; call on one process.
        """
        if self.read_only:
            raise CheckpointError(f"cannot move {self.step_directory(step)}: the Checkpointer is read-only")
        self.wait()
        into = os.path.abspath(os.fspath(into))
        os.makedirs(into, exist_ok=True)
        dest, n = os.path.join(into, str(int(step))), 0
        while os.path.exists(dest):
            n += 1
            dest = os.path.join(into, f"{int(step)}.{n}")
        os.rename(self.step_directory(step), dest)
        self._live_manager().reload()
        return dest

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def wait(self) -> None:
        """Blocks until any async save has finished (and old checkpoints are deleted); re-raises its error."""
        try:
            self._live_manager().wait_until_finished()
        except Exception as e:
            raise CheckpointError(f"an asynchronous save in {self.directory} failed: {_short(e)}") from e

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources; idempotent."""
        if self._manager is not None:
            try:
                self.wait()
            finally:
                self._manager.close()
                self._manager = None

    def _live_manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            raise CheckpointError(f"the Checkpointer of {self.directory} is closed")
        return self._manager

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Checkpointer({str(self.directory)!r}, keep={self.keep}, async_save={self.async_save}, "
                f"read_only={self.read_only})")
