"""wespe.conv_tuning: each convolution's CPU formulation chosen by measurement, cached per machine and jaxlib."""

import json
import logging
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import script_server
from test_conv import _numpy_kernel_grad, assert_kernel_grad_within_bound, summation_bound

from wespe import conv, conv_tuning
from wespe.errors import UserError

# (kernel size, stride, in, out, height, width): few outputs (the generators' last layer), a wide layer with an
# even kernel (SAME pads one more at the bottom / right), a strided one (the discriminators').
SHAPES = [(9, 1, 12, 3, 10, 12), (4, 1, 9, 17, 9, 7), (3, 2, 5, 4, 9, 8)]


def _same_pads(size: int, ks: int, stride: int) -> tuple[int, int]:
    total = max((math.ceil(size / stride) - 1) * stride + ks - size, 0)
    return total // 2, total - total // 2


def _numpy_conv(x: np.ndarray, k: np.ndarray, stride: int) -> np.ndarray:
    """float64 SAME convolution: out[n, h, w, d] = sum_{i, j, c} xpad[n, h*s + i, w*s + j, c] k[i, j, c, d]."""
    ks, (_, h, w, _) = k.shape[0], x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), _same_pads(h, ks, stride), _same_pads(w, ks, stride), (0, 0)))
    out_h, out_w = math.ceil(h / stride), math.ceil(w / stride)
    return sum(np.einsum("nhwc,cd->nhwd", xp[:, i:i + (out_h - 1) * stride + 1:stride,
                                            j:j + (out_w - 1) * stride + 1:stride], k[i, j].astype(np.float64))
               for i in range(ks) for j in range(ks))


def _numpy_input_grad(g: np.ndarray, k: np.ndarray, x_shape, stride: int) -> np.ndarray:
    """float64 adjoint of _numpy_conv in x: each output's gradient spread back over the window that made it."""
    ks, (n, h, w, c) = k.shape[0], x_shape
    (top, bottom), (left, right) = _same_pads(h, ks, stride), _same_pads(w, ks, stride)
    dxp = np.zeros((n, h + top + bottom, w + left + right, c))
    out_h, out_w = g.shape[1:3]
    for i in range(ks):
        for j in range(ks):
            dxp[:, i:i + (out_h - 1) * stride + 1:stride, j:j + (out_w - 1) * stride + 1:stride] += np.einsum(
                "nhwd,cd->nhwc", g.astype(np.float64), k[i, j].astype(np.float64))
    return dxp[:, top:top + h, left:left + w]


def _assert_within(got, exact, limit) -> None:
    error = np.abs(np.asarray(got, np.float64) - exact)
    assert np.all(error <= limit), f"max error / bound {np.max(error / limit):.3g}"


@pytest.mark.parametrize("ks,stride,cin,cout,h,w", SHAPES)
def test_every_formulation_equals_xla_and_float64_numpy(ks, stride, cin, cout, h, w, monkeypatch):
    """Each candidate of each part (both libraries, every kernel-gradient form, a one-row band and a whole-image
    band) against the float64 NumPy convolution within gamma_n times the same sums over magnitudes (Higham: any
    summation order), and against XLA's convolution within twice that."""
    monkeypatch.setattr(conv, "BAND_CANDIDATES", (1, 2**21))  # one row a band (ragged last band), one band
    rng = np.random.default_rng(ks + stride)
    x = rng.standard_normal((2, h, w, cin)).astype(np.float32)
    k = (rng.standard_normal((ks, ks, cin, cout)) * 0.1).astype(np.float32)
    g = rng.standard_normal((2, math.ceil(h / stride), math.ceil(w / stride), cout)).astype(np.float32)
    shape = conv_tuning.ConvShape.of(x.shape, k.shape, stride, x.dtype)

    def xla(x_, k_):
        return jax.lax.conv_general_dilated(x_, k_, (stride, stride), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    xla_out, xla_vjp = jax.vjp(xla, jnp.asarray(x), jnp.asarray(k))
    xla_dx, xla_dk = xla_vjp(jnp.asarray(g))
    exact_out, bound_out = _numpy_conv(x, k, stride), _numpy_conv(np.abs(x), np.abs(k), stride)
    exact_dx = _numpy_input_grad(g, k, x.shape, stride)
    bound_dx = _numpy_input_grad(np.abs(g), np.abs(k), x.shape, stride)
    gamma_out, gamma_dx = summation_bound(ks * ks * cin), summation_bound(ks * ks * cout)
    gamma_dk = summation_bound(g.shape[0] * g.shape[1] * g.shape[2])
    _assert_within(xla_out, exact_out, gamma_out * bound_out)  # the reference itself holds

    forms = {part: conv.candidates(shape, part) for part in conv_tuning.PARTS}
    assert len(forms["kernel_grad"]) == (4 if stride == 1 and cout < conv.YNN_MIN_FEATURES else 3)
    for form in forms["forward"]:
        got = jax.jit(conv.forward_with, static_argnums=(2, 3))(x, k, stride, form)
        _assert_within(got, exact_out, gamma_out * bound_out)
        _assert_within(got, np.asarray(xla_out, np.float64), 2 * gamma_out * bound_out)
    for form in forms["input_grad"]:
        got = jax.jit(conv.input_grad_with, static_argnums=(2, 3, 4))(g, k, x.shape, stride, form)
        _assert_within(got, exact_dx, gamma_dx * bound_dx)
        _assert_within(got, np.asarray(xla_dx, np.float64), 2 * gamma_dx * bound_dx)
    for form in forms["kernel_grad"]:
        got = jax.jit(conv.kernel_grad_with, static_argnums=(2, 3, 4))(x, g, k.shape, stride, form)
        assert_kernel_grad_within_bound(got, x, g, ks, stride)
        _assert_within(got, np.asarray(xla_dk, np.float64),
                       2 * gamma_dk * _numpy_kernel_grad(np.abs(x), np.abs(g), ks, stride))


# Fake medians (seconds) per part and formulation: the measured choice is then known in advance.
FAKE = {"forward": {"ynnpack": 2.0, "eigen": 1.0}, "input_grad": {"ynnpack": 1.0, "eigen": 2.0},
        "kernel_grad": {"xla": 3.0, "few_output": 2.5}}  # any band: 1.0
SHAPE = (2, 12, 10, 8, 6, 3)  # batch, height, width, in, out, kernel size: stride 1, few outputs


@pytest.fixture
def tuning(tmp_path, monkeypatch):
    """Measure mode, a cache in tmp_path, every shape measured (none too small), a fake timer that counts its
    calls, and a fresh process view before and after."""
    monkeypatch.setenv(conv_tuning.CACHE_ENV, str(tmp_path / "conv_choices.json"))
    monkeypatch.setenv(conv_tuning.CHOICE_ENV, "measure")
    monkeypatch.setattr(conv_tuning, "MIN_MEASURED_MACS", 0)
    calls = []

    def fake_time(shape, part, form, give_up_after=None):
        calls.append((shape.key, part, form))
        return FAKE[part].get(form, 1.0)

    monkeypatch.setattr(conv_tuning, "time_formulation", fake_time)
    conv_tuning.reset()
    yield tmp_path / "conv_choices.json", calls
    conv_tuning.reset()


def _trace_step(seed: int = 0, frozen_kernel: bool = False):
    """A fresh jit (no trace cache) of a conv2d layer's loss gradient; returns (loss, dx, dk) and its choices."""
    n, h, w, cin, cout, ks = SHAPE
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n, h, w, cin)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((ks, ks, cin, cout)) * 0.1, jnp.float32)

    def loss(x, k):
        return (conv.conv2d(x, k) ** 2).sum()

    with conv_tuning.recording() as rows:
        if frozen_kernel:
            out = jax.jit(jax.value_and_grad(loss))(x, k)
        else:
            out = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, k)
    return out, {r["part"]: (r["formulation"], r["source"]) for r in rows}


def test_measured_choice_is_cached_and_reused(tuning):
    path, calls = tuning
    _, choices = _trace_step()
    assert choices == {"forward": ("eigen", "measured"), "input_grad": ("ynnpack", "measured"),
                       "kernel_grad": (f"banded:{conv.BAND_BYTES}", "measured")}
    data = json.loads(path.read_text())
    assert data["format"] == conv_tuning.CACHE_FORMAT
    entries = data["machines"][conv_tuning.machine_key()]
    (key, parts), = entries.items()
    assert key == "2x12x10 3x3 8->6 s1 float32" and parts["forward"]["choice"] == "eigen"
    assert parts["kernel_grad"]["ms"]["few_output"] == 2500.0

    measured = len(calls)
    conv_tuning.reset()  # as a new process: the file is read, nothing timed
    _, choices = _trace_step()
    assert len(calls) == measured
    assert {p: s for p, (_, s) in choices.items()} == dict.fromkeys(conv_tuning.PARTS, "cached")


def test_another_machine_or_jaxlib_is_measured_anew(tuning, monkeypatch):
    path, calls = tuning
    _trace_step()
    measured = len(calls)
    conv_tuning.reset()
    monkeypatch.setattr(conv_tuning, "machine_key", lambda: "another CPU | isa 0 | 2 cores | jaxlib 0.0")
    _, choices = _trace_step()
    assert len(calls) == 2 * measured and {s for _, s in choices.values()} == {"measured"}
    assert len(json.loads(path.read_text())["machines"]) == 2  # both kept: a shared home folder


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 999, "machines": {}}), "[1, 2]"])
def test_a_corrupt_or_foreign_cache_is_ignored_with_a_warning_and_rewritten(tuning, caplog, content):
    path, calls = tuning
    path.write_text(content)
    with caplog.at_level(logging.WARNING):
        _, choices = _trace_step()
    assert any("ignoring the convolution choice cache" in r.getMessage() for r in caplog.records)
    assert {s for _, s in choices.values()} == {"measured"}
    assert json.loads(path.read_text())["format"] == conv_tuning.CACHE_FORMAT


def test_remeasure_ignores_the_cache_and_overwrites_it(tuning, monkeypatch):
    path, calls = tuning
    _trace_step()
    conv_tuning.reset()
    monkeypatch.setenv(conv_tuning.CHOICE_ENV, "remeasure")
    monkeypatch.setitem(FAKE, "forward", {"ynnpack": 1.0, "eigen": 2.0})  # the ranking changed
    _, choices = _trace_step()
    assert choices["forward"] == ("ynnpack", "measured")
    entry = json.loads(path.read_text())["machines"][conv_tuning.machine_key()]["2x12x10 3x3 8->6 s1 float32"]
    assert entry["forward"]["choice"] == "ynnpack"


def test_forced_choice_heuristic_mode_and_frozen_kernels(tuning, monkeypatch):
    _, calls = tuning
    monkeypatch.setenv(conv_tuning.CHOICE_ENV, "heuristic,forward=ynnpack,kernel_grad=banded")
    _, choices = _trace_step()
    assert choices == {"forward": ("ynnpack", "forced"), "input_grad": ("eigen", "heuristic"),
                       "kernel_grad": (f"banded:{conv.BAND_BYTES}", "forced")}
    with conv_tuning.conv_choice("heuristic"):  # the thresholds: nothing timed, nothing read or written
        _, choices = _trace_step(frozen_kernel=True)
    n, h, w, cin, cout, ks = SHAPE
    shape = conv_tuning.ConvShape(n, h, w, cin, cout, ks, ks, 1, "float32")
    # a kernel that is not differentiated gets no kernel gradient (nor its choice)
    assert choices == {p: (conv.heuristic(shape, p), "heuristic") for p in ("forward", "input_grad")}
    assert calls == [] and not tuning[0].exists()


def test_heuristic_is_the_thresholds_for_the_generator_layers():
    """``heuristic`` picks what wespe.conv's thresholds picked before choices were measured (batch 8, 100 px)."""
    def picks(cin, cout, ks, stride=1, batch=8):
        shape = conv_tuning.ConvShape(batch, 100, 100, cin, cout, ks, ks, stride, "float32")
        return tuple(conv.heuristic(shape, part) for part in conv_tuning.PARTS)

    band = f"banded:{conv.BAND_BYTES}"
    assert picks(3, 64, 9) == ("eigen", "ynnpack", band)
    assert picks(64, 64, 3) == ("eigen", "eigen", band)
    assert picks(64, 3, 9) == ("ynnpack", "eigen", "few_output")
    assert picks(64, 64, 3, batch=1)[2] == band and picks(8, 8, 3, batch=1)[2] == "xla"  # under MIN_BANDED_MACS
    assert picks(64, 3, 9, stride=2) == ("xla", "xla", "xla")


def test_a_bad_choice_is_one_clear_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(conv_tuning.CHOICE_ENV, "fastest")
    with pytest.raises(UserError, match=r"WESPE_CONV_CHOICE='fastest': 'fastest' is not a mode"):
        conv_tuning.policy()
    monkeypatch.setenv(conv_tuning.CHOICE_ENV, "measure,kernel_grad=cudnn")
    with pytest.raises(UserError, match=r"WESPE_CONV_CHOICE=.*'kernel_grad=cudnn' is not part=formulation"):
        conv.conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)))
    with pytest.raises(UserError, match="conv_choice="):
        with conv_tuning.conv_choice("measure,heuristic"):
            pass


def test_a_given_choice_gives_the_same_results_and_is_logged_once(tuning, caplog):
    with caplog.at_level(logging.INFO):
        first, _ = _trace_step(seed=3)
        second, _ = _trace_step(seed=3)  # traced and compiled again, from the process's choices
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("conv 2x12x10")]
    assert sorted(line.split(":")[0].split()[-1] for line in lines) == sorted(conv_tuning.PARTS)
    assert "forward: eigen (measured: eigen 1000 ms, ynnpack 2000 ms)" in "\n".join(lines)


def test_a_real_measurement_of_a_tiny_layer(tmp_path, monkeypatch):
    """The real timer, once: every candidate timed (or given up on as far slower), the fastest chosen."""
    monkeypatch.setenv(conv_tuning.CACHE_ENV, str(tmp_path / "choices.json"))
    conv_tuning.reset()
    try:
        shape = conv_tuning.ConvShape(2, 16, 16, 16, 8, 3, 3, 1, "float32")
        rows = conv_tuning.measure([shape], ("forward", "kernel_grad"))
    finally:
        conv_tuning.reset()
    assert [r["part"] for r in rows] == ["forward", "kernel_grad"]
    for row in rows:
        candidates = conv.candidates(shape, row["part"])
        assert set(row["ms"]) == set(candidates) and all(t > 0 for t in row["ms"].values())
        assert row["formulation"] == min(row["ms"], key=row["ms"].get) and row["source"] == "measured"
    assert "2x16x16 3x3 16->8 s1 float32" in (tmp_path / "choices.json").read_text()


def test_large_images_are_timed_on_a_crop_and_accelerators_take_the_thresholds(tuning, monkeypatch):
    photo = conv_tuning.ConvShape(1, 3000, 4000, 64, 64, 3, 3, 1, "float32")
    assert photo.measured() == photo._replace(height=512, width=512)
    assert conv_tuning.ConvShape(8, 100, 100, 64, 64, 3, 3, 1, "float32").measured().height == 100
    monkeypatch.setattr(conv_tuning, "_can_measure", lambda: False)
    _, choices = _trace_step()
    assert {s for _, s in choices.values()} == {"heuristic"} and tuning[1] == []


def test_describe_and_the_benchmark_flag():
    rows = [{"shape": "8x100x100 3x3 64->64 s1 float32", "part": p, "formulation": f, "source": "cached", "ms": {}}
            for p, f in (("kernel_grad", "xla"), ("forward", "ynnpack"))]
    assert conv_tuning.describe(rows) == ("8x100x100 3x3 64->64 s1 float32  forward ynnpack (cached)  "
                                          "kernel_grad xla (cached)")
    root = Path(__file__).resolve().parent.parent
    proc = script_server.run([sys.executable, str(root / "launch" / "benchmark.py"), "--conv_choice=fastest"],
                             cwd=root, timeout=300)
    assert proc.returncode == 2 and "--conv_choice='fastest': 'fastest' is not a mode" in proc.stderr
