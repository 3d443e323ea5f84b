"""glibc malloc settings for the command-line entry points on a CPU: keep freed memory for reuse.

XLA:CPU's worker threads allocate each program's outputs and temporaries in glibc's per-thread arenas, where an
allocation above 64 MiB cannot fit a heap and is served by ``mmap``, then handed back to the kernel by
``munmap`` when freed. The next call faults the same amount in again, page by page: staged tiled inference of a
1 MP photo took millions of minor faults per photo on a 2-core VM, much of its run spent in the kernel;
``mmap``-ing virtualised machines make each fault especially dear. One arena that never ``mmap``-s and
trims only above 2 GiB of free top-of-heap removes them (no faults left; staged and whole-image inference
measured faster). The PyTorch reference step does the same (``--tune-malloc``).

Training (:func:`tune_for_training`) asks glibc, through its start-up tunables, for one arena and for
transparent huge pages on what malloc maps: the step frees and faults in gigabytes of activations each time
(millions of minor faults per batch-30 run), and in 2 MiB pages, kept by one arena, that costs next to nothing:
huge pages, and one arena as well, each measured faster per step, with next to no system time left (the timings
are in the README's Benchmarks).

Process-wide, so only the entry points call :func:`tune` / :func:`tune_for_training` (first thing, before JAX
starts its threads), and ``WESPE_TUNE_MALLOC=0`` turns both off; libraries importing wespe keep their own
allocator. A no-op where the C library is not glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

ENV = "WESPE_TUNE_MALLOC"
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's <malloc.h>
_TRIM_THRESHOLD = 2 ** 31 - 1  # mallopt takes an int

_tuned: bool | None = None
# glibc >= 2.35: madvise(MADV_HUGEPAGE) on what malloc maps; one arena (what tune() sets for inference).
TRAINING_TUNABLES = {"glibc.malloc.hugetlb": "1", "glibc.malloc.arena_max": "1"}
_THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def tune() -> bool:
    """Apply the settings above once; True when glibc accepted all three."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get(ENV, "1") in ("0", ""):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _tuned = all(mallopt(option, value) == 1 for option, value in (
        (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))
    return _tuned


def _glibc_version() -> tuple[int, int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        major, minor = libc.gnu_get_libc_version().decode().split(".")[:2]
        return int(major), int(minor)
    except (OSError, AttributeError, ValueError):  # not glibc
        return None


def training_command(environ: dict | None = None) -> tuple[list[str], dict] | None:
    """The command line and environment that rerun this program with :data:`TRAINING_TUNABLES` (those the
    environment does not set already), or None where that does not apply: turned off (``WESPE_TUNE_MALLOC=0``),
    all set already, not glibc >= 2.35, the kernel's THP mode not ``madvise`` (``always`` needs nothing,
    ``never`` allows nothing), or a program that is not the script file the interpreter was started on
    (``python -c``, ``-m``, runpy from another program). glibc reads its
    tunables only at start-up, hence the re-execution."""
    environ = dict(os.environ if environ is None else environ)
    tunables = environ.get("GLIBC_TUNABLES", "")
    present = {item.split("=", 1)[0] for item in tunables.split(":") if item}
    missing = [f"{key}={value}" for key, value in TRAINING_TUNABLES.items() if key not in present]
    if environ.get(ENV, "1") in ("0", "") or not missing:
        return None
    version = _glibc_version()
    if version is None or version < (2, 35):
        return None
    try:
        if "[madvise]" not in _THP_SETTING.read_text():
            return None
    except OSError:
        return None
    # Only a script the interpreter was started on (``python [options] script args``): a program that runs the
    # entry point from inside itself (runpy after patching something, a forked test server) would lose its state.
    original = getattr(sys, "orig_argv", [])
    if not sys.argv or not os.path.isfile(sys.argv[0]) or original[-len(sys.argv):] != sys.argv \
            or len(original) <= len(sys.argv) or "-c" in original[1:len(original) - len(sys.argv)]:
        return None
    environ["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, *missing]))
    options = original[1:len(original) - len(sys.argv)]  # the interpreter's own (-X, -W, -u) come back too
    return [sys.executable, *options, *sys.argv], environ


def tune_for_training() -> None:
    """Rerun this entry point (same interpreter, arguments and process id) with glibc's malloc on one arena and
    transparent huge pages, where :func:`training_command` says it applies; returns only where it does not. Call
    it first thing, before anything starts threads or opens files."""
    command = training_command()
    if command is not None:
        argv, environ = command
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(argv[0], argv, environ)
