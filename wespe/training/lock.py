"""One training process per workdir: an advisory lock file, ``<workdir>/train.lock``.

Two ``launch/train.py`` processes on the same ``--workdir`` would both append to ``metrics.jsonl`` and race each
other's checkpoint saves (one then dies inside orbax). The first to start holds an exclusive ``flock`` on the
lock file for as long as it runs, and writes who it is (host, pid, start time, command) into it; a second one is
refused with a :class:`WorkdirBusyError` naming the holder, before it scans data or compiles anything.

The kernel drops a ``flock`` when its process dies, however it dies (SIGKILL, OOM, power loss of a local disk), so
a lock file left behind by a crashed run is stale by construction and the next run takes it over (and logs
that). Where ``flock`` is not available (some network filesystems answer ENOLCK), the recorded holder decides:
the lock is busy while that pid is alive on this host, or is on another host (which cannot be checked from here:
the message says which file to delete if that run is gone).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from wespe.errors import UserError

LOCK_FILE = "train.lock"
logger = logging.getLogger(__name__)


class WorkdirBusyError(UserError):
    """Another live process holds the workdir's lock."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:  # kill(0 or -1, ...) would address process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    try:
        holder = json.loads(raw.decode("utf-8"))
        return holder if isinstance(holder, dict) else {}
    except (UnicodeDecodeError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process (it did not record who it is)"
    started = holder.get("started")
    since = f", running since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}" if started else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{since}"


class WorkdirLock:
    """The lock of one workdir; :meth:`acquire` it before anything else is done there, :meth:`release` (or leave
    the ``with`` block) at the end."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_FILE
        self._fd: int | None = None
        self._created_file = False

    def acquire(self) -> WorkdirLock:
        """Takes the lock or raises :class:`WorkdirBusyError` (naming the holder and what to do)."""
        if self._fd is not None:
            return self
        existed = self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides who may read it
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                holder, have_flock = _read_holder(fd), True
            except BlockingIOError:
                raise WorkdirBusyError(
                    f"--workdir {self.workdir} is in use by another training process: {_describe(_read_holder(fd))} "
                    f"(lock file {self.path}). Wait for it to finish or stop it (SIGTERM saves a checkpoint), or "
                    "use another --workdir") from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                holder, have_flock = _read_holder(fd), False
            self._check_holder(holder, have_flock)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                                      "command": sys.argv}) + "\n").encode("utf-8"))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._created_file = fd, not existed
        return self

    def _check_holder(self, holder: dict, have_flock: bool) -> None:
        """The recorded previous holder, once we could flock (it is gone) or could not (it decides)."""
        if not holder or holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            return
        same_host = holder.get("host") == socket.gethostname()
        if not have_flock and (not same_host or _pid_alive(int(holder.get("pid") or 0))):
            raise WorkdirBusyError(
                f"--workdir {self.workdir} is in use by another training process: {_describe(holder)}. This "
                f"filesystem has no file locks, so wespe cannot tell whether it is still running: if it is not, "
                f"delete {self.path} and start again")
        logger.info("taking over the lock of %s from %s, which is no longer running", self.workdir, _describe(holder))

    def release(self, *, remove_if_created: bool = False) -> None:
        """Drops the lock. The file stays (it says who last trained here), unless ``remove_if_created`` and
        :meth:`acquire` created it: a run that ended before doing anything leaves the workdir as it found it."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            if remove_if_created and self._created_file:
                self.path.unlink(missing_ok=True)  # while still held: no other process can have taken it since
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
