"""The speed benchmark: training-step and inference throughput (used by ``launch/benchmark.py``; the quality
benchmark is :mod:`wespe.evaluation.quality_benchmark`).

Times are medians over repeats after warm-up, with ``block_until_ready``; FLOPs come from XLA's cost
analysis of the compiled step; MFU = FLOPs / step time / device peak when a peak is known or given.
User and system CPU seconds per step are reported too: on small CPU machines a large system share means
the allocator is returning memory to the OS every op (see the README's Benchmarks).
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wespe import conv, conv_tuning, degradation, parallel, train_step
from wespe.errors import JobFailed, UserError

# Dense peak FLOP/s per device by jax device_kind and compute dtype (vendor figures, no sparsity).
KNOWN_PEAKS = {
    "NVIDIA H100 80GB HBM3": {"float32": 67e12, "tf32": 494.7e12, "bfloat16": 989.4e12},
    "NVIDIA H200": {"float32": 67e12, "tf32": 494.7e12, "bfloat16": 989.4e12},
    "TPU v4": {"bfloat16": 275e12}, "TPU v5 lite": {"bfloat16": 197e12}, "TPU v5p": {"bfloat16": 459e12},
}


def device_peak(dtype: str = "float32") -> float | None:
    kind = jax.devices()[0].device_kind
    return KNOWN_PEAKS.get(kind, {}).get(dtype)


def _flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def _peak_memory_bytes(devices=None) -> int | None:
    """The largest peak among ``devices`` (default: the first device); None where the runtime does not say."""
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in (devices or jax.devices()[:1])]
    peaks = [int(p) for p in peaks if p is not None]
    return max(peaks) if peaks else None


def _step_flops(step, state, batch, key) -> float | None:
    """The model FLOPs of a single-device step, counted on the program with XLA's own convolution kernel
    gradients: XLA's cost analysis counts a loop body once, so the banded kernel gradients (wespe.conv) would
    be under-counted (same arithmetic, fewer FLOPs reported). From the lowered program: no second compile."""
    with conv.kernel_gradient("xla"):  # a new function object: jit's trace cache would return the banded trace
        lowered = jax.jit(lambda *args: step.unjitted(*args)).lower(state, step.vgg_weights, batch, key,
                                                                    step.color_pools)
    return _flops(lowered)


def benchmark_train_step(config: ml_collections.ConfigDict, *, layout: parallel.Layout | None = None,
                         repeats: int = 5, warmup: int = 1, peak_flops: float | None = None) -> dict:
    """Compile and time the training step of ``config`` on random data; returns a JSON-able dict.

    ``layout`` (default: ``config.mesh`` over all devices) places the state and splits the global batch
    ``config.batch_size``. FLOPs are XLA's count for one device's program, so the step's total is that times the
    number of devices, and MFU = total / step time / (devices x per-device peak).
    """
    layout = layout or parallel.Layout(parallel.make_mesh(config.mesh))
    layout.check_batch(config.batch_size)
    state, graphdefs = train_step.create_train_state(config, layout)
    weights, pre = train_step.load_content_network(config)
    step = _make_step(config, graphdefs, weights, pre, layout)
    rng = np.random.default_rng(0)
    shape = (config.batch_size, config.patch_size, config.patch_size, 3)
    batch = layout.global_batch({k: rng.random(shape, dtype=np.float32) for k in ("source", "target")})
    key = jax.random.key(0)

    # Traced first on its own: each convolution's CPU formulation is chosen then (wespe.conv_tuning: measured
    # once per machine for shapes not in the cache), which is not compile time; jit keeps the trace.
    t0 = time.perf_counter()
    with conv_tuning.recording() as conv_choices:
        jax.eval_shape(step.jitted, state, step.vgg_weights, batch, key, step.color_pools)
    conv_choice_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = step.jitted.lower(state, step.vgg_weights, batch, key, step.color_pools).compile()
    compile_s = time.perf_counter() - t0
    flops_per_device = _flops(compiled) if layout.mesh.size > 1 else _step_flops(step, state, batch, key)
    num_devices = layout.mesh.size
    flops = flops_per_device * num_devices if flops_per_device else None

    for i in range(warmup):
        state, metrics = compiled(state, step.vgg_weights, batch, jax.random.fold_in(key, i), step.color_pools)
        jax.block_until_ready(metrics)
    times, user, system = [], [], []
    for i in range(repeats):
        c0, t0 = os.times(), time.perf_counter()
        state, metrics = compiled(state, step.vgg_weights, batch, jax.random.fold_in(key, warmup + i),
                                  step.color_pools)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
        c1 = os.times()
        user.append(c1.user - c0.user)
        system.append(c1.system - c0.system)
    median = statistics.median(times)
    dtype = "bfloat16" if config.compute_dtype == "bfloat16" else "float32"
    peak = peak_flops if peak_flops else device_peak(dtype)
    devices = list(layout.mesh.devices.flat)
    return {
        "mode": config.mode, "batch_size": config.batch_size, "patch_size": config.patch_size,
        "compute_dtype": config.compute_dtype, "device": devices[0].device_kind, "num_devices": num_devices,
        "mesh": dict(layout.mesh.shape), "per_device_batch": config.batch_size // layout.batch_devices,
        "compile_s": round(compile_s, 3), "conv_choice_s": round(conv_choice_s, 3),
        "conv_choice": conv_tuning.policy_text(), "conv_choices": conv_choices,
        "step_s_median": round(median, 4),
        "step_s_all": [round(t, 4) for t in times], "images_per_s": round(config.batch_size / median, 3),
        "cpu_user_s_per_step": round(statistics.median(user), 3),
        "cpu_sys_s_per_step": round(statistics.median(system), 3),
        "flops_per_step": flops, "flops_per_step_per_device": flops_per_device,
        "achieved_tflops": round(flops / median / 1e12, 4) if flops else None,
        "peak_tflops_per_device": peak / 1e12 if peak else None,
        "mfu": round(flops / median / (peak * num_devices), 4) if (flops and peak) else None,
        "peak_device_memory_bytes": _peak_memory_bytes(devices),
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "finite": bool(np.isfinite(float(metrics["loss/generator"]))),
    }


def benchmark_scaling(config: ml_collections.ConfigDict, device_counts: list[int], per_device_batch: int, *,
                      fsdp: bool = False, **kwargs) -> list[dict]:
    """The same per-device batch on the first 1, 2, 4, ... devices (weak scaling).

    Each row is :func:`benchmark_train_step` on a mesh over ``devices[:n]`` (all ``data``, or all ``fsdp`` when
    ``fsdp``) plus ``speedup`` (images/s over the first row's) and ``efficiency`` (speedup / device ratio).
    """
    available = jax.devices()
    too_many = [n for n in device_counts if not 1 <= n <= len(available)]
    if too_many:
        raise parallel.MeshError(f"--devices={','.join(map(str, device_counts))}: {too_many} not between 1 and the "
                                 f"{len(available)} devices that exist (on CPU: --num_cpu_devices)")
    rows = []
    for n in device_counts:
        c = config.copy_and_resolve_references()
        c.batch_size = per_device_batch * n
        mesh = parallel.make_mesh({"data": 1, "fsdp": n} if fsdp else {"data": n, "fsdp": 1}, available[:n])
        rows.append(benchmark_train_step(c, layout=parallel.Layout(mesh), **kwargs))
    base = rows[0]
    for row in rows:
        row["speedup"] = round(row["images_per_s"] / base["images_per_s"], 3)
        row["efficiency"] = round(row["speedup"] / (row["num_devices"] / base["num_devices"]), 3)
    return rows


def _device_memory_limit(devices) -> int | None:
    limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
    limits = [int(x) for x in limits if x is not None]
    return min(limits) if limits else None


def _synthetic_color_pools(config: ml_collections.ConfigDict) -> dict | None:
    """Random stand-ins for wespe.training.color_pool's pools when the config fits its colour path to them (timing and
    memory do not depend on the pixels)."""
    if not train_step.uses_color_pools(config):
        return None
    rng = np.random.default_rng(0)
    return {k: rng.random((65536, 3), dtype=np.float32) for k in ("source", "target")}


def _make_step(config: ml_collections.ConfigDict, graphdefs: dict, weights: dict, pre: str, layout):
    """The training step as training builds it, with stand-ins for what it would fit to photos."""
    return train_step.make_train_step(config, graphdefs, weights, pre, layout, _synthetic_color_pools(config),
                                 degradation=typical_degradation(config))


def typical_degradation(config: ml_collections.ConfigDict) -> degradation.Degradation | None:
    """A camera model like the benchmark's fit, when the config trains on one (``weights.restoration``): the
    step's cost does not depend on its values, and fitting one needs photos."""
    return degradation.Degradation(1.2, 0.03, 35.0) if train_step.uses_degradation(config) else None


def step_memory_bytes(config: ml_collections.ConfigDict, layout: parallel.Layout, step=None) -> int:
    """XLA's per-device memory for one training step at ``config.batch_size`` (compiled, never run).

    arguments + outputs - donated (aliased) buffers + temporaries, from ``compiled.memory_analysis()``.
    """
    abstract, graphdefs = train_step.abstract_train_state(config)
    if step is None:
        weights, pre = train_step.load_content_network(config)
        step = _make_step(config, graphdefs, weights, pre, layout)
    shape = (config.batch_size, config.patch_size, config.patch_size, 3)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=layout.batch) for k in ("source", "target")}
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract,
                         layout.state_shardings(abstract))
    lowered = step.jitted.lower(state, step.vgg_weights, batch, jax.random.key(0), step.color_pools)
    m = lowered.compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)


def largest_batch(config: ml_collections.ConfigDict, layout: parallel.Layout, *, memory_limit_bytes: int | None = None,
                  fraction: float = 0.92, max_batch: int = 8192) -> dict:
    """The largest global batch (a multiple of the batch devices) whose step fits in device memory, by XLA's own
    memory analysis: doubling, then bisection (memory grows monotonically with the batch). Compiles only.

    The budget is ``fraction`` of ``memory_limit_bytes`` (default: the devices' ``bytes_limit``; CPUs report
    none, so pass one). Returns ``{"batch_size", "bytes", "budget_bytes", "tried": {batch: bytes}}``.
    """
    devices = list(layout.mesh.devices.flat)
    limit = memory_limit_bytes or _device_memory_limit(devices)
    if not limit:
        raise UserError(f"{devices[0].device_kind} reports no memory limit: give one (--memory_limit_gb)")
    budget = int(limit * fraction)
    unit = layout.batch_devices
    _, graphdefs = train_step.abstract_train_state(config)
    weights, pre = train_step.load_content_network(config)
    step = _make_step(config, graphdefs, weights, pre, layout)
    tried: dict[int, int] = {}

    def fits(batch: int) -> bool:
        c = config.copy_and_resolve_references()
        c.batch_size = batch
        tried[batch] = step_memory_bytes(c, layout, step)
        return tried[batch] <= budget

    if not fits(unit):
        raise UserError(f"even batch {unit} (one per device) needs {tried[unit] / 2**30:.2f} GiB per device, "
                         f"over the {budget / 2**30:.2f} GiB budget")
    good, bad = unit, None
    while bad is None and good * 2 <= max_batch:
        if fits(good * 2):
            good *= 2
        else:
            bad = good * 2
    while bad is not None and bad - good > unit:
        mid = (good + bad) // 2 // unit * unit
        if fits(mid):
            good = mid
        else:
            bad = mid
    return {"batch_size": good, "bytes": tried[good], "budget_bytes": budget, "limit_bytes": limit,
            "tried": {str(k): v for k, v in sorted(tried.items())}}


def _four_three(megapixels: float) -> tuple[int, int]:
    """(height, width) of a 4:3 landscape image of about ``megapixels``."""
    w = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    return int(round(megapixels * 1e6 / w)), w


def benchmark_enhance(generator, megapixels: list[float], *, dtypes=("float32",), tile: int = 256,
                      repeats: int = 3, memory_budget_mb: float | None = None, tilings=("staged",),
                      torch_python: str | None = None, torch_script: str | None = None) -> list[dict]:
    """Megapixels/s of ``wespe.enhance`` on random 4:3 images, whole-image and tiled, per size and dtype.

    Tiled runs use ``tile`` and each of ``tilings`` (``staged``, ``streamed``: see ``wespe.enhance``); each
    row's ``vs_whole`` is its time over the whole-image time of the same size and dtype. All tiled runs go
    first, smallest image first, then the whole-image runs: peak-memory readings are process-wide high-water
    marks, so this order keeps each reading attributable to its own run. A whole-image run that would not fit
    the memory budget (enhance's own decision: XLA's memory analysis of the whole-image program against
    ``memory_budget_mb`` or the machine's budget) is skipped. With ``torch_python`` (a venv with the CPU torch
    wheel) the PyTorch reference generator's forward (``torch_script``'s ``bench_g_forward``, channels_last)
    runs at each size in a subprocess too, with its own peak RSS, and whole-image rows get ``vs_torch``.
    """
    from wespe.inference.device_memory import budget_bytes
    from wespe.inference.enhance import enhance, whole_image_bytes

    if torch_python is not None:
        for path, flag in ((torch_python, "--torch_python"), (torch_script, "--torch_script")):
            if not path or not os.path.isfile(path):
                raise UserError(f"{flag}={path!r}: no such file (see ../shared/reference/README.md for the venv)")
    budget = budget_bytes(memory_budget_mb, jax.devices()[0])
    rows = []
    runs = [("tiled", t) for t in tilings] + [("whole", None)]
    for path, tiling in runs:
        for mp in sorted(megapixels):
            h, w = _four_three(mp)
            if path == "whole" and whole_image_bytes(generator, (1, h, w, 3)) > budget:
                rows.append({"path": path, "megapixels": mp, "height": h, "width": w,
                             "skipped": "does not fit the memory budget"})
                continue
            image = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
            for dtype in dtypes:
                kwargs = dict(tile=tile if path == "tiled" else None, memory_budget_mb=memory_budget_mb,
                              compute_dtype=dtype)
                if tiling:
                    kwargs["tiling"] = tiling
                t0 = time.perf_counter()
                enhance(generator, image, **kwargs)  # compile + warm-up
                first = time.perf_counter() - t0
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    enhance(generator, image, **kwargs)
                    times.append(time.perf_counter() - t0)
                median = statistics.median(times)
                rows.append({"path": path, "tiling": tiling, "dtype": dtype, "megapixels": round(h * w / 1e6, 3),
                             "height": h, "width": w, "tile": kwargs["tile"], "first_call_s": round(first, 3),
                             "seconds_median": round(median, 3), "megapixels_per_s": round(h * w / 1e6 / median, 4),
                             "peak_device_memory_bytes": _peak_memory_bytes(),
                             "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})
    whole = {(r["height"], r["dtype"]): r["seconds_median"] for r in rows if r["path"] == "whole" and "dtype" in r}
    for r in rows:
        if "dtype" in r and (r["height"], r["dtype"]) in whole:
            r["vs_whole"] = round(r["seconds_median"] / whole[(r["height"], r["dtype"])], 3)
    if torch_python is not None:
        for mp in sorted(megapixels):
            h, w = _four_three(mp)
            try:
                theirs = torch_reference_forward(torch_python, torch_script, h, w, repeats=repeats)
            except JobFailed as e:  # e.g. killed for memory at 12 MP: the row says so, the others are kept
                rows.append({"path": "torch", "megapixels": round(h * w / 1e6, 3), "height": h, "width": w,
                             "error": str(e)})
                continue
            rows.append({"path": "torch", "megapixels": round(h * w / 1e6, 3), "height": h, "width": w, **theirs,
                         "megapixels_per_s": round(h * w / 1e6 / theirs["seconds_median"], 4)})
            for r in rows:
                if r["path"] == "whole" and r.get("dtype") == "float32" and r["height"] == h:
                    r["vs_torch"] = round(r["seconds_median"] / theirs["seconds_median"], 3)
    return rows


# Runs the reference script's generator forward at one size and prints one JSON line (its own process and venv).
_TORCH_FORWARD = """
import json, resource, sys
sys.path.insert(0, {directory!r})
import torch
import torch_wespe_step as ref
torch.set_num_threads({threads})
torch.set_flush_denormal(True)
median, times = ref.bench_g_forward({height}, {width}, True, warmup=1, iters={repeats})
try:  # this process's own high-water mark (ru_maxrss would carry the parent's over the exec on Linux)
    peak = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
except (OSError, IndexError):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"seconds_median": median, "seconds_all": times, "torch": torch.__version__,
                  "max_rss_bytes": peak}}))
"""


def _threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def torch_reference_forward(python: str, script: str, height: int, width: int, *, repeats: int = 3,
                            timeout_s: float = 3600) -> dict:
    """Median seconds of the PyTorch reference generator's forward (inference mode, channels_last, batch 1) on
    a ``height`` x ``width`` image, and that process's peak RSS, run by ``python`` in a subprocess."""
    code = _TORCH_FORWARD.format(directory=os.path.dirname(os.path.abspath(script)), threads=_threads(),
                                 height=height, width=width, repeats=repeats)
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise JobFailed(f"PyTorch reference forward {height}x{width}: {e}") from e
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise JobFailed(f"PyTorch reference forward {height}x{width} exited {done.returncode}:\n{tail}")
    result = json.loads(lines[-1])
    result["seconds_median"] = round(result["seconds_median"], 3)
    return result


# The reference script's result line: "batch  30 channels_last:   25.029 s/step ..."
_TORCH_STEP_LINE = re.compile(r"^batch\s+(\d+)\s+(\S+):\s+([0-9.]+) s/step", re.MULTILINE)


def torch_reference_step(python: str, script: str, batch_size: int, *, repeats: int = 5, warmup: int = 1,
                         timeout_s: float = 3600) -> dict:
    """Median step time of the PyTorch WESPE step (``../shared/reference/torch_wespe_step.py``: the same
    networks and losses) at ``batch_size``, run by ``python`` (its own venv with the CPU torch wheel) in a
    subprocess, channels_last, as many threads as this process may use, glibc malloc tuned as ours."""
    threads = _threads()
    command = [python, script, "--tune-malloc", "--no-flops", "--no-gfwd", "--batches", str(batch_size),
               "--layouts", "channels_last", "--warmup", str(warmup), "--iters", str(repeats),
               "--threads", str(threads)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise JobFailed(f"PyTorch reference {' '.join(command)}: {e}") from e
    match = _TORCH_STEP_LINE.search(done.stdout)
    if done.returncode != 0 or not match:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise JobFailed(f"PyTorch reference {' '.join(command)} exited {done.returncode} without a step "
                           f"time:\n{tail}")
    header = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
    return {"step_s_median": float(match.group(3)), "torch": header, "threads": threads}


def benchmark_torch_ratio(config: ml_collections.ConfigDict, batch_sizes: list[int], *, torch_python: str,
                          torch_script: str, repeats: int = 5, warmup: int = 1, **kwargs) -> list[dict]:
    """wespe's training step next to the PyTorch reference's, one batch size after the other in one run (same
    machine, same moment), with ``ratio`` = wespe seconds / PyTorch seconds (below 1: wespe is faster)."""
    for path, flag in ((torch_python, "--torch_python"), (torch_script, "--torch_script")):
        if not path or not os.path.isfile(path):
            raise UserError(f"{flag}={path!r}: no such file (see ../shared/reference/README.md for the venv)")
    rows = []
    for batch_size in batch_sizes:
        c = config.copy_and_resolve_references()
        c.batch_size = batch_size
        ours = benchmark_train_step(c, repeats=repeats, warmup=warmup, **kwargs)
        theirs = torch_reference_step(torch_python, torch_script, batch_size, repeats=repeats, warmup=warmup)
        rows.append({"batch_size": batch_size, "wespe_step_s": ours["step_s_median"],
                     "torch_step_s": theirs["step_s_median"],
                     "ratio": round(ours["step_s_median"] / theirs["step_s_median"], 3),
                     "wespe": ours, "torch": theirs})
    return rows


def benchmark_suite(config: ml_collections.ConfigDict, *, megapixels: list[float], tile: int = 512,
                    memory_limit_bytes: int | None = None, max_batch: int = 8192, per_device_batch: int | None = None,
                    repeats: int = 5, warmup: int = 1, peak_flops: dict | None = None,
                    enhance_repeats: int = 3) -> dict:
    """Everything a new accelerator should be measured on, in one result (``launch/benchmark.py --mode=suite``):

    * ``train_step``: the step of ``config`` at its batch size in float32 and in bfloat16 (MFU against each
      dtype's peak: ``peak_flops[dtype]``, else the known table);
    * ``max_batch``: the largest bfloat16 batch whose step fits the device memory (``memory_limit_bytes`` where
      the device reports none; skipped, with the reason, on a CPU without one), and its step timed;
    * ``scaling``: weak scaling over 1, 2, 4, ... of the devices when there are several (batch per device
      ``per_device_batch``, default the config's batch over the devices);
    * ``enhance``: whole-image and staged-tiled inference of the config's generator, float32 and bfloat16, at
      ``megapixels``.
    """
    from wespe.train_step import build_networks

    peak_flops = peak_flops or {}
    result: dict = {"train_step": {}}
    for dtype in ("float32", "bfloat16"):
        c = config.copy_and_resolve_references()
        c.compute_dtype = dtype
        result["train_step"][dtype] = benchmark_train_step(c, repeats=repeats, warmup=warmup,
                                                           peak_flops=peak_flops.get(dtype))
    layout = parallel.Layout(parallel.make_mesh(config.mesh))
    c = config.copy_and_resolve_references()
    c.compute_dtype = "bfloat16"
    if memory_limit_bytes or _device_memory_limit(list(layout.mesh.devices.flat)):
        search = largest_batch(c, layout, memory_limit_bytes=memory_limit_bytes, max_batch=max_batch)
        c.batch_size = search["batch_size"]
        result["max_batch"] = {"search": search, "benchmark": benchmark_train_step(
            c, layout=layout, repeats=repeats, warmup=warmup, peak_flops=peak_flops.get("bfloat16"))}
    else:
        result["max_batch"] = {"skipped": f"{jax.devices()[0].device_kind} reports no memory limit and none was given"}
    count = jax.device_count()
    if count > 1:
        counts = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n < count] + [count]
        per_device = per_device_batch or max(1, config.batch_size // count)
        result["scaling"] = benchmark_scaling(config, counts, per_device, repeats=repeats, warmup=warmup,
                                              peak_flops=peak_flops.get("float32"))
    else:
        result["scaling"] = {"skipped": "one device"}
    generator = build_networks(config)["generator"]
    result["enhance"] = benchmark_enhance(generator, megapixels, dtypes=("float32", "bfloat16"), tile=tile,
                                          repeats=enhance_repeats)
    return result
