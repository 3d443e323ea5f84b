"""wespe.host_malloc: with the entry points' setting, a freed large array's memory is reused, not faulted in again."""

import os
import subprocess
import sys

import pytest

SCRIPT = """
import ctypes, resource, sys, threading
from wespe import host_malloc
tuned = host_malloc.tune()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
faults = []
def work():
    for _ in range(3):  # as XLA's buffers: plain malloc (numpy would ask for huge pages), written, freed
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [libc.malloc(256 * 2 ** 20) for _ in range(2)]
        for b in blocks:
            ctypes.memset(b, 1, 256 * 2 ** 20)
        for b in blocks:
            libc.free(b)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t = threading.Thread(target=work)  # a worker thread, as XLA's: its own arena without the setting
t.start(); t.join()
print(tuned, faults[-1])
"""


def _faults(env_value):
    env = dict(os.environ, WESPE_TUNE_MALLOC=env_value)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tuned, faults = proc.stdout.split()
    return tuned == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (Linux)")
def test_tuned_allocator_reuses_freed_memory():
    tuned, faults = _faults("1")
    untuned, untuned_faults = _faults("0")
    assert tuned and not untuned
    assert untuned_faults > 100_000  # 2 x 256 MiB in 4 KiB pages, every time
    assert faults < untuned_faults / 20, (faults, untuned_faults)
