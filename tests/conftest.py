import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

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

# XLA without most of its optimisation passes (``jax_disable_most_optimizations``), for the tests and the
# subprocesses they start: most tests run a few steps of tiny networks, and their programs took longer to
# compile than to run (a tiny training step: 8.4-9.3 s -> 4.8-5.5 s to compile, the same results up to float
# summation order). Tests marked ``optimized`` (hundreds of steps or large images, where the unoptimised program
# runs ~2.6x slower, or a check of what the optimised program does) get XLA's full optimisation, in process and
# in their subprocesses. Set here for the processes that start before any test (the xdist workers, the
# subprocesses of module-scoped fixtures), and per test by the fixture below.
_UNOPTIMIZED = "JAX_DISABLE_MOST_OPTIMIZATIONS"
_SET_HERE = "WESPE_TESTS_SET_" + _UNOPTIMIZED  # inherited by the xdist workers with the value set here
# e.g. JAX_DISABLE_MOST_OPTIMIZATIONS=0 pytest: the caller's choice, for every test.
_CALLER_CHOSE = _UNOPTIMIZED in os.environ and _SET_HERE not in os.environ
if not _CALLER_CHOSE:
    os.environ[_UNOPTIMIZED] = os.environ[_SET_HERE] = "1"

# The subprocesses tests start (the entry points end to end, module fixtures' runs) instead get XLA:CPU's LLVM at
# level 1 without its expensive passes: they compile as fast as at level 0 (which jax_disable_most_optimizations
# sets), but their tiny training steps run ~10x faster (a 4-device step at batch 8, 32 px: 0.37 vs 4 s;
# tests/test_parallel.py). XLA reads XLA_FLAGS once per process, at its first compilation, so this process (the
# pytest process or an xdist worker, whose tests compile in process, per the fixture below) compiles once
# without them (with COMPILE_FAST_FLAGS only), then puts them into the environment its subprocesses inherit. Not
# when the caller chose JAX_DISABLE_MOST_OPTIMIZATIONS or set XLA_FLAGS: then every process runs as the caller said.
SUBPROCESS_XLA_FLAGS = "--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true"
# Both, in this process and in its subprocesses, also take XLA:CPU's elemental fusion code generator instead of
# its MLIR fusion emitters (the subprocesses of tests marked ``optimized`` do not: they compile as users do; the
# in-process ``optimized`` tests share their worker's flags, which XLA reads once per process): the tests' tiny
# training step (tests/test_train_step.py, wespe_plus) compiled in 3.6 instead of 8.1 s unoptimised (16.6 -> 8.4 s of
# CPU for the first call, trace included) and 7.6 instead of 8.1 s at LLVM level 1, and ran as fast; results
# change by float order only. An XLA_FLAGS entry the installed jaxlib does not know aborts every process that
# compiles, so the process that starts the run checks once, in a subprocess, that this one parses; the pytest
# header says which.
COMPILE_FAST_FLAGS = "--xla_cpu_use_fusion_emitters=false"
_COMPILE_FAST_CHECKED = "WESPE_TESTS_COMPILE_FAST_FLAGS"  # the flags that parsed ("" if none), for the workers
_FLAGS_SET_HERE = "WESPE_TESTS_SET_XLA_FLAGS"  # XLA_FLAGS holds SUBPROCESS_XLA_FLAGS, set by a parent's conftest
_SUBPROCESS_FLAGS = not _CALLER_CHOSE and ("XLA_FLAGS" not in os.environ or _FLAGS_SET_HERE in os.environ)


def _flags_this_jaxlib_parses(flags: str) -> str:
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.jit(lambda x: x + 1)(1)"], capture_output=True,
                           env=dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu"), timeout=300)
    return flags if probe.returncode == 0 else ""


if _SUBPROCESS_FLAGS:
    if _COMPILE_FAST_CHECKED not in os.environ:
        os.environ[_COMPILE_FAST_CHECKED] = _flags_this_jaxlib_parses(COMPILE_FAST_FLAGS)
    os.environ["XLA_FLAGS"] = os.environ[_COMPILE_FAST_CHECKED]
    import jax
    import jax.numpy as jnp
    jax.jit(lambda x: x + 1)(jnp.zeros(()))  # XLA parses XLA_FLAGS for this process now
    os.environ["XLA_FLAGS"] = f"{SUBPROCESS_XLA_FLAGS} {os.environ[_COMPILE_FAST_CHECKED]}".strip()
    os.environ[_FLAGS_SET_HERE] = "1"
    os.environ.pop(_UNOPTIMIZED)  # it would force level 0 in the subprocesses; this process's tests set it below


@pytest.fixture(autouse=True)
def _xla_optimization_for_the_test(request, monkeypatch):
    if _CALLER_CHOSE:
        yield
        return
    import jax  # the option is read when a program compiles, so it can change between tests
    optimized = request.node.get_closest_marker("optimized") is not None
    if optimized:  # the subprocesses of this test: XLA's full optimisation
        monkeypatch.delenv(_UNOPTIMIZED, raising=False)
        if _SUBPROCESS_FLAGS:
            monkeypatch.delenv("XLA_FLAGS")
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", not optimized)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def pytest_collection_modifyitems(config, items):
    """Modules with a test marked ``slow`` run first (each module's tests kept together and in order, so module
    fixtures are built once per worker). pytest-xdist hands out the first quarter of the tests round-robin and
    the rest as workers free up: minutes-long tests started last left one of two workers idle at the end."""
    slow_modules = {item.module for item in items if item.get_closest_marker("slow")}
    items[:] = [item for item in items if item.module in slow_modules] + \
               [item for item in items if item.module not in slow_modules]


def pytest_report_header(config):
    if _CALLER_CHOSE:
        return "XLA settings: the caller's (JAX_DISABLE_MOST_OPTIMIZATIONS or XLA_FLAGS set)"
    fast = os.environ.get(_COMPILE_FAST_CHECKED)
    return (f"XLA settings: unoptimised in process, {SUBPROCESS_XLA_FLAGS} in subprocesses; "
            + (f"{fast} everywhere but the subprocesses of tests marked optimized" if fast else
               f"{COMPILE_FAST_FLAGS} not used: this jaxlib does not parse it"))
