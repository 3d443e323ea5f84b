"""wespe.conv: the convolution whose kernel gradient is computed in bands of rows on CPU (and
wespe.compiler_options: the training step's options that decide which convolutions YNNPACK takes)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wespe import compiler_options, conv


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


U32 = 2.0 ** -24  # float32 unit roundoff


def summation_bound(n: int) -> float:
    """gamma_n = n u / (1 - n u): a dot product of n float32 terms computed in *any* order, blocking or FMA use
    (AVX2 or AVX-512, Eigen, YNNPACK, bands) is within gamma_n * sum_i |x_i y_i| of the exact value (Higham,
    Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 3.5). A tolerance from it holds on every CPU."""
    return n * U32 / (1 - n * U32)


def assert_kernel_grad_within_bound(got, x: np.ndarray, g: np.ndarray, ks: int, stride: int) -> None:
    """``got`` (float32) against the float64 kernel gradient, element by element within gamma_n times the same
    sum over |x| |g|, n = the images x output positions summed."""
    n = g.shape[0] * g.shape[1] * g.shape[2]
    error = np.abs(np.asarray(got, np.float64) - _numpy_kernel_grad(x, g, ks, stride))
    limit = summation_bound(n) * _numpy_kernel_grad(np.abs(x), np.abs(g), ks, stride)
    assert np.all(error <= limit), f"max error / bound {np.max(error / limit):.3g} (n = {n})"


# (kernel size, stride, in, out, height, width): the generator's and discriminator's layer kinds at odd sizes.
SHAPES = [(3, 1, 4, 5, 13, 11), (9, 1, 3, 6, 10, 12), (11, 4, 1, 4, 23, 19), (5, 2, 3, 4, 9, 8),
          (3, 2, 2, 3, 7, 7)]
# Stride-1 layers whose forward (>= 8 outputs) or input gradient (>= 8 inputs) runs one row taller on CPU
# (conv.EIGEN_MIN_OUTPUT_CHANNELS), one with an even kernel (SAME pads one more at the bottom / right).
WIDE_SHAPES = [(3, 1, 8, 9, 9, 7), (4, 1, 9, 8, 10, 9), (9, 1, 12, 3, 10, 12), (9, 1, 3, 10, 8, 11)]


@pytest.mark.parametrize("ks,stride,cin,cout,h,w", SHAPES + WIDE_SHAPES[:2])
@pytest.mark.parametrize("band_bytes", [1, conv.BAND_BYTES])  # one row a band (ragged last band), one band
def test_banded_kernel_grad_matches_float64_numpy(ks, stride, cin, cout, h, w, band_bytes):
    rng = np.random.default_rng(ks * 100 + stride)
    x = rng.standard_normal((2, h, w, cin)).astype(np.float32)
    g = rng.standard_normal((2, math.ceil(h / stride), math.ceil(w / stride), cout)).astype(np.float32)
    got = conv.banded_kernel_grad(jnp.asarray(x), jnp.asarray(g), (ks, ks, cin, cout), stride, band_bytes)
    assert_kernel_grad_within_bound(got, x, g, ks, stride)
    # XLA's own kernel gradient (what GPUs and TPUs use) agrees with the same reference.
    xla = conv.xla_kernel_grad(jnp.asarray(x), jnp.asarray(g), (ks, ks, cin, cout), stride)
    assert_kernel_grad_within_bound(xla, x, g, ks, stride)


@pytest.mark.parametrize("ks,stride,cin,cout,h,w", SHAPES + WIDE_SHAPES + [(9, 1, 64, 3, 8, 8), (3, 2, 96, 1, 9, 9)])
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
    # Both are float32 sums of the same products in other orders: each within gamma_n of the exact value, so
    # within 2 gamma_n of each other, relative to the same sums over magnitudes (the convolution, and its
    # gradients, of |x|, |k| and |cotangent|; n the most terms any of the three sums).
    magnitude, magnitude_vjp = jax.vjp(xla, jnp.abs(x), jnp.abs(k))
    limits = [2 * summation_bound(max(ks * ks * max(cin, cout), cotangent.shape[0] * cotangent.shape[1]
                                      * cotangent.shape[2])) * np.asarray(m, np.float64)
              for m in (magnitude, *magnitude_vjp(jnp.abs(cotangent)))]
    for got, want, limit in zip((ours, *jax.jit(ours_vjp)(cotangent)), (ref, *ref_vjp(cotangent)), limits):
        error = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
        assert np.all(error <= limit), f"max error / bound {np.max(error / limit):.3g}"


@pytest.mark.parametrize("batch,ks,cin,cout,h,w", [(2, 9, 64, 3, 10, 12), (19, 4, 40, 1, 9, 7), (3, 3, 5, 2, 6, 6)])
def test_few_output_kernel_grad_matches_float64_numpy(batch, ks, cin, cout, h, w):
    """The transposed kernel gradient, chunked over images and input channels (ragged last chunks), even
    kernels (SAME pads one more at the bottom / right) included."""
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, h, w, cin)).astype(np.float32)
    g = rng.standard_normal((batch, h, w, cout)).astype(np.float32)
    got = jax.jit(conv.few_output_kernel_grad, static_argnums=2)(jnp.asarray(x), jnp.asarray(g), (ks, ks, cin, cout))
    assert_kernel_grad_within_bound(got, x, g, ks, 1)


def test_cpu_uses_the_banded_kernel_gradient(monkeypatch):
    """On CPU the kernel gradient is the band loop (a while loop in the compiled program), not XLA's
    whole-image convolution; a layer with few output channels takes the transposed one (no loop)."""
    x = jnp.zeros((2, 16, 16, 8))
    monkeypatch.setattr(conv, "MIN_BANDED_MACS", 0)

    def grad_hlo(cout, ks):
        k = jnp.zeros((ks, ks, 8, cout))
        return jax.jit(jax.grad(lambda k: conv.conv2d(x, k).sum())).lower(k).compile().as_text()

    assert "while" in grad_hlo(8, 3)
    assert "while" not in grad_hlo(1, 9)  # 9*9*8 columns for 1 output channel: few_output_kernel_grad
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
    from wespe import config as configs
    from wespe import parallel, train_step

    c = configs.preset("wespe_paper")
    c.vgg_weights, c.batch_size, c.patch_size, c.content_layer = "random", 2, 32, "relu1_2"
    c.generator.width, c.generator.num_blocks, c.discriminator.head = width, 1, "global_pool"
    layout = parallel.Layout(parallel.make_mesh(c.mesh))
    state, graphdefs = train_step.create_train_state(c, layout)
    weights, pre = train_step.load_content_network(c)
    step = train_step.make_train_step(c, graphdefs, weights, pre, layout, None)
    batch = layout.global_batch({k: np.zeros((2, 32, 32, 3), np.float32) for k in ("source", "target")})
    return c, graphdefs, pre, state, step, batch


def test_benchmark_counts_the_flops_of_xla_kernel_gradients(monkeypatch):
    """XLA's cost analysis counts a loop body once, so the step with banded kernel gradients reports fewer
    FLOPs; the benchmark counts the same arithmetic on the XLA-gradient program (even after the banded step
    was traced: jit's trace cache must not hand back that trace)."""
    from wespe import train_step
    from wespe.evaluation import speed_benchmark

    monkeypatch.setattr(conv, "MIN_BANDED_MACS", 0)  # the banded path even for this tiny network

    c, graphdefs, pre, state, step, batch = _tiny_train_step(width=8)
    args = (state, step.vgg_weights, batch, jax.random.key(0), None)
    banded = speed_benchmark._flops(step.jitted.lower(*args))
    counted = speed_benchmark._step_flops(step, state, batch, jax.random.key(0))
    with conv.kernel_gradient("xla"):
        xla = speed_benchmark._flops(jax.jit(lambda *a: train_step._train_step(
            *a, config=c, graphdefs=graphdefs, preprocessing=pre)).lower(*args))
    assert counted == xla != banded  # with the cached banded trace, counted would equal banded


def _convolution_outputs(hlo: str) -> tuple[list[int], list[int]]:
    """The output feature counts of a compiled program's stride-1 convolutions: (inside YNNPACK fusions,
    all)."""
    bodies, name = {}, None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            name = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            bodies[name] = []
        elif name is not None:
            bodies[name].append(line)

    def features(line):  # "= f32[2,32,32,3]{3,2,1,0} convolution(...), ..., dim_labels=b01f_01io->b01f"
        dims = line.split("=", 1)[1].split("[", 1)[1].split("]", 1)[0].split(",")
        return int(dims[line.split("dim_labels=", 1)[1].split("->", 1)[1].index("f")])

    called = {line.split("calls=%")[1].split(",")[0].split()[0] for body in bodies.values() for line in body
              if "ynn_fusion" in line.split("=")[0] and "calls=%" in line}
    convs = {c: [features(line) for line in body if " convolution(" in line and "stride=" not in line]
             for c, body in bodies.items()}
    return ([f for c in called for f in convs.get(c, [])], [f for fs in convs.values() for f in fs])


def test_each_cpu_convolution_runs_on_the_library_faster_for_its_shape(monkeypatch):
    """With the training step's options, YNNPACK takes the stride-1 convolutions with few outputs (conv2d keeps
    the others on Eigen: conv.EIGEN_MIN_OUTPUT_CHANNELS), forward and backward; other platforms get no options."""
    options = compiler_options.train_step_compiler_options("cpu")
    assert options == compiler_options.TRAIN_STEP_CPU_OPTIONS
    assert compiler_options.train_step_compiler_options("gpu") == {}
    assert compiler_options.train_step_compiler_options("tpu") == {}

    def compiled(f, *args):
        return jax.jit(f, compiler_options=options).lower(*args).compile().as_text()

    x, wide, narrow = jnp.ones((2, 24, 24, 64)), jnp.ones((3, 3, 64, 64)), jnp.ones((9, 9, 64, 3))
    plain = compiled(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                               dimension_numbers=("NHWC", "HWIO", "NHWC")), x, wide)
    if not _convolution_outputs(plain)[0]:
        pytest.skip("this XLA:CPU does not hand convolutions to YNNPACK")
    monkeypatch.setattr(conv, "MIN_BANDED_MACS", 0)  # these small layers' kernel gradients as a real layer's
    loss = lambda x, k: (conv.conv2d(x, k) ** 2).sum()  # noqa: E731  (squared: the forward is needed)
    ynn, every = _convolution_outputs(compiled(jax.grad(loss, argnums=(0, 1)), x, wide))
    assert ynn == [] and every == [64, 64]  # forward and input gradient on Eigen (the kernel gradient: dots)
    ynn, every = _convolution_outputs(compiled(jax.grad(loss, argnums=(0, 1)), x, narrow))
    # forward (3 outputs) on YNNPACK; input gradient (64) and the kernel gradient's 4 chunks (16 each) on Eigen
    assert ynn == [3] and sorted(every) == [3] + [16] * 4 + [64]

    _, _, _, state, step, batch = _tiny_train_step(width=32)  # over 16 channels: YNNPACK would take its convs
    hlo = step.jitted.lower(state, step.vgg_weights, batch, jax.random.key(0), None).compile().as_text()
    ynn, every = _convolution_outputs(hlo)
    assert 3 in ynn and all(f < conv.EIGEN_MIN_OUTPUT_CHANNELS for f in ynn)
    assert sum(f >= conv.EIGEN_MIN_OUTPUT_CHANNELS for f in every) >= 10


def test_an_xla_without_the_options_compiles_with_its_defaults(monkeypatch):
    """An option this XLA does not know (checked once on a tiny program) leaves the step on XLA's defaults."""
    unknown = {"xla_cpu_no_such_option_for_wespe_tests": "1"}
    monkeypatch.setattr(compiler_options, "TRAIN_STEP_CPU_OPTIONS", unknown)
    compiler_options.train_step_compiler_options.cache_clear()
    try:
        assert compiler_options.train_step_compiler_options("cpu") == {}
    finally:
        compiler_options.train_step_compiler_options.cache_clear()
