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


def test_training_command_applies_only_where_it_can(monkeypatch, tmp_path):
    """The re-execution's command: same interpreter and arguments, the tunables the environment lacks added to
    those already set; none where it is turned off, all set, the kernel's THP mode is not ``madvise``, glibc is
    too old or the program is not a script."""
    from wespe import host_malloc
    script = tmp_path / "train.py"
    script.write_text("")
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    monkeypatch.setattr(host_malloc, "_THP_SETTING", setting)
    monkeypatch.setattr(host_malloc, "_glibc_version", lambda: (2, 36))
    monkeypatch.setattr(sys, "argv", [str(script), "--workdir=x"])
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-X", "utf8", str(script), "--workdir=x"])
    argv, env = host_malloc.training_command({"PATH": "/bin"})
    assert argv == [sys.executable, "-X", "utf8", str(script), "--workdir=x"]
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1"}
    _, env = host_malloc.training_command({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})  # the user's kept
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert host_malloc.training_command({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=4"}) is None
    assert host_malloc.training_command({host_malloc.ENV: "0"}) is None
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, str(script), "--workdir=x"])
    assert host_malloc.training_command({})[0] == [sys.executable, str(script), "--workdir=x"]
    # run from inside another program (a forked test server; runpy after patching): rerunning would lose it
    for outer in ([sys.executable, "tests/cli_forkserver.py"],
                  [sys.executable, "-c", "import runpy; ...", "--workdir=x"],
                  [sys.executable, "-c", str(script), "--workdir=x"]):
        monkeypatch.setattr(sys, "orig_argv", outer)
        assert host_malloc.training_command({}) is None, outer
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, str(script)])
    monkeypatch.setattr(sys, "argv", ["-c"])
    assert host_malloc.training_command({}) is None
    monkeypatch.setattr(sys, "argv", [str(script)])
    for mode in ("[always] madvise never\n", "always madvise [never]\n"):
        setting.write_text(mode)
        assert host_malloc.training_command({}) is None
    setting.write_text("always [madvise] never\n")
    monkeypatch.setattr(host_malloc, "_glibc_version", lambda: (2, 34))
    assert host_malloc.training_command({}) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (Linux)")
def test_tune_for_training_reruns_the_script_with_the_tunables(tmp_path):
    """End to end: the same process (pid) runs the script again, with the tunables in its environment."""
    from wespe import host_malloc
    script = tmp_path / "entry.py"
    script.write_text("import os, sys\nfrom wespe import host_malloc\nprint(os.getpid(), flush=True)\n"
                      "host_malloc.tune_for_training()\nprint(os.getpid(), os.environ.get('GLIBC_TUNABLES'))\n")
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split("\n")
    thp = host_malloc._THP_SETTING.read_text() if host_malloc._THP_SETTING.exists() else ""
    applies = (host_malloc._glibc_version() or (0, 0)) >= (2, 35) and "[madvise]" in thp
    if not applies:
        assert lines[1].split() == [lines[0], "None"]
        pytest.skip("THP is not in madvise mode or glibc < 2.35 here: the script ran once, unchanged")
    first, (again, tunables) = lines[0], lines[2].split()
    assert lines[1] == first == again
    assert tunables == "glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1"
