"""glibc malloc settings for the command-line entry points on a CPU: keep freed memory for reuse.

XLA:CPU's worker threads allocate each program's outputs and temporaries in glibc's per-thread arenas, where an
allocation above 64 MiB cannot fit a heap and is served by ``mmap``, then handed back to the kernel by
``munmap`` when freed. The next call faults the same amount in again, page by page: staged tiled inference of a
1 MP photo took 4 million minor faults (16 GB, 12 s of system time, half its run) per photo on a 2-core VM;
``mmap``-ing virtualised machines make each fault especially dear. One arena that never ``mmap``-s and
trims only above 2 GiB of free top-of-heap removes them (0 faults; 1 MP staged 16.9 s -> 9.2 s, whole image
7.9 s -> 6.8 s on that machine). The PyTorch reference step does the same (``--tune-malloc``).

Process-wide, so only the entry points call :func:`tune` (first thing, before JAX starts its threads), and
``WESPE_TUNE_MALLOC=0`` turns it off; libraries importing wespe keep their own allocator. A no-op where the C
library is not glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ENV = "WESPE_TUNE_MALLOC"
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's <malloc.h>
_TRIM_THRESHOLD = 2 ** 31 - 1  # mallopt takes an int

_tuned: bool | None = None


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
