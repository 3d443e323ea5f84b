"""Training checkpoints: the whole :class:`wespe.train_step.TrainState` plus JSON metadata, via orbax.

This is the only module of the project that imports orbax. A checkpoint directory holds one sub-directory per
saved step::

    <directory>/<step>/state/          the TrainState arrays (orbax StandardSave: step, params, batch_stats,
                                       opt_state)
    <directory>/<step>/metadata/       a JSON document (config, data iterator state, RNG key data, wall-clock
                                       info, ...)
    <directory>/<step>/checksums.json  the SHA-256 of every file in those two, written last (see below)

Saves are atomic: orbax writes ``<directory>/<step>.orbax-checkpoint-tmp`` and renames it to ``<step>`` only
once every process has finished writing (on object stores, which have no atomic rename, it writes
``commit_success.txt`` last instead). A save that crashes half-way therefore never becomes
:meth:`Checkpointer.latest_step`; leftover temporary directories are deleted when the next writing
:class:`Checkpointer` opens the directory (a ``read_only`` one leaves them alone). Only the newest ``keep``
checkpoints are kept.

Bytes damaged after a save (bit rot, a bad disk, a copy gone wrong) would otherwise restore silently as other
numbers: just before the rename, once every process has written its shards, process 0 records the SHA-256 of
every file of the checkpoint in ``checksums.json``; :meth:`Checkpointer.restore` (and
:meth:`Checkpointer.metadata`, for the metadata's files) checks them first and raises :class:`CheckpointError`
naming the first file that differs. Checkpoints written before checksums existed restore unverified (logged).

Every process calls :meth:`Checkpointer.save` and :meth:`Checkpointer.restore` (orbax coordinates multi-host
writes; each process writes the shards it owns). :meth:`Checkpointer.restore` restores onto the shapes, dtypes
and shardings of a ``like`` tree, so a checkpoint written on one device mesh can be read onto another.

With ``async_save=True`` (the default), :meth:`Checkpointer.save` returns once the arrays are copied to host
memory and writes them in a background thread; the caller may then donate or delete the device arrays.
Call :meth:`Checkpointer.wait` (or :meth:`Checkpointer.close`, or leave the ``with`` block) before exiting. A
background save that failed (a full disk) is raised once, by the next :meth:`Checkpointer.wait`,
:meth:`Checkpointer.save` or :meth:`Checkpointer.restore`, as a :class:`CheckpointError` naming its own step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp

from wespe import errors
from wespe.errors import JobFailed

__all__ = ["CHECKSUMS_FILE", "CheckpointError", "CheckpointMismatchError", "Checkpointer"]

_STATE, _METADATA = "state", "metadata"
CHECKSUMS_FILE = "checksums.json"
T = TypeVar("T")
logger = logging.getLogger(__name__)


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


def _is_orbax_aftermath(unraisable) -> bool:
    """The reports of reads or writes still in flight when an orbax restore or save failed: their callbacks find
    the event loop closed, and their coroutines are finalised with the I/O error (one per array chunk: thousands
    of lines for one truncated file or one full disk). The CheckpointError raised for the failure says it all."""
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
    """asyncio's "Task exception was never retrieved" for the same reads and writes, when their tasks are
    collected."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not (_is_closed_loop_error(exc) or _from_orbax(exc.__traceback__))


class _OrbaxFailureLogs(logging.Filter):
    """orbax logs a failed background save with its traceback at every level it passes through (three or four
    times, each with kilobytes of tensorstore spec); the CheckpointError raised for it says it once (and keeps
    the exception as its ``__cause__``). Kept with ``WESPE_TRACEBACK=1`` or ``--verbosity=1``."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_orbax = f"{os.sep}orbax{os.sep}" in record.pathname
        return not (from_orbax and record.levelno >= logging.ERROR and record.exc_info) or errors.want_traceback()


class _OrbaxReadOnlyNotice(logging.Filter):
    """orbax warns "Given directory is read only=<dir>" whenever a CheckpointManager is opened read-only, which
    is what :class:`Checkpointer` asks for with ``read_only=True``: a notice about our own choice, printed before
    anything else the command says (before the one ``error:`` line of a workdir without checkpoints, too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (f"{os.sep}orbax{os.sep}" in record.pathname and record.levelno == logging.WARNING
                    and isinstance(record.msg, str) and record.msg.startswith("Given directory is read only"))


def _drop_orbax_read_only_notice() -> None:
    """Installs (once) :class:`_OrbaxReadOnlyNotice` on absl's logger, which orbax logs through."""
    log = logging.getLogger("absl")
    if not any(isinstance(f, _OrbaxReadOnlyNotice) for f in log.filters):
        log.addFilter(_OrbaxReadOnlyNotice())


def _silence_orbax_aftermath() -> None:
    """Installs (once, chained to the current hook) a ``sys.unraisablehook`` that drops only
    :func:`_is_orbax_aftermath` reports, a filter on the ``asyncio`` logger that drops only its reports of tasks
    that failed inside orbax, and one on absl's logger that drops orbax's tracebacks of the failures it raises
    (:class:`_OrbaxFailureLogs`)."""
    for name, kind in (("asyncio", _OrbaxTaskAftermath), ("absl", _OrbaxFailureLogs)):
        log = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in log.filters):
            log.addFilter(kind())
    previous = sys.unraisablehook
    if getattr(previous, "_wespe_orbax_filter", False):
        return

    def hook(unraisable):
        if not _is_orbax_aftermath(unraisable):
            previous(unraisable)

    hook._wespe_orbax_filter = True
    sys.unraisablehook = hook


def _file_sha256(path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _files_under(folder) -> list:
    """Every file below ``folder`` (an epath.Path: its ``rglob`` refuses object stores)."""
    files = []
    for p in folder.iterdir():
        files += _files_under(p) if p.is_dir() else [p]
    return files


def _item_files(step_dir) -> list:
    """The files of a checkpoint's items (``state/``, ``metadata/``), sorted. orbax's own files at the top
    (``_CHECKPOINT_METADATA``, ``commit_success.txt``) are rewritten after the checksums, so they are left out."""
    return sorted(f for item in step_dir.iterdir() if item.is_dir() for f in _files_under(item))


def _write_checksums(step_dir) -> None:
    """``step_dir/checksums.json``: the SHA-256 of every item file (call once every process's files are written)."""
    sums = {str(p.relative_to(step_dir)): _file_sha256(p) for p in _item_files(step_dir)}
    (step_dir / CHECKSUMS_FILE).write_text(json.dumps({"sha256": sums}, indent=1) + "\n")


def _checksum_problem(step_dir, under: str = "") -> str | None:
    """Why the files of checkpoint ``step_dir`` (those under the item ``under``; all by default) differ from
    their checksums, or ``None`` when they match or there are none (a checkpoint written by an older wespe)."""
    manifest = step_dir / CHECKSUMS_FILE
    if not manifest.exists():
        return None
    try:
        sums = json.loads(manifest.read_text()).get("sha256")
    except (ValueError, UnicodeDecodeError, AttributeError):  # not JSON, not UTF-8, not a JSON object
        sums = None
    if not isinstance(sums, dict):
        return f"its {CHECKSUMS_FILE} is damaged"
    for name, expected in sums.items():
        if under and not name.startswith(under + "/"):
            continue
        path = step_dir / name
        if not path.exists():
            return f"missing file {name}"
        if _file_sha256(path) != expected:
            return f"checksum mismatch in {name}"
    return None


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
            # Always orbax's async path: its hook between "every process has written" and the rename is where
            # checksums.json is written. A synchronous save is an async one waited for (see save()).
            enable_async_checkpointing=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._write_checksums_of_save),
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
        if read_only:
            _drop_orbax_read_only_notice()
        self._manager = ocp.CheckpointManager(directory, options=options, item_handlers=handlers)
        self.directory = self._manager.directory  # an epath.Path
        self._saving: int | None = None  # the step of the last save not yet waited for (it may still be running)
        self._save_failed = False  # a save's failure was raised (orbax raises it again on every later wait)
        self._unverified_reported: set[int] = set()
        _silence_orbax_aftermath()  # a failed read or write must be one CheckpointError, not pages of asyncio noise

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
        if self._saving is not None and manager.is_saving_in_progress():
            steps.discard(self._saving)
        return sorted(steps)

    def step_directory(self, step: int) -> str:
        """The directory that holds (or would hold) the checkpoint of ``step``."""
        return str(self.directory / str(int(step)))

    # -- save / restore ----------------------------------------------------------------------------------------

    def save(self, step: int, state: Any, metadata: dict) -> None:
        """Saves ``state`` (a pytree of arrays, normally a TrainState) and JSON ``metadata`` as ``step``.

        Call on every process. Raises :class:`CheckpointError` if ``step`` is already saved and
        :class:`TypeError` if ``metadata`` is not JSON-serialisable (both before anything is written).
        First waits for the previous save to finish (saves never overlap): if that one failed, its
        :class:`CheckpointError`, naming its step, is raised here. When saving asynchronously, returns once the
        arrays are copied to host memory; otherwise once the checkpoint is complete.
        """
        step = int(step)
        metadata = _normalise_metadata(metadata)
        if self.read_only:
            raise CheckpointError(f"cannot save {self.step_directory(step)}: the Checkpointer is read-only")
        self.wait()
        if step in self._live_manager().all_steps():
            raise CheckpointError(f"checkpoint {self.step_directory(step)} already exists")
        args = ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state), _METADATA: ocp.args.JsonSave(metadata)})
        self._saving = step  # before orbax starts: its background thread writes this step's checksums
        try:
            # force: the caller decides when to save (orbax would otherwise skip steps <= its latest step).
            saved = self._manager.save(step, args=args, force=True)
        except Exception as e:
            self._saving = None
            raise CheckpointError(f"could not save checkpoint {self.step_directory(step)}: {_short(e)}") from e
        if not saved:  # should not happen with force=True
            self._saving = None
            raise CheckpointError(f"orbax declined to save checkpoint {self.step_directory(step)}")
        if not self.async_save:
            self.wait()

    def _write_checksums_of_save(self) -> None:
        """orbax's post-finalisation callback: on process 0, after every process has written its files (and
        the per-process OCDBT databases are merged), before the temporary directory is renamed into place."""
        final = self.directory / str(self._saving)
        writing = final.parent / (final.name + ocp.path.atomicity.TMP_DIR_SUFFIX)
        _write_checksums(writing if writing.exists() else final)  # object stores write in place

    def restore(self, step: int | None = None, *, like: T) -> tuple[T, dict]:
        """Restores checkpoint ``step`` (default: the latest) as ``(state, metadata)``.

        ``like`` gives the structure, dtypes and shardings of the result: an existing state (its arrays are
        not modified) or the same tree with :class:`jax.ShapeDtypeStruct` leaves that carry ``.sharding``
        (e.g. from ``jax.eval_shape`` plus the shardings of the current mesh). Leaves without a sharding are
        restored with the sharding they were saved with, which only works on the same topology.

        Raises :class:`CheckpointError`, naming the directory, when there is no such checkpoint or it cannot be
        read (missing, corrupt or changed files: the reason names the first file whose checksum differs), and
        :class:`CheckpointMismatchError` for a tree that does not match ``like``.
        """
        self.wait()  # a pending async save must finish first (it may be the step asked for)
        step = self._resolve_step(step)
        path = self.step_directory(step)
        abstract = jax.tree.map(_abstract_leaf, like)
        self._verify(step, "could not restore checkpoint")  # first: a damaged tree file must not read as a mismatch
        self._check_matches_saved_tree(step, abstract)
        args = ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract), _METADATA: ocp.args.JsonRestore()})
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
        self._verify(step, "could not read the metadata of checkpoint", under=_METADATA)
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

    def _verify(self, step: int, failure: str, under: str = "") -> None:
        """Raises ``CheckpointError("<failure> <dir>: checksum mismatch in <file>")`` when a file of checkpoint
        ``step`` (under the item ``under``; all by default) is not what was saved."""
        step_dir = self.directory / str(step)
        if not (step_dir / CHECKSUMS_FILE).exists():
            if step not in self._unverified_reported:
                self._unverified_reported.add(step)
                logger.info("checkpoint %s has no %s (written by an older wespe): reading it unverified", step_dir,
                            CHECKSUMS_FILE)
            return
        problem = _checksum_problem(step_dir, under)
        if problem:
            raise CheckpointError(f"{failure} {step_dir}: {problem}")

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

        For a checkpoint that cannot be read back (see :func:`wespe.training.loop` resuming from the newest intact one):
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
        """Blocks until the last save has finished (and old checkpoints are deleted). If it failed, raises
        ``CheckpointError("could not save checkpoint <its directory>: ...")``, once."""
        step = self._saving
        try:
            self._live_manager().wait_until_finished()
        except Exception as e:
            self._saving = None
            if step is None and self._save_failed:
                return  # orbax raises the failure already raised on every later wait: it was said once
            self._save_failed = True
            where = self.step_directory(step) if step is not None else f"in {self.directory}"
            raise CheckpointError(f"could not save checkpoint {where}: {_short(e)}") from e
        self._saving = None

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources; idempotent."""
        if self._manager is not None:
            try:
                self.wait()
            finally:
                manager, self._manager = self._manager, None
                try:
                    manager.close()
                except Exception:
                    if not self._save_failed:  # else: orbax raising that failure once more
                        raise

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
