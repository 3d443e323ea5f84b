"""wespe.conv: the convolution whose kernel gradient is computed in bands of rows on CPU."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wespe import conv


def _numpy_kernel_grad(x: np.ndarray, g: np.ndarray, ks: int, stride: int) -> np.ndarray:
    """float64 reference: dk[i, j, c, d] = sum_{n,h,w} xpad[n, h*s + i, w*s + j, c] g[n, h, w, d], with TF's SAME
    padding (total = max((out - 1) * s + k - size, 0), the smaller half on top / left)."""
    x, g = x.astype(np.float64), g.astype(np.float64)
    n, h, w, c = x.shape
    out_h, out_w = math.ceil(h / stride), math.ceil(w / stride)
    pad_h = max((out_h - 1) * stride + ks - h, 0)
    pad_w = max((out_w - 1) * stride + ks - w, 0)
    xp = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    dk = np.zeros((ks, ks, c, g.shape[-1]))
    for i in range(ks):
        for j in range(ks):
            window = xp[:, i:i + (out_h - 1) * stride + 1:stride, j:j + (out_w - 1) * stride + 1:stride]
            dk[i, j] = np.einsum("nhwc,nhwd->cd", window, g)
    return dk


# (kernel size, stride, in, out, height, width): the generator's and discriminator's layer kinds at odd sizes.
SHAPES = [(3, 1, 4, 5, 13, 11), (9, 1, 3, 6, 10, 12), (11, 4, 1, 4, 23, 19), (5, 2, 3, 4, 9, 8),
          (3, 2, 2, 3, 7, 7)]


@pytest.mark.parametrize("ks,stride,cin,cout,h,w", SHAPES)
@pytest.mark.parametrize("band_bytes", [1, conv.BAND_BYTES])  # one row a band (ragged last band), one band
def test_banded_kernel_grad_matches_float64_numpy(ks, stride, cin, cout, h, w, band_bytes):
    rng = np.random.default_rng(ks * 100 + stride)
    x = rng.standard_normal((2, h, w, cin)).astype(np.float32)
    g = rng.standard_normal((2, math.ceil(h / stride), math.ceil(w / stride), cout)).astype(np.float32)
    got = conv.banded_kernel_grad(jnp.asarray(x), jnp.asarray(g), (ks, ks, cin, cout), stride, band_bytes)
    np.testing.assert_allclose(np.asarray(got), _numpy_kernel_grad(x, g, ks, stride), rtol=1e-4, atol=1e-4)
    # XLA's own kernel gradient (what GPUs and TPUs use) agrees with the same reference.
    xla = conv.xla_kernel_grad(jnp.asarray(x), jnp.asarray(g), (ks, ks, cin, cout), stride)
    np.testing.assert_allclose(np.asarray(xla), _numpy_kernel_grad(x, g, ks, stride), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ks,stride,cin,cout,h,w", SHAPES + [(9, 1, 64, 3, 8, 8)])  # last: XLA's own path
def test_conv2d_values_and_gradients_equal_xla_convolution(ks, stride, cin, cout, h, w, monkeypatch):
    monkeypatch.setattr(conv, "MIN_BANDED_MACS", 0)  # the banded path even for these small layers
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((3, h, w, cin)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((ks, ks, cin, cout)) * 0.1, jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal((3, math.ceil(h / stride), math.ceil(w / stride), cout)),
                            jnp.float32)

    def xla(x, k):
        return jax.lax.conv_general_dilated(x, k, (stride, stride), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    ours, ours_vjp = jax.vjp(lambda x, k: conv.conv2d(x, k, stride), x, k)
    ref, ref_vjp = jax.vjp(xla, x, k)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))  # the forward pass is XLA's own
    for got, want in zip(jax.jit(ours_vjp)(cotangent), ref_vjp(cotangent)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)


def test_cpu_uses_the_banded_kernel_gradient(monkeypatch):
    """On CPU the kernel gradient is the band loop (a while loop in the compiled program), not XLA's
    whole-image convolution; a layer with few output channels keeps XLA's (no loop)."""
    x = jnp.zeros((2, 16, 16, 8))
    monkeypatch.setattr(conv, "MIN_BANDED_MACS", 0)

    def grad_hlo(cout, ks):
        k = jnp.zeros((ks, ks, 8, cout))
        return jax.jit(jax.grad(lambda k: conv.conv2d(x, k).sum())).lower(k).compile().as_text()

    assert "while" in grad_hlo(8, 3)
    assert "while" not in grad_hlo(1, 9)  # 9*9*8 columns for 1 output channel: XLA's own
    with conv.kernel_gradient("xla"):
        assert "while" not in grad_hlo(8, 3)
    monkeypatch.setattr(conv, "MIN_BANDED_MACS", 2 * 16 * 16 * 9 * 8 * 8 + 1)  # a small layer: XLA's
    assert "while" not in grad_hlo(8, 3)
    with pytest.raises(ValueError, match="unknown kernel gradient"):
        with conv.kernel_gradient("fast"):
            pass


def test_bfloat16_gradient_keeps_the_kernel_dtype():
    x = jnp.ones((1, 6, 6, 2), jnp.bfloat16)
    k = jnp.full((3, 3, 2, 4), 0.5, jnp.bfloat16)
    dk = jax.jit(jax.grad(lambda k: conv.conv2d(x, k).astype(jnp.float32).sum()))(k)
    assert dk.dtype == jnp.bfloat16
    # the same sums as float32 (bfloat16 rounding only)
    dk32 = jax.grad(lambda k: conv.conv2d(x.astype(jnp.float32), k).sum())(k.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(dk, np.float32), np.asarray(dk32), rtol=1e-2)


def _tiny_train_step(width: int):
    """A small single-device WESPE step on zero batches: (config, graphdefs, preprocessing, state, step, batch)."""
    from wespe import config as configs, parallel, train

    c = configs.preset("wespe_paper")
    c.vgg_weights, c.batch_size, c.patch_size, c.content_layer = "random", 2, 32, "relu1_2"
    c.generator.width, c.generator.num_blocks, c.discriminator.head = width, 1, "global_pool"
    layout = parallel.Layout(parallel.make_mesh(c.mesh))
    state, graphdefs = train.create_train_state(c, layout)
    weights, pre = train.load_content_network(c)
    step = train.make_train_step(c, graphdefs, weights, pre, layout, None)
    batch = layout.global_batch({k: np.zeros((2, 32, 32, 3), np.float32) for k in ("source", "target")})
    return c, graphdefs, pre, state, step, batch


def test_benchmark_counts_the_flops_of_xla_kernel_gradients(monkeypatch):
    """XLA's cost analysis counts a loop body once, so the step with banded kernel gradients reports fewer
    FLOPs; the benchmark counts the same arithmetic on the XLA-gradient program (even after the banded step
    was traced: jit's trace cache must not hand back that trace)."""
    from wespe import benchmarking, train

    monkeypatch.setattr(conv, "MIN_BANDED_MACS", 0)  # the banded path even for this tiny network

    c, graphdefs, pre, state, step, batch = _tiny_train_step(width=8)
    args = (state, step.vgg_weights, batch, jax.random.key(0), None)
    banded = benchmarking._flops(step.jitted.lower(*args))
    counted = benchmarking._step_flops(step, state, batch, jax.random.key(0))
    with conv.kernel_gradient("xla"):
        xla = benchmarking._flops(jax.jit(lambda *a: train._train_step(
            *a, config=c, graphdefs=graphdefs, preprocessing=pre)).lower(*args))
    assert counted == xla != banded  # with the cached banded trace, counted would equal banded


def _convolutions_in_ynn_fusions(hlo: str) -> int:
    """How many convolutions of a compiled program's text sit inside YNNPACK fusions."""
    bodies, name = {}, None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            name = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            bodies[name] = []
        elif name is not None:
            bodies[name].append(line)
    called = [line.split("calls=%")[1].split(",")[0].split()[0] for body in bodies.values() for line in body
              if "ynn_fusion" in line.split("=")[0] and "calls=%" in line]
    return sum("convolution(" in line for c in called for line in bodies.get(c, []))


def test_training_step_compiles_convolutions_outside_ynnpack_on_cpu():
    """The CPU training step keeps YNNPACK for dots only (conv.TRAIN_STEP_CPU_OPTIONS); other platforms never
    get the options."""
    options = conv.train_step_compiler_options("cpu")
    assert options == conv.TRAIN_STEP_CPU_OPTIONS
    assert conv.train_step_compiler_options("gpu") == {} == conv.train_step_compiler_options("tpu")
    x, k = jnp.ones((2, 24, 24, 64)), jnp.ones((3, 3, 64, 64))
    default = jax.jit(conv.conv2d).lower(x, k).compile().as_text()
    tuned = jax.jit(conv.conv2d, compiler_options=options).lower(x, k).compile().as_text()
    if "ynn_fusion" not in default:
        pytest.skip("this XLA:CPU does not hand convolutions to YNNPACK by default")
    assert _convolutions_in_ynn_fusions(default) >= 1 and _convolutions_in_ynn_fusions(tuned) == 0

    _, _, _, state, step, batch = _tiny_train_step(width=32)  # over 16 channels: YNNPACK would take its convs
    hlo = step.jitted.lower(state, step.vgg_weights, batch, jax.random.key(0), None).compile().as_text()
    assert "convolution(" in hlo and _convolutions_in_ynn_fusions(hlo) == 0


def test_an_xla_without_the_options_compiles_with_its_defaults(monkeypatch):
    """An option this XLA does not know (checked once on a tiny program) leaves the step on XLA's defaults."""
    monkeypatch.setattr(conv, "TRAIN_STEP_CPU_OPTIONS", {"xla_cpu_no_such_option_for_wespe_tests": "1"})
    conv.train_step_compiler_options.cache_clear()
    try:
        assert conv.train_step_compiler_options("cpu") == {}
    finally:
        conv.train_step_compiler_options.cache_clear()
