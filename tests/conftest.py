import atexit
import os
import shutil
import tempfile

# Tests run on CPU everywhere (CI has no accelerator); multi-device tests set their own flags in subprocesses.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# wespe.conv's thresholds, not per-shape measurement (slow for tests that train; tests/test_conv_tuning.py has it).
os.environ.setdefault("WESPE_CONV_CHOICE", "heuristic")
# One JAX compilation cache for the whole run: this file is loaded by pytest's main process before the xdist
# workers start, so they and every subprocess a test starts (all inherit the environment) share it, and a program
# that several tests compile (the same tiny networks, steps and evaluations) is compiled once. The key holds the
# program, the compile options and XLA_FLAGS, so a test that changes any of them still compiles its own. Removed
# at the end by the process that made it; a cache the caller set is used and kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="wespe-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (minutes each) run first: pytest-xdist hands tests out in collection order, so a
    long test collected last would run alone at the end and stretch the wall time of ``pytest -n 2``."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the rest keep their order
