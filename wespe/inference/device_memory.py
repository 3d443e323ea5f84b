"""How much memory a computation may use on a device, read from the machine instead of assumed.

* Accelerators (GPU, TPU): ``device.memory_stats()``: ``bytes_limit - bytes_in_use`` (what JAX's allocator
  can still hand out).
* CPU: the host's available memory: ``MemAvailable`` of ``/proc/meminfo`` (what can be allocated without
  swapping, page cache counted as reclaimable), capped by the process's cgroup limit when there is one
  (containers, SLURM jobs: cgroup v2 ``memory.max - memory.current``, or v1 ``memory.limit_in_bytes -
  memory.usage_in_bytes``), else the physical memory from ``sysconf`` (macOS has no ``/proc``) times
  :data:`UNKNOWN_AVAILABLE_FRACTION`.

:func:`machine_budget_bytes` takes a fraction of that (:data:`CPU_FRACTION`, :data:`ACCELERATOR_FRACTION`): the
rest is headroom for what the caller also holds (decoded photos, outputs, the framework itself).
:func:`budget_bytes` is the budget inference runs in: the caller's ``memory_budget_mb`` (``--memory_budget_mb``)
if given, else the :data:`MEMORY_BUDGET_ENV` environment variable, else the machine's, else
:data:`DEFAULT_MEMORY_BUDGET_MB` where the machine says nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from wespe.errors import UserError

MEMORY_BUDGET_ENV = "WESPE_ENHANCE_MEMORY_MB"
DEFAULT_MEMORY_BUDGET_MB = 1024.0
CPU_FRACTION = 0.5  # of the host's available memory: the photos, outputs and XLA itself share the host
ACCELERATOR_FRACTION = 0.8  # of the device's free memory
UNKNOWN_AVAILABLE_FRACTION = 0.25  # of physical memory when nothing says what is free

_CGROUP_V2 = Path("/sys/fs/cgroup")
_CGROUP_V1 = Path("/sys/fs/cgroup/memory")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) and junk read as None


def meminfo_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """``MemAvailable`` in bytes, or None where there is no such file or line."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def cgroup_available(v2: Path = _CGROUP_V2, v1: Path = _CGROUP_V1) -> int | None:
    """Bytes left under this process's cgroup memory limit, or None without a limit (or without cgroups)."""
    for limit_file, usage_file in ((v2 / "memory.max", v2 / "memory.current"),
                                   (v1 / "memory.limit_in_bytes", v1 / "memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2 ** 60:  # v1 reports "no limit" as ~2^63
            return max(limit - usage, 0)
    return None


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def host_available() -> int | None:
    """The CPU host's available memory in bytes (module docstring), or None if the machine says nothing."""
    known = [b for b in (meminfo_available(), cgroup_available()) if b is not None]
    if known:
        return min(known)
    total = physical_memory()
    return int(total * UNKNOWN_AVAILABLE_FRACTION) if total else None


def device_available(device: jax.Device) -> int | None:
    """Free bytes on ``device``: its allocator's statistics on an accelerator, the host's memory on a CPU."""
    if device.platform == "cpu":
        return host_available()
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - a backend without statistics raises its own error types
        stats = None
    if stats and "bytes_limit" in stats:
        return max(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), 0)
    return None


def machine_budget_bytes(device: jax.Device) -> int | None:
    """What one computation on ``device`` may use: a fraction of :func:`device_available`, or None if unknown."""
    available = device_available(device)
    if available is None:
        return None
    return int(available * (CPU_FRACTION if device.platform == "cpu" else ACCELERATOR_FRACTION))


def budget_bytes(memory_budget_mb: float | None, device: jax.Device) -> float:
    """The per-device budget in bytes (module docstring: argument, environment, machine, constant)."""
    if memory_budget_mb is None and os.environ.get(MEMORY_BUDGET_ENV):
        try:
            memory_budget_mb = float(os.environ[MEMORY_BUDGET_ENV])
        except ValueError:
            raise UserError(f"${MEMORY_BUDGET_ENV}={os.environ[MEMORY_BUDGET_ENV]!r} is not a number of MiB") from None
    if memory_budget_mb is None:
        machine = machine_budget_bytes(device)
        if machine:  # None: the machine says nothing; 0 (a full cgroup) is no budget to run in either
            return float(machine)
        memory_budget_mb = DEFAULT_MEMORY_BUDGET_MB
    if not memory_budget_mb > 0:
        raise UserError(f"memory_budget_mb must be > 0, got {memory_budget_mb}")
    return memory_budget_mb * 2 ** 20
