"""The memory budget read from the machine (wespe/inference/device_memory.py), on files and devices the tests make."""

import types

import jax
import pytest

from wespe.inference import device_memory


def test_meminfo_available(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n")
    assert device_memory.meminfo_available(meminfo) == 20000000 * 1024
    meminfo.write_text("MemTotal: 1 kB\n")
    assert device_memory.meminfo_available(meminfo) is None
    assert device_memory.meminfo_available(tmp_path / "absent") is None


def test_cgroup_limits_v2_v1_and_none(tmp_path):
    v2, v1 = tmp_path / "v2", tmp_path / "v1"
    v2.mkdir(), v1.mkdir()
    (v2 / "memory.max").write_text("8589934592\n")
    (v2 / "memory.current").write_text("1073741824\n")
    assert device_memory.cgroup_available(v2, v1) == 7 * 2 ** 30
    (v2 / "memory.max").write_text("max\n")  # no limit in v2
    assert device_memory.cgroup_available(v2, v1) is None
    (v1 / "memory.limit_in_bytes").write_text(str(2 ** 63 - 4096))  # "no limit" in v1
    (v1 / "memory.usage_in_bytes").write_text("100")
    assert device_memory.cgroup_available(v2, v1) is None
    (v1 / "memory.limit_in_bytes").write_text(str(4 * 2 ** 30))
    assert device_memory.cgroup_available(v2, v1) == 4 * 2 ** 30 - 100
    (v1 / "memory.usage_in_bytes").write_text(str(5 * 2 ** 30))  # over the limit: nothing left, not negative
    assert device_memory.cgroup_available(v2, v1) == 0


def test_host_available_takes_the_smaller_and_falls_back_to_physical(monkeypatch):
    monkeypatch.setattr(device_memory, "meminfo_available", lambda: 10 * 2 ** 30)
    monkeypatch.setattr(device_memory, "cgroup_available", lambda: 3 * 2 ** 30)
    assert device_memory.host_available() == 3 * 2 ** 30
    monkeypatch.setattr(device_memory, "cgroup_available", lambda: None)
    assert device_memory.host_available() == 10 * 2 ** 30
    monkeypatch.setattr(device_memory, "meminfo_available", lambda: None)
    monkeypatch.setattr(device_memory, "physical_memory", lambda: 16 * 2 ** 30)
    assert device_memory.host_available() == int(16 * 2 ** 30 * device_memory.UNKNOWN_AVAILABLE_FRACTION)


def test_budget_per_platform(monkeypatch):
    monkeypatch.setattr(device_memory, "host_available", lambda: 8 * 2 ** 30)
    cpu = jax.devices("cpu")[0]
    assert device_memory.machine_budget_bytes(cpu) == int(8 * 2 ** 30 * device_memory.CPU_FRACTION)
    gpu = types.SimpleNamespace(platform="gpu", memory_stats=lambda: {"bytes_limit": 80 * 2 ** 30,
                                                                      "bytes_in_use": 20 * 2 ** 30})
    assert device_memory.machine_budget_bytes(gpu) == int(60 * 2 ** 30 * device_memory.ACCELERATOR_FRACTION)
    silent = types.SimpleNamespace(platform="tpu", memory_stats=lambda: None)
    assert device_memory.machine_budget_bytes(silent) is None

    def broken():
        raise RuntimeError("no stats on this backend")

    assert device_memory.device_available(types.SimpleNamespace(platform="gpu", memory_stats=broken)) is None


def test_this_machine_reports_something():
    """On Linux (CI, this project's machines) the real files are read: a positive figure, at most the RAM."""
    from pathlib import Path
    if not Path("/proc/meminfo").exists():
        pytest.skip("no /proc/meminfo: not Linux")
    available = device_memory.host_available()
    assert available is not None and 0 < available <= device_memory.physical_memory()


def test_budget_bytes_from_argument_environment_machine_or_default(monkeypatch):
    """``--memory_budget_mb`` arrives here as the argument and wins; then the environment, the machine, the
    default where the machine says nothing; MiB in, bytes out."""
    cpu = jax.devices("cpu")[0]
    monkeypatch.setenv(device_memory.MEMORY_BUDGET_ENV, "64")
    monkeypatch.setattr(device_memory, "machine_budget_bytes", lambda device: 3 * 2 ** 30)
    assert device_memory.budget_bytes(16, cpu) == 16 * 2 ** 20
    assert device_memory.budget_bytes(None, cpu) == 64 * 2 ** 20
    monkeypatch.delenv(device_memory.MEMORY_BUDGET_ENV)
    assert device_memory.budget_bytes(None, cpu) == 3 * 2 ** 30
    monkeypatch.setattr(device_memory, "machine_budget_bytes", lambda device: None)
    assert device_memory.budget_bytes(None, cpu) == device_memory.DEFAULT_MEMORY_BUDGET_MB * 2 ** 20
    with pytest.raises(ValueError, match="memory_budget_mb"):
        device_memory.budget_bytes(0, cpu)
    monkeypatch.setenv(device_memory.MEMORY_BUDGET_ENV, "lots")
    with pytest.raises(ValueError, match=device_memory.MEMORY_BUDGET_ENV):
        device_memory.budget_bytes(None, cpu)
