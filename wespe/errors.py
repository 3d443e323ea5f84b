"""The one exception type that means "what you gave is wrong", not "wespe is broken".

Every error a user can fix by changing a flag, a folder, a file or a config value derives from
:class:`UserError` (a ``ValueError``, so ``except ValueError`` still catches it): the data errors, config values,
a workdir holding another run, VGG weights that are not VGG-19, a mesh that does not fit the devices, files
that are not generators. The command-line entry points print it as one ``error: ...`` line and exit with status 2;
set ``WESPE_TRACEBACK=1`` (or pass ``--verbosity=1``) to see the traceback as well. Anything else is a bug or an
environment failure and keeps its traceback.
"""

from __future__ import annotations

import os
import sys

TRACEBACK_ENV = "WESPE_TRACEBACK"
EXIT_USER_ERROR = 2


class UserError(ValueError):
    """A mistake in the user's input; the message names the flag, file or key and what to do."""


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
    if want_traceback():
        raise error
    print(f"error: {error}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
