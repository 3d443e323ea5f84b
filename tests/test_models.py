"""Networks: shapes, parameter counts, InstanceNorm and a whole generator against float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wespe import models, ops
from wespe.models import BASE_SIGMA, BASE_TAPS, Discriminator, Generator, InstanceNorm, count_parameters


def conv_same_np(x, kernel, bias, stride=1):
    """float64 SAME cross-correlation, NHWC / HWIO, TF padding rule (extra pad at the bottom/right)."""
    n, h, w, _ = x.shape
    kh, kw, _, cout = kernel.shape
    oh, ow = -(-h // stride), -(-w // stride)
    ph = max((oh - 1) * stride + kh - h, 0)
    pw = max((ow - 1) * stride + kw - w, 0)
    xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = np.zeros((n, oh, ow, cout))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
            out += patch @ kernel[i, j]
    return out + bias


def instance_norm_np(x, scale, shift, eps=1e-3):
    mu = x.mean(axis=(1, 2), keepdims=True)
    var = ((x - mu) ** 2).mean(axis=(1, 2), keepdims=True)
    return scale * (x - mu) / np.sqrt(var + eps) + shift


def params_np(module):
    return jax.tree.map(lambda v: np.asarray(v, np.float64), nnx.to_pure_dict(nnx.state(module, nnx.Param)))


def generator_np(p, x):
    """The DPED ResNet in float64 NumPy, written from the official models.py."""
    relu = lambda z: np.maximum(z, 0)  # noqa: E731
    c = lambda name, h: conv_same_np(h, p[name]["kernel"], p[name]["bias"])  # noqa: E731
    h = relu(c("conv_in", x))
    for b in sorted(p["blocks"]):
        blk = p["blocks"][b]
        t = relu(instance_norm_np(conv_same_np(h, blk["conv1"]["kernel"], blk["conv1"]["bias"]),
                                  blk["norm1"]["scale"], blk["norm1"]["shift"]))
        t = relu(instance_norm_np(conv_same_np(t, blk["conv2"]["kernel"], blk["conv2"]["bias"]),
                                  blk["norm2"]["scale"], blk["norm2"]["shift"]))
        h = t + h
    h = relu(c("conv_mid1", h))
    h = relu(c("conv_mid2", h))
    return np.tanh(c("conv_out", h)) * 0.58 + 0.5


def randomise(module, seed=0, scale=0.3):
    """Replace every parameter by larger random values so the reference comparison is not trivially ~0.5."""
    rng = np.random.default_rng(seed)
    state = nnx.state(module, nnx.Param)
    nnx.update(module, jax.tree.map(lambda v: jnp.asarray(rng.normal(size=v.shape) * scale, jnp.float32), state))
    return module


def test_generator_parameter_count_and_shapes():
    g = Generator()
    assert count_parameters(g) == 401_475
    for shape in [(1, 1, 1, 3), (2, 17, 9, 3), (1, 3, 40, 3)]:
        y = g(jnp.full(shape, 0.5))
        assert y.shape == shape
        assert float(y.min()) >= 0.5 - 0.58 and float(y.max()) <= 0.5 + 0.58
    # conv_in 9x9x3xW + W; blocks 2*(9W^2 + W + 2W); mids 2*(9W^2 + W); out 81*W*3 + 3
    w, nb = 16, 2
    expected = (81 * 3 * w + w) + nb * 2 * (9 * w * w + 3 * w) + 2 * (9 * w * w + w) + (81 * w * 3 + 3)
    assert count_parameters(Generator(width=w, num_blocks=nb)) == expected
    assert count_parameters(Generator(width=w, num_blocks=nb, norm="none")) == expected - nb * 4 * w


def test_generator_init_matches_official():
    """truncated_normal(stddev=0.01) kernels within 2 std, 0.01 biases, IN scale 1 and shift 0."""
    p = params_np(Generator())
    k = p["blocks"][0]["conv1"]["kernel"]
    assert abs(k.std() - 0.0088) < 0.0005 and np.abs(k).max() <= 0.02  # std of a N(0, .01) truncated at 2 std
    np.testing.assert_array_equal(p["conv_in"]["bias"], np.float32(0.01))
    np.testing.assert_array_equal(p["blocks"][0]["norm1"]["scale"], 1.0)
    np.testing.assert_array_equal(p["blocks"][0]["norm1"]["shift"], 0.0)


def test_generator_matches_float64_numpy():
    g = randomise(Generator(width=8, num_blocks=2, rngs=nnx.Rngs(1)), scale=0.2)
    x = np.random.default_rng(3).random((2, 11, 14, 3))
    got = np.asarray(g(jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(got, generator_np(params_np(g), x), atol=2e-5)


def test_instance_norm_against_numpy():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 6, 7, 4)) * 5 + 2
    norm = InstanceNorm(4)
    scale, shift = rng.normal(size=4), rng.normal(size=4)
    norm.scale[...] = jnp.asarray(scale, jnp.float32)
    norm.shift[...] = jnp.asarray(shift, jnp.float32)
    got = np.asarray(norm(jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(got, instance_norm_np(x, scale, shift), atol=2e-5)
    assert norm.epsilon == 1e-3


def test_prenorm_biases_get_no_gradient():
    """Biases right before a norm are removed by it: their gradient is exactly 0 (no Adam noise steps)."""
    g = Generator(width=4, num_blocks=1)
    x = jnp.asarray(np.random.default_rng(0).random((1, 8, 8, 3)), jnp.float32)
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(g)
    assert float(jnp.abs(grads["blocks"][0]["conv1"]["bias"][...]).max()) == 0.0
    assert float(jnp.abs(grads["conv_in"]["bias"][...]).max()) > 0.0
    g_none = Generator(width=4, num_blocks=1, norm="none")
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(g_none)
    assert float(jnp.abs(grads["blocks"][0]["conv1"]["bias"][...]).max()) > 0.0


def test_batch_norm_generator_inference_view():
    g = Generator(width=4, num_blocks=1, norm="batch")
    x = jnp.asarray(np.random.default_rng(0).random((2, 8, 8, 3)), jnp.float32)
    train_out = g(x)
    eval_out = nnx.view(g, use_running_average=True)(x)
    assert train_out.shape == eval_out.shape == x.shape
    assert not np.allclose(np.asarray(train_out), np.asarray(eval_out))
    with pytest.raises(ValueError, match="norm"):
        Generator(norm="layer")


def test_discriminator_layout_and_head_errors():
    d = Discriminator(1)
    # convs (k*k*in*out + out) with IN (2*out) after conv2..5, then 128*7*7 -> 1024 -> 2
    convs = [(11, 1, 48, False), (5, 48, 128, True), (3, 128, 192, True), (3, 192, 192, True), (3, 192, 128, True)]
    expected = sum(k * k * i * o + o + (2 * o if n else 0) for k, i, o, n in convs) + 6272 * 1024 + 1024 + 2050
    assert count_parameters(d) == expected
    assert d(jnp.zeros((3, 100, 100, 1))).shape == (3, 2)
    with pytest.raises(ValueError, match="64x64"):
        d(jnp.zeros((1, 64, 64, 1)))
    pooled = Discriminator(3, head="global_pool", num_logits=1)
    for hw in [(37, 50), (100, 100), (8, 8)]:
        assert pooled(jnp.zeros((2, *hw, 3))).shape == (2, 1)
    assert Discriminator(3, input_size=128)(jnp.zeros((1, 128, 128, 3))).shape == (1, 2)
    with pytest.raises(ValueError, match="head"):
        Discriminator(3, head="patch")


def test_discriminator_first_layer_against_numpy():
    """11x11 stride-4 SAME conv + LeakyReLU(0.2) exactly as TF pads it (extra pixel bottom/right)."""
    d = randomise(Discriminator(1, head="global_pool", num_logits=1), scale=0.1)
    x = np.random.default_rng(1).random((1, 30, 27, 1))
    conv = d.convs[0]
    got = np.asarray(models._leaky_relu(conv(jnp.asarray(x, jnp.float32))))
    ref = conv_same_np(x, np.asarray(conv.kernel[...], np.float64), np.asarray(conv.bias[...], np.float64), stride=4)
    np.testing.assert_allclose(got, np.maximum(0.2 * ref, ref), atol=1e-5)


def test_he_init_makes_output_depend_on_input():
    """Official init: a fresh G is a near-constant grey; 'he' keeps the input visible (the demo's switch)."""
    x = jnp.asarray(np.random.default_rng(0).random((1, 24, 24, 3)), jnp.float32)
    spread = {init: float(jnp.std(Generator(width=16, num_blocks=1, init=init)(x))) for init in ("dped", "he")}
    assert spread["dped"] < 0.01 < spread["he"], spread
    assert count_parameters(Generator(init="he")) == 401_475
    with pytest.raises(ValueError, match="init"):
        Generator(init="xavier")


@pytest.mark.parametrize("global_color", ["none", "affine", "base_affine"])
def test_residual_generator_starts_as_the_identity(global_color):
    g = Generator(width=8, num_blocks=1, init="he", output="residual", global_color=global_color, rngs=nnx.Rngs(3))
    x = jax.random.uniform(jax.random.key(0), (2, 17, 23, 3))
    # base + (x - base) may differ from x by a rounding step
    np.testing.assert_allclose(np.asarray(g(x)), np.asarray(x), atol=1e-6 if global_color == "base_affine" else 0)
    # Not a constant function: the residual path's gradient reaches conv_out, the colour path's the matrix.
    loss = lambda m: jnp.mean(jnp.square(m(x) - 0.5 * x))  # noqa: E731
    grads = nnx.grad(loss)(g)
    assert float(jnp.max(jnp.abs(grads.conv_out.kernel[...]))) > 0
    if global_color != "none":
        assert grads.color_matrix[...].shape == (3, 3) and grads.color_bias[...].shape == (3,)
        assert float(jnp.max(jnp.abs(grads.color_matrix[...]))) > 0


def test_global_affine_colour_is_a_per_pixel_matrix():
    g = Generator(width=4, num_blocks=0, output="residual", global_color="affine", rngs=nnx.Rngs(0))
    m = np.array([[1.2, 0.1, 0.0], [0.0, 0.9, -0.1], [0.05, 0.0, 1.4]], np.float32)
    b = np.array([0.01, -0.02, 0.03], np.float32)
    g.color_matrix[...], g.color_bias[...] = jnp.asarray(m), jnp.asarray(b)
    x = np.random.default_rng(0).random((1, 5, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(g(jnp.asarray(x))), x @ m.T + b, atol=1e-6)  # conv_out is still zero


def test_base_affine_stretches_the_base_layer_and_passes_the_detail():
    """Against a float64 NumPy version: base = Gaussian(sigma 2) blur normalised by the blurred image support."""
    from scipy import ndimage

    g = Generator(width=4, num_blocks=0, output="residual", global_color="base_affine", rngs=nnx.Rngs(0))
    m = np.array([[1.5, 0.1, 0.0], [0.0, 2.0, -0.1], [0.2, 0.0, 2.4]])
    b = np.array([-0.2, -0.3, -0.25])
    g.color_matrix[...], g.color_bias[...] = jnp.asarray(m, jnp.float32), jnp.asarray(b, jnp.float32)
    x = np.random.default_rng(1).random((1, 19, 26, 3))
    taps = ops.gaussian_taps(BASE_TAPS, BASE_SIGMA)
    kernel = np.outer(taps, taps)

    def blur(a):
        return ndimage.convolve(a, kernel, mode="constant")

    weight = blur(np.ones(x.shape[1:3]))
    base = np.stack([blur(x[0, ..., c]) / weight for c in range(3)], -1)
    expected = base @ m.T + b + (x[0] - base)
    np.testing.assert_allclose(np.asarray(g(jnp.asarray(x, jnp.float32)))[0], expected, atol=2e-6)
    # Fine detail keeps its amplitude: a pixel-wise map would have multiplied it by the gains (1.5-2.4).
    detail = x[0] - base
    np.testing.assert_allclose(np.asarray(g(jnp.asarray(x, jnp.float32)))[0] - (base @ m.T + b), detail, atol=2e-6)


def test_global_colour_needs_the_residual_output():
    with pytest.raises(ValueError, match="residual"):
        Generator(width=4, num_blocks=0, output="dped", global_color="affine")
    with pytest.raises(ValueError, match="output"):
        Generator(width=4, num_blocks=0, output="sigmoid")


@pytest.mark.parametrize("num_blocks, global_color", [(0, "none"), (2, "none"), (0, "base_affine"), (3, "base_affine")])
def test_generator_stages_describe_its_layers(num_blocks, global_color):
    """The one description of the generator's layer order: a stage per norm input plus the output, each with its
    convolutions' radius, what it reads and writes; running them in order is the plain call."""
    output = "residual" if global_color != "none" else "dped"
    g = Generator(width=4, num_blocks=num_blocks, output=output, global_color=global_color, init="he",
                  rngs=nnx.Rngs(2))
    stages = g.stages()
    assert len(stages) == 2 * num_blocks + 1 and g.num_norm_slots == 2 * num_blocks
    assert stages[0].applies is None and stages[-1].produces is None
    assert all(stages[i].produces == stages[i + 1].applies for i in range(len(stages) - 1))
    tail = 1 + 1 + 4  # conv_mid1, conv_mid2, conv_out 9x9
    assert [s.radius for s in stages] == ([4 + 1] + [1] * (2 * num_blocks - 1) + [tail] if num_blocks else [4 + tail])
    assert stages[-1].image_radius == (BASE_TAPS // 2 if global_color == "base_affine" else 0)
    assert stages[-1].halo == max(stages[-1].radius, stages[-1].image_radius)
    assert stages[0].reads == ("x",) and stages[-1].writes == ("y",) and "x" in stages[-1].reads
    for s in stages[1:-1]:
        assert (s.reads, s.writes) == ((("A",), ("A",)) if s.applies % 2 == 0 else (("H", "A"), ("H", "A")))
    x = jax.random.uniform(jax.random.key(1), (1, 11, 13, 3))
    carried = {"x": x}
    for s in stages:
        carried.update(g.run_stage(s, carried))
    np.testing.assert_array_equal(np.asarray(carried["y"]), np.asarray(g(x)))


def test_conv_radius_needs_stride_one():
    assert models.Conv(3, 4, 9, rngs=nnx.Rngs(0)).radius == 4
    with pytest.raises(ValueError, match="stride"):
        models.Conv(3, 4, 3, stride=2, rngs=nnx.Rngs(0)).radius  # noqa: B018
