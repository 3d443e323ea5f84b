"""The one exception type that means "what you gave is wrong", not "wespe is broken", and the exit statuses.

Every error a user can fix by changing a flag, a folder, a file or a config value derives from
:class:`UserError` (a ``ValueError``, so ``except ValueError`` still catches it): the data errors, config values,
a workdir holding another run, VGG weights that are not VGG-19, a mesh that does not fit the devices, files
that are not generators or photos, missing inputs (:class:`PathNotFoundError`, also a ``FileNotFoundError``).

Every command-line entry point runs its work inside :func:`cli_errors`, which gives one ``error: ...`` line on
stderr and these exit statuses (README: Exit statuses):

  0  done (a preempted training run that saved its checkpoint, too)
  1  the job ran but produced nothing usable (no photo enhanced or evaluated, a sweep cell failed), or the
     environment failed it (disk full, an I/O error): one line naming the file
  2  a user error: nothing was started or written; the line names the flag, file or key and what to do
  3  training diverged (a non-finite loss); the last good checkpoint is kept

Set ``WESPE_TRACEBACK=1`` (or pass ``--verbosity=1``) to see the traceback as well. Any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

TRACEBACK_ENV = "WESPE_TRACEBACK"
EXIT_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3


class UserError(ValueError):
    """A mistake in the user's input; the message names the flag, file or key and what to do."""


class PathNotFoundError(UserError, FileNotFoundError):
    """An input file or folder the user named does not exist (both a UserError and a FileNotFoundError)."""


class JobFailed(RuntimeError):
    """The environment failed a job that was correctly asked for (a checkpoint that cannot be written or read
    back, ...); exit status 1, one line naming the file."""


class Diverged(RuntimeError):
    """Training produced a non-finite loss; exit status 3."""


def call_python_file(path: str | os.PathLike, function: str, flag: str, *, what: str, example: str,
                     args: Sequence = ()):
    """``function(*args)`` of the user's Python file ``path`` (``--config``'s ``get_config``, ``--sweep``'s
    ``get_sweep``), imported from its path as a fresh module. Whatever goes wrong in the user's file is a
    :class:`UserError` naming ``flag``, the file and, where there is one, the line: no such file, not a Python
    file, a syntax error, an exception while importing it or inside ``function``, no ``function``."""
    path = Path(path)
    named = f"{flag}={path}"
    if not path.is_file():
        raise PathNotFoundError(f"{named}: no such {what} file (a Python file with {function}(), e.g. {example})")
    spec = importlib.util.spec_from_file_location(f"_wespe_{what}_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise UserError(f"{named}: not a Python file (a {what} file is Python with {function}(), e.g. {example})")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        where = "" if Path(e.filename or "").resolve() == path.resolve() else f" in {e.filename}"
        raise UserError(f"{named}: syntax error{where} at line {e.lineno}: {e.msg}") from e
    except Exception as e:  # noqa: BLE001 - whatever the user's file raises is the user's to fix
        raise UserError(f"{named}: importing it raised {_one_line(e)}{_line_in(path, e)}") from e
    if not callable(getattr(module, function, None)):
        raise UserError(f"{named} has no {function}() (a {what} file defines it, e.g. {example})")
    try:
        return getattr(module, function)(*args)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{named}: {function}() raised {_one_line(e)}{_line_in(path, e)}") from e


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def _line_in(path: Path, error: BaseException) -> str:
    """`` (at line N)``: the innermost line of ``path`` in ``error``'s traceback (empty when it has none)."""
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
             if Path(frame.filename).resolve() == path.resolve()]
    return f" (at line {lines[-1]})" if lines else ""


def want_traceback() -> bool:
    """Whether a user error should show its traceback: ``$WESPE_TRACEBACK`` set (not 0), or absl's
    ``--verbosity`` >= 1 given on the command line."""
    if os.environ.get(TRACEBACK_ENV, "0") not in ("", "0"):
        return True
    try:
        from absl import flags
        return flags.FLAGS.is_parsed() and "verbosity" in flags.FLAGS and flags.FLAGS.verbosity >= 1
    except Exception:  # noqa: BLE001 - no absl flags: a library caller
        return False


def exit_on_user_error(error: UserError) -> None:
    """Print ``error`` as one line on stderr and exit with status 2 (re-raise it when :func:`want_traceback`)."""
    exit_with_line(str(error), EXIT_USER_ERROR, error)


def exit_with_line(message: str, status: int, error: BaseException) -> None:
    """Print ``error: <message>`` on stderr and exit with ``status`` (re-raise ``error`` when
    :func:`want_traceback`)."""
    if want_traceback():
        raise error
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


@contextlib.contextmanager
def cli_errors():
    """The entry points' error handling: user errors -> one line, exit 2; a diverged run -> one line, exit 3; an
    OS-level failure (disk full, permissions, an I/O error) -> one line naming the file, exit 1. Other
    exceptions (bugs) pass with their traceback."""
    try:
        yield
    except UserError as e:
        exit_on_user_error(e)
    except Diverged as e:
        exit_with_line(str(e), EXIT_DIVERGED, e)
    except JobFailed as e:
        exit_with_line(str(e), EXIT_FAILED, e)
    except OSError as e:  # its text names the file when it has one ("[Errno 28] No space left ...: 'x'")
        exit_with_line(str(e), EXIT_FAILED, e)
