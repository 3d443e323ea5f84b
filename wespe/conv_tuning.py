"""Choosing each convolution's CPU formulation by measuring it on the machine at hand, as cuDNN's benchmark mode.

:mod:`wespe.conv` can compute each part of a stride-1 convolution several ways on XLA:CPU, all equal up to float
summation order: the forward and the input gradient on YNNPACK or on Eigen, the kernel gradient as XLA's
whole-image convolution, the transposed one (``few_output``) or a loop over bands of rows (``banded:<bytes>``).
Which is fastest depends on the CPU and the shape (the thresholds in :mod:`wespe.conv` were tuned on a 2-core
AVX2 AMD EPYC), so here each shape's candidates are timed once per machine (CPU model, ISA flags, cores) and
jaxlib, the fastest kept in a JSON file under the user's cache folder, and reused by every later run: training,
inference and the benchmark alike. On a quiet 2-core AVX-512 Xeon (launch/benchmark.py --mode=torch_ratio,
--conv_choice=remeasure vs heuristic) the measured choice ran the WESPE step as fast as the thresholds, which
were already right there for the layers that matter (the timings are in the README's Benchmarks). Measure on a
quiet machine: under load (another job on the cores) the ranking of close candidates flips (a loaded measurement
picked YNNPACK for the 3x3 64->64 layers, a quiet one Eigen).

The choice is made when a convolution is traced (``wespe.conv._choose``), for the shape it is traced with. A shape
not measured yet is measured right then, in a worker thread (outside the trace that asked): compiled once, then
the median of several runs with ``block_until_ready`` (time_formulation); a candidate already far slower than
the best on its first run is not repeated. Each choice is logged once per process.

``WESPE_CONV_CHOICE`` (or :func:`conv_choice` around the code that traces) says how to choose:

  ``measure``    (default) the cached choice, measuring shapes the cache lacks
  ``remeasure``  measure every shape again (once per process), overwriting the cache
  ``heuristic``  wespe.conv's thresholds, nothing measured or read (the test suite's mode)

followed by optional ``part=formulation`` items that force a part wherever that formulation applies, e.g.
``WESPE_CONV_CHOICE=heuristic,kernel_grad=xla`` or ``measure,forward=eigen,input_grad=ynnpack``
(``kernel_grad=banded`` means wespe.conv.BAND_BYTES bands). A given choice gives the same program, so the same
results, run after run. ``WESPE_CONV_CACHE`` names the cache file (default
``$XDG_CACHE_HOME/wespe/conv_choices.json``, else ``~/.cache/wespe/conv_choices.json``).

Only a CPU process measures: where the default backend is an accelerator the CPU formulations are not the ones
that run, and in a multi-process job each process could measure a different winner (their programs must match),
so those take the thresholds.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import os
import platform
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from absl import logging

from wespe.atomic_write import atomic_write
from wespe.compiler_options import train_step_compiler_options
from wespe.errors import UserError

CHOICE_ENV = "WESPE_CONV_CHOICE"
CACHE_ENV = "WESPE_CONV_CACHE"
MODES = ("measure", "remeasure", "heuristic")
DEFAULT_MODE = "measure"
PARTS = ("forward", "input_grad", "kernel_grad")
# The cache file's layout version: a file of another version (or a change of the formulations) is measured anew.
CACHE_FORMAT = 1
# Timed runs per candidate after its first (a warm-up, which also drops a clear loser early: see
# time_formulation), and at least MIN_TIMED_S of them in all (at most MAX_RUNS).
REPEATS = 3
MIN_TIMED_S = 0.05
MAX_RUNS = 200
# A candidate whose warm-up run takes over this many times the best median so far is not timed further.
GIVE_UP_RATIO = 3
# A shape with more output pixels than this (a whole photo at inference) is timed on a 512 x 512 crop of one
# image: throughput per pixel is steady by then, and timing a 12 MP layer would take seconds per candidate.
MAX_MEASURED_PIXELS = 2**19
_CROP = 512
# Below this many multiply-adds a part is fast whatever its form, and timing its candidates (a compile each)
# would cost more than any choice could save: such parts take the thresholds.
MIN_MEASURED_MACS = 2**25


class ConvShape(NamedTuple):
    """What a convolution's speed depends on: input (batch, height, width, cin), kernel (kh, kw, cin, cout),
    stride and dtype name."""
    batch: int
    height: int
    width: int
    cin: int
    cout: int
    kh: int
    kw: int
    stride: int
    dtype: str

    @classmethod
    def of(cls, x_shape, kernel_shape, stride: int, dtype) -> ConvShape:
        n, h, w, cin = x_shape  # symbolic sizes (jax.export's shape polymorphism) are kept as they are
        kh, kw, _, cout = kernel_shape
        return cls(n, h, w, cin, cout, kh, kw, stride, jnp.dtype(dtype).name)

    @property
    def is_concrete(self) -> bool:
        return all(isinstance(d, (int, np.integer)) for d in self[:8])

    @property
    def itemsize(self) -> int:
        return jnp.dtype(self.dtype).itemsize

    @property
    def macs(self) -> int:
        """Multiply-adds of the forward pass (and of each gradient)."""
        out_h, out_w = -(-self.height // self.stride), -(-self.width // self.stride)
        return self.batch * out_h * out_w * self.kh * self.kw * self.cin * self.cout

    @property
    def key(self) -> str:
        """e.g. ``8x100x100 3x3 64->64 s1 float32`` (the cache's and the log's name of the shape)."""
        return (f"{self.batch}x{self.height}x{self.width} {self.kh}x{self.kw} {self.cin}->{self.cout} "
                f"s{self.stride} {self.dtype}")

    def measured(self) -> ConvShape:
        """The shape timed for this one: itself, or a crop of one image when it is larger than
        MAX_MEASURED_PIXELS (all photos above that size share the crop's measurement)."""
        if self.batch * self.height * self.width <= MAX_MEASURED_PIXELS:
            return self
        return self._replace(batch=1, height=min(self.height, _CROP), width=min(self.width, _CROP))


class Policy(NamedTuple):
    """How formulations are chosen: ``mode`` (one of MODES) and ``forced`` {part: formulation}."""
    mode: str
    forced: dict


def parse_policy(text: str, source: str = CHOICE_ENV) -> Policy:
    """``measure`` / ``remeasure`` / ``heuristic`` (default measure) and ``part=formulation`` items, comma
    separated; anything else is a :class:`wespe.errors.UserError` naming ``source``."""
    mode, forced = None, {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        if "=" in item:
            part, form = (s.strip() for s in item.split("=", 1))
            if part not in PARTS or not form or not _known_formulation(part, form):
                raise UserError(f"{source}={text!r}: {item!r} is not part=formulation with part one of "
                                f"{', '.join(PARTS)} and formulation one of {_formulation_help(part)}")
            forced[part] = form
        elif item in MODES and mode is None:
            mode = item
        else:
            raise UserError(f"{source}={text!r}: {item!r} is not a mode ({', '.join(MODES)}, at most one) nor a "
                            f"part=formulation item (e.g. kernel_grad=xla)")
    return Policy(mode or DEFAULT_MODE, forced)


def _known_formulation(part: str, form: str) -> bool:
    if part in ("forward", "input_grad"):
        return form in ("ynnpack", "eigen", "xla")
    if form.startswith("banded:"):
        return form.split(":", 1)[1].isdigit() and int(form.split(":", 1)[1]) > 0
    return form in ("xla", "few_output", "banded")


def _formulation_help(part: str) -> str:
    if part == "kernel_grad":
        return "xla, few_output, banded, banded:<band bytes>"
    return "ynnpack, eigen, xla"


_POLICY_OVERRIDE = contextvars.ContextVar("wespe_conv_choice", default=None)


def policy() -> Policy:
    """The policy in force: :func:`conv_choice`'s, else ``$WESPE_CONV_CHOICE``'s, else ``measure``."""
    override = _POLICY_OVERRIDE.get()
    return override if override is not None else parse_policy(os.environ.get(CHOICE_ENV, ""))


def policy_text() -> str:
    """The policy in force, written as ``WESPE_CONV_CHOICE`` takes it."""
    rule = policy()
    return ",".join([rule.mode] + [f"{part}={form}" for part, form in rule.forced.items()])


@contextlib.contextmanager
def conv_choice(text: str):
    """Within this block convolutions traced choose by ``text`` (as ``WESPE_CONV_CHOICE``). It acts when the
    convolution is traced: jit's cache keeps a function traced before under another choice as it was."""
    token = _POLICY_OVERRIDE.set(parse_policy(text, source="conv_choice"))
    try:
        yield
    finally:
        _POLICY_OVERRIDE.reset(token)


# ---------------------------------------------------------------------------------------------------------------
# Where and for which machine the choices are kept.

def cache_path() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wespe" / "conv_choices.json"


@functools.cache
def machine_key() -> str:
    """The CPU model, a digest of its ISA flags, the cores this process may use, and jaxlib's version: what
    the ranking of formulations depends on (a home folder shared by several machines keeps one entry each)."""
    model, flags = None, ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = (s.strip() for s in line.partition(":"))
                if name in ("model name", "Hardware", "CPU part") and model is None:
                    model = value
                elif name in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
    except OSError:  # not Linux
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    isa = hashlib.sha256(flags.encode()).hexdigest()[:12] if flags else "unknown"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} | isa {isa} | {cores} cores | jaxlib {jaxlib.__version__}"


def _read_file(path: Path) -> dict:
    """The cache file's ``machines`` table; {} (with a warning) for a file that is not a cache of this format.
    A missing file is simply empty."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        logging.warning("ignoring the convolution choice cache %s (%s); it will be rewritten", path, error)
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("machines"), dict):
        logging.warning("ignoring the convolution choice cache %s (not format %d); it will be rewritten", path,
                        CACHE_FORMAT)
        return {}
    return data["machines"]


class _Choices:
    """This process's view of the cache (read once per file) and what it measured."""

    def __init__(self):
        self.lock = threading.RLock()
        self.path: Path | None = None
        self.cached: dict = {}  # shape key -> part -> {"choice", "ms"} for this machine, from the file
        self.measured: dict = {}  # (shape key, part) -> (choice, ms) measured by this process
        self.used: dict = {}  # (shape key, part) -> {"formulation", "source", "ms"}: what traces took

    def load(self) -> None:
        path = cache_path()
        if path != self.path:
            self.path, self.cached = path, _read_file(path).get(machine_key(), {})

    def save(self, shape_key: str, part: str, choice: str, ms: dict) -> None:
        """Adds one entry to the file: read again (another process may have added some), merged, and written
        atomically; a file that cannot be written leaves the choice in memory only (with a warning)."""
        machines = _read_file(self.path)
        entry = {"choice": choice, "ms": ms}
        machines.setdefault(machine_key(), {}).setdefault(shape_key, {})[part] = entry
        self.cached.setdefault(shape_key, {})[part] = entry
        try:
            with atomic_write(self.path) as f:
                f.write((json.dumps({"format": CACHE_FORMAT, "machines": machines}, indent=1, sort_keys=True)
                         + "\n").encode())
        except OSError as error:
            logging.warning("could not write the convolution choice cache %s (%s)", self.path, error)


_CHOICES = _Choices()


_RECORDING = contextvars.ContextVar("wespe_conv_recording", default=None)


@contextlib.contextmanager
def recording():
    """Yields a list that gets a :func:`chosen`-style row for each (shape, part) chosen in this block (its
    first choice): what one program traced here uses."""
    rows: list[dict] = []
    token = _RECORDING.set(rows)
    try:
        yield rows
    finally:
        _RECORDING.reset(token)


def chosen() -> list[dict]:
    """Every formulation convolutions traced by this process took: ``{"shape", "part", "formulation",
    "source" (heuristic, forced, measured, cached or only), "ms" (candidate -> median ms, when timed)}``."""
    with _CHOICES.lock:
        return [{"shape": s, "part": p, **v} for (s, p), v in sorted(_CHOICES.used.items())]


def reset() -> None:
    """Forget what this process measured, read and logged (the next choice reads the cache file again)."""
    global _CHOICES
    _CHOICES = _Choices()


# ---------------------------------------------------------------------------------------------------------------
# Choosing.

def _can_measure() -> bool:
    return jax.default_backend() == "cpu" and jax.process_count() == 1


def _forced(shape: ConvShape, part: str, form: str) -> str | None:
    """``form`` resolved for ``shape`` (``banded`` -> the default band size), or None where it does not apply:
    a library (ynnpack, eigen) or few_output needs stride 1. ``xla`` (XLA's own formulation) always applies."""
    from wespe import conv
    if form == "banded":
        form = f"banded:{conv.BAND_BYTES}"
    if form == "xla" or form.startswith("banded:") or shape.stride == 1:
        return form
    return None


def choose(shape: ConvShape, part: str) -> str:
    """The formulation of ``part`` for a convolution of ``shape``, by :func:`policy` (see the module docstring)."""
    from wespe import conv
    candidates = conv.candidates(shape, part)
    rule = policy()
    ms: dict = {}
    form = _forced(shape, part, rule.forced[part]) if part in rule.forced else None
    if form is not None:
        source = "forced"
    elif len(candidates) == 1:
        form, source = candidates[0], "only"
    elif rule.mode == "heuristic" or shape.macs < MIN_MEASURED_MACS or not _can_measure():
        form, source = conv.heuristic(shape, part), "heuristic"
    else:
        form, source, ms = _measured_choice(shape, part, remeasure=rule.mode == "remeasure")
    row = {"formulation": form, "source": source, "ms": ms}
    with _CHOICES.lock:
        first = (shape.key, part) not in _CHOICES.used
        _CHOICES.used[(shape.key, part)] = row
    rows = _RECORDING.get()
    if rows is not None and not any(r["shape"] == shape.key and r["part"] == part for r in rows):
        rows.append({"shape": shape.key, "part": part, **row})
    if first and source in ("measured", "cached", "forced"):
        timing = ", ".join(f"{k} {v:.4g} ms" for k, v in sorted(ms.items(), key=lambda kv: kv[1]))
        logging.info("conv %s %s: %s (%s%s)", shape.key, part, form, source, f": {timing}" if timing else "")
    return form


def _measured_choice(shape: ConvShape, part: str, *, remeasure: bool) -> tuple[str, str, dict]:
    from wespe import conv
    measured = shape.measured()
    # The thresholds' pick first: the likely winner sets the bar early, so slower candidates stop after one run.
    candidates = sorted(conv.candidates(measured, part), key=lambda f: f != conv.heuristic(measured, part))
    with _CHOICES.lock:
        _CHOICES.load()
        key = (measured.key, part)
        if key in _CHOICES.measured:
            return (*_CHOICES.measured[key][:1], "measured", _CHOICES.measured[key][1])
        entry = _CHOICES.cached.get(measured.key, {}).get(part)
        if not remeasure and isinstance(entry, dict) and entry.get("choice") in candidates:
            return entry["choice"], "cached", dict(entry.get("ms") or {})
        # Outside the trace that asked (trace state is per thread): a fresh thread sees no trace.
        with ThreadPoolExecutor(1, thread_name_prefix="wespe-conv-tuning") as pool:
            seconds = pool.submit(time_candidates, measured, part, candidates).result()
        if not seconds:
            logging.warning("conv %s %s: no candidate could be timed; using the thresholds", shape.key, part)
            return conv.heuristic(shape, part), "heuristic", {}
        ms = {k: round(v * 1e3, 4) for k, v in seconds.items()}
        best = min(seconds, key=seconds.get)
        _CHOICES.measured[key] = (best, ms)
        _CHOICES.save(measured.key, part, best, ms)
        return best, "measured", ms


# ---------------------------------------------------------------------------------------------------------------
# Timing.

def _program(shape: ConvShape, part: str, form: str) -> tuple[Callable, list[tuple[int, ...]]]:
    """The jittable function computing ``part`` as ``form`` for ``shape``, and its argument shapes."""
    from wespe import conv
    x_shape = (shape.batch, shape.height, shape.width, shape.cin)
    kernel_shape = (shape.kh, shape.kw, shape.cin, shape.cout)
    g_shape = (shape.batch, -(-shape.height // shape.stride), -(-shape.width // shape.stride), shape.cout)
    if part == "forward":
        return (lambda x, k: conv.forward_with(x, k, shape.stride, form)), [x_shape, kernel_shape]
    if part == "input_grad":
        return (lambda g, k: conv.input_grad_with(g, k, x_shape, shape.stride, form)), [g_shape, kernel_shape]
    return (lambda x, g: conv.kernel_grad_with(x, g, kernel_shape, shape.stride, form)), [x_shape, g_shape]


def time_formulation(shape: ConvShape, part: str, form: str, give_up_after: float | None = None) -> float:
    """Median seconds of ``part`` as ``form`` on this process's CPU: compiled once (with the training step's
    compiler options, which decide which convolutions YNNPACK takes), run once (a warm-up, but also a probe: past
    ``give_up_after`` seconds that time is returned at once), then at least REPEATS times and MIN_TIMED_S in all
    (a sub-millisecond layer is timed over many runs, or its median is noise)."""
    fn, shapes = _program(shape, part, form)
    device = jax.devices("cpu")[0]
    rng = np.random.default_rng(0)
    args = [jax.device_put(rng.standard_normal(s).astype(shape.dtype), device) for s in shapes]
    compiled = jax.jit(fn, compiler_options=train_step_compiler_options("cpu")).lower(*args).compile()

    def run() -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        return time.perf_counter() - t0

    first = run()
    if give_up_after is not None and first > give_up_after:
        return first
    times = [run() for _ in range(REPEATS)]
    while sum(times) < MIN_TIMED_S and len(times) < MAX_RUNS:
        times.append(run())
    return statistics.median(times)


def time_candidates(shape: ConvShape, part: str, candidates: tuple[str, ...]) -> dict[str, float]:
    """Median seconds of each candidate (fastest first is not assumed); one that fails to compile or run is
    left out with a warning."""
    seconds: dict[str, float] = {}
    for form in candidates:
        best = min(seconds.values(), default=None)
        try:
            seconds[form] = time_formulation(shape, part, form, None if best is None else GIVE_UP_RATIO * best)
        except Exception as error:  # noqa: BLE001  (e.g. out of memory: that candidate is not an option)
            logging.warning("conv %s %s: %s failed to run (%s)", shape.key, part, form,
                            str(error).splitlines()[0] if str(error) else type(error).__name__)
    return seconds


def measure(shapes, parts=PARTS, *, remeasure: bool = False) -> list[dict]:
    """Choose (measuring what the cache lacks, or everything with ``remeasure``) ``parts`` of each of
    ``shapes`` (ConvShape) now rather than when first traced, small ones included; returns :func:`chosen`-style
    rows for them."""
    from wespe import conv
    rows = []
    for shape in shapes:
        for part in parts:
            if len(conv.candidates(shape, part)) == 1:
                continue
            form, source, ms = _measured_choice(shape, part, remeasure=remeasure)
            rows.append({"shape": shape.key, "part": part, "formulation": form, "source": source, "ms": ms})
    return rows


def describe(rows: list[dict]) -> str:
    """One line per convolution shape: each part's formulation and where it came from, e.g.
    ``8x100x100 3x3 64->64 s1 float32  forward ynnpack (measured)  input_grad ...``."""
    by_shape: dict = {}
    for r in rows:
        by_shape.setdefault(r["shape"], []).append(r)
    width = max((len(k) for k in by_shape), default=0)
    lines = []
    for key, parts in by_shape.items():
        parts = sorted(parts, key=lambda r: PARTS.index(r["part"]))
        lines.append(f"{key:<{width}}  " + "  ".join(f"{r['part']} {r['formulation']} ({r['source']})"
                                                     for r in parts))
    return "\n".join(lines)
