"""The training step: metrics, gradient flow, determinism, early config errors and short overfit runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wespe import config as configs
from wespe import compiler_options, parallel, train_step, vgg
from wespe.evaluation import speed_benchmark


def tiny_config(preset, **overrides):
    """A preset shrunk to run in seconds on CPU (small networks, 32x32 patches, VGG up to relu2_2)."""
    c = configs.preset(preset)
    c.vgg_weights = "random"
    c.batch_size, c.patch_size = 2, 32
    c.generator.width, c.generator.num_blocks = 8, 1
    c.discriminator.head = "global_pool"
    c.content_layer = "relu2_2"
    for k, v in overrides.items():
        c[k] = v
    return c


def fixed_batch(config, seed=0):
    rng = np.random.default_rng(seed)
    shape = (config.batch_size, config.patch_size, config.patch_size, 3)
    source = rng.random(shape).astype(np.float32)
    # A target with a colour cast and sharper structure than the source, so there is something to learn.
    target = np.clip(source[..., ::-1] * 1.2 - 0.1, 0, 1).astype(np.float32)
    return {"source": jnp.asarray(source), "target": jnp.asarray(target)}


def setup(config):
    state, graphdefs = train_step.create_train_state(config)
    weights, pre = train_step.load_content_network(config)
    # wespe_plus's restoration term needs a camera model (a run fits one to its photos): the one benchmarks use
    step = train_step.make_train_step(config, graphdefs, weights, pre,
                                 degradation=speed_benchmark.typical_degradation(config))
    return state, step, weights


def test_state_initialisation_compiles_cheaply_into_the_same_bits(monkeypatch):
    """The state's one-off initialisation is compiled with ``compiler_options.init_compiler_options`` (XLA:CPU at
    level 2: about half the compile time of the default level 3) into the very state XLA's default options give,
    bit for bit, and ``create_train_state`` uses them; a caller's ``jax_disable_most_optimizations`` is left alone."""
    config = tiny_config("wespe_plus")  # every kind of leaf: identity-start and colour-path generators, EMA, Adam
    init = lambda: train_step._init_train_state(config, {})  # noqa: E731
    as_users = {"xla_cpu_use_fusion_emitters": True}  # how users compile (this suite's workers turn them off)
    monkeypatch.setattr(compiler_options, "INIT_CPU_OPTIONS", {**compiler_options.INIT_CPU_OPTIONS, **as_users})
    before = jax.config.read("jax_disable_most_optimizations")
    try:
        jax.config.update("jax_disable_most_optimizations", False)
        assert compiler_options.init_compiler_options("cpu") == compiler_options.INIT_CPU_OPTIONS
        default = jax.jit(init, compiler_options=as_users)()
        layout = parallel.Layout(parallel.make_mesh({"data": 1}, jax.devices()[:1]))
        cheap, _ = train_step.create_train_state(config, layout)
        jax.config.update("jax_disable_most_optimizations", True)
        assert compiler_options.init_compiler_options("cpu") == {}
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
    assert compiler_options.init_compiler_options("gpu") == {} == compiler_options.init_compiler_options("tpu")
    leaves, cheap_leaves = jax.tree.leaves(default), jax.tree.leaves(cheap)
    assert len(leaves) == len(cheap_leaves) > 50
    for a, b in zip(leaves, cheap_leaves):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


EXPECTED_NETWORKS = {"wespe_paper": {"generator", "inverse_generator", "color_discriminator", "texture_discriminator"},
                     "dped_code": {"generator", "texture_discriminator"}}


@pytest.mark.parametrize("preset", ["wespe_paper", "dped_code"])
def test_step_metrics_and_gradient_flow(preset):
    """Every loss term is reported and finite; gradients reach every trained network; VGG is untouched."""
    config = tiny_config(preset)
    state, step, weights = setup(config)
    assert set(state.params) == EXPECTED_NETWORKS[preset]
    vgg_before = jax.tree.map(np.array, weights)
    before = jax.tree.map(np.array, state.params)
    state, metrics = step(state, fixed_batch(config), jax.random.key(0))
    for key in ["loss/content", "loss/color", "loss/texture", "loss/tv", "loss/generator",
                "loss/texture_discriminator", "accuracy/texture_discriminator"]:
        assert key in metrics and np.isfinite(float(metrics[key])), key
    for name in EXPECTED_NETWORKS[preset]:
        assert float(metrics[f"grad_norm/{name}"]) > 0, name
        changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before[name], state.params[name])
        assert any(jax.tree.leaves(changed)), f"{name} was not updated"
    assert int(state.step) == 1
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(vgg_before), jax.tree.leaves(weights)))
    total = sum(config.weights[k] * float(metrics[f"loss/{k}"]) for k in ("content", "color", "texture", "tv"))
    assert float(metrics["loss/generator"]) == pytest.approx(total, rel=1e-4)


def test_step_is_deterministic_for_an_rng():
    config = tiny_config("dped_code")
    batch = fixed_batch(config)
    results = []
    for _ in range(2):
        state, step, _ = setup(config)
        for i in range(2):
            state, _ = step(state, batch, jax.random.key(i))
        results.append(jax.tree.map(np.asarray, state.params))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])))


@pytest.mark.optimized  # hundreds of steps: the unoptimised program ran 8.7 s -> 102 s
@pytest.mark.parametrize("preset", ["wespe_paper", "dped_code"])
def test_overfit_fixed_patches(preset):
    """A few dozen steps on fixed patches: the generator loss falls and nothing becomes NaN."""
    config = tiny_config(preset)
    state, step, _ = setup(config)
    batch = fixed_batch(config, seed=1)
    history = []
    for i in range(40):
        state, metrics = step(state, batch, jax.random.key(i))
        values = {k: float(v) for k, v in metrics.items()}
        assert all(np.isfinite(v) for v in values.values()), values
        history.append(values["loss/generator"])
    assert np.mean(history[-5:]) < 0.85 * np.mean(history[:3]), history
    assert history[-1] < history[0]


def test_paper_presets_need_vgg_weights_before_anything_compiles():
    for preset in ("wespe_paper", "dped_code"):
        with pytest.raises(vgg.VGGWeightsError, match="vgg_weights") as err:
            train_step.load_content_network(configs.preset(preset))
        assert "imagenet-vgg-verydeep-19.mat" in str(err.value)


def test_invalid_config_names_the_key():
    with pytest.raises(ValueError, match="config.adversarial_form"):
        train_step.create_train_state(tiny_config("wespe_paper", adversarial_form="wgan"))
    config = tiny_config("wespe_paper")
    config.generator.norm = "group"
    with pytest.raises(ValueError, match="config.generator.norm"):
        train_step.create_train_state(config)


def test_default_size_step_runs_with_official_head():
    """One step of the full-size networks (100x100 patches, dped_fc heads, relu5_4) in wespe mode at batch 2."""
    config = configs.wespe_paper()
    config.vgg_weights, config.batch_size = "random", 2
    state, step, _ = setup(config)
    state, metrics = step(state, fixed_batch(config), jax.random.key(0))
    assert np.isfinite(float(metrics["loss/generator"]))
    assert state.params["color_discriminator"]["fc"]["kernel"][...].shape == (128 * 7 * 7, 1024)


def test_identity_term_is_reported_and_weighted():
    """weights.identity > 0 adds |G(y)-y| + |F(x)-x| to the generator loss (off in the paper presets)."""
    assert configs.wespe_paper().weights.identity == 0.0
    config = tiny_config("wespe_paper")
    config.weights.identity = 2.0
    state, step, _ = setup(config)
    _, metrics = step(state, fixed_batch(config), jax.random.key(0))
    assert float(metrics["loss/identity"]) > 0
    total = sum(config.weights[k] * float(metrics[f"loss/{k}"])
                for k in ("content", "color", "texture", "tv", "identity"))
    assert float(metrics["loss/generator"]) == pytest.approx(total, rel=1e-4)


def test_bfloat16_compute_keeps_float32_state_and_tracks_float32():
    """compute_dtype=bfloat16: networks compute in bf16, but parameters, Adam moments and the losses stay float32
    and land close to the float32 step's (bf16 has 8 mantissa bits: ~1% agreement, not 1e-6)."""
    results = {}
    for dtype in ("float32", "bfloat16"):
        config = tiny_config("wespe_paper", compute_dtype=dtype)
        config.generator.init = "he"
        state, step, _ = setup(config)
        state, metrics = step(state, fixed_batch(config), jax.random.key(0))
        assert {x.dtype for x in jax.tree.leaves((state.params, state.opt_state)) if x.ndim} == {jnp.dtype(jnp.float32)}
        assert {v.dtype for v in metrics.values()} == {jnp.dtype(jnp.float32)}
        results[dtype] = {k: float(v) for k, v in metrics.items()}
        hlo = step.jitted.lower(state, step.vgg_weights, fixed_batch(config), jax.random.key(0), None).as_text()
        assert ("bf16" in hlo) == (dtype == "bfloat16")
    f32, bf16 = results["float32"], results["bfloat16"]
    for key in ("loss/content", "loss/color", "loss/texture", "loss/generator", "loss/color_discriminator"):
        assert bf16[key] == pytest.approx(f32[key], rel=0.05), key
    assert any(bf16[k] != f32[k] for k in f32)  # it really ran in another precision


def test_batchnorm_generator_trains_and_updates_running_statistics():
    """generator.norm=batch: batch statistics in the step, running averages updated (momentum 0.99)."""
    config = tiny_config("dped_code")
    config.generator.norm = "batch"
    state, step, _ = setup(config)
    before = jax.tree.map(np.asarray, state.batch_stats["generator"])
    assert jax.tree.leaves(before), "a BatchNorm generator has running statistics"
    state, metrics = step(state, fixed_batch(config), jax.random.key(0))
    assert np.isfinite(float(metrics["loss/generator"]))
    after = state.batch_stats["generator"]
    assert all(not np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))


def test_ema_update_rule_against_numpy():
    a = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    p = {"w": jnp.array([3.0, 0.0]), "b": jnp.array(-0.5)}
    for step, decay in [(0, 0.999), (5, 0.999), (10_000, 0.999), (10_000, 0.9)]:
        d = min(decay, (1 + step) / (10 + step))
        out = train_step.ema_update(a, p, jnp.asarray(step), decay)
        for k in a:
            np.testing.assert_allclose(np.asarray(out[k]), d * np.asarray(a[k]) + (1 - d) * np.asarray(p[k]),
                                       rtol=1e-6)
        plain = train_step.ema_update(a, p, jnp.asarray(step), decay, warmup=False)
        np.testing.assert_allclose(np.asarray(plain["w"]), decay * np.asarray(a["w"]) + (1 - decay) * np.asarray(p["w"]),
                                   rtol=1e-6)


def test_wespe_plus_step_identity_start_ema_and_colour_learning_rate():
    """One wespe_plus step: G starts as the identity (zero residual penalty), the EMA follows its rule and is what
    generator_from_state returns, and Adam's first step moves the colour matrix by ~lr * global_color_lr_scale
    while ordinary weights move by ~lr."""
    c = tiny_config("wespe_plus", ema_decay=0.9)
    c.optimizer.warmup_steps = 0
    c.optimizer.global_color_lr_scale = 100.0  # the preset freezes the colour path (tested below); learn it here
    c.weights.color_distribution = 100.0
    state, graphdefs = train_step.create_train_state(c)
    weights, pre = train_step.load_content_network(c)
    step = train_step.make_train_step(c, graphdefs, weights, pre, degradation=speed_benchmark.typical_degradation(c))
    assert set(state.ema) == {"generator"}
    batch = fixed_batch(c)
    g0 = train_step.generator_from_state(state, graphdefs)
    np.testing.assert_allclose(np.asarray(g0(batch["source"])), np.asarray(batch["source"]), atol=1e-6)
    p0 = jax.tree.map(np.asarray, state.params["generator"])
    e0 = jax.tree.map(np.asarray, state.ema["generator"])
    d_color0 = jax.tree.map(np.asarray, state.params["color_discriminator"])
    state, metrics = step(state, batch, jax.random.key(0))
    assert {"loss/color_distribution", "loss/residual_lowpass", "loss/restoration"} <= set(metrics)
    assert "loss/color" not in metrics
    # The colour adversary has weight 0 here: it is not run, and its weights stay as they were.
    assert "loss/color_discriminator" not in metrics and float(metrics["grad_norm/color_discriminator"]) == 0.0
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params["color_discriminator"]),
                 d_color0)
    assert float(metrics["loss/residual_lowpass"]) == 0.0  # G(x) = colour(x) exactly at init
    p1 = jax.tree.map(np.asarray, state.params["generator"])
    e1 = jax.tree.map(np.asarray, state.ema["generator"])
    d = min(0.9, 1 / 10)  # the warm-up at step 0
    jax.tree.map(lambda e, a, p: np.testing.assert_allclose(e, d * a + (1 - d) * p, rtol=1e-5, atol=1e-7), e1, e0, p1)
    ema_g = train_step.generator_from_state(state, graphdefs)
    raw_g = train_step.generator_from_state(state, graphdefs, use_ema=False)
    np.testing.assert_allclose(np.asarray(ema_g.conv_out.kernel[...]), e1["conv_out"]["kernel"])
    np.testing.assert_allclose(np.asarray(raw_g.conv_out.kernel[...]), p1["conv_out"]["kernel"])
    lr = c.optimizer.lr_generator
    moved = lambda name: float(np.max(np.abs(p1[name] - p0[name])))  # noqa: E731
    np.testing.assert_allclose(moved("color_matrix"), lr * c.optimizer.global_color_lr_scale, rtol=0.05)
    # (conv_out: with the residual's last conv at zero, the layers before it get no gradient on the first step)
    np.testing.assert_allclose(float(np.max(np.abs(p1["conv_out"]["kernel"] - p0["conv_out"]["kernel"]))), lr,
                               rtol=0.05)


def test_colour_path_learning_rate_scale_zero_freezes_it():
    c = tiny_config("wespe_plus")
    c.weights.color_distribution = 100.0  # a colour loss that would move it
    assert c.optimizer.global_color_lr_scale == 0.0
    state, step, _ = setup(c)
    before = jax.tree.map(np.asarray, state.params["generator"])
    for i in range(2):
        state, _ = step(state, fixed_batch(c), jax.random.key(i))
    after = jax.tree.map(np.asarray, state.params["generator"])
    np.testing.assert_array_equal(after["color_matrix"], before["color_matrix"])
    np.testing.assert_array_equal(after["color_bias"], before["color_bias"])
    assert np.max(np.abs(after["conv_out"]["kernel"] - before["conv_out"]["kernel"])) > 0


def test_learning_rate_warmup_is_linear_from_zero():
    c = tiny_config("wespe_paper")
    c.optimizer.warmup_steps = 4
    state, step, _ = setup(c)
    kernel = lambda s: np.asarray(s.params["generator"]["conv_in"]["kernel"][...])  # noqa: E731
    before = kernel(state)
    state, _ = step(state, fixed_batch(c), jax.random.key(0))
    np.testing.assert_array_equal(kernel(state), before)  # lr 0 at step 0
    after_first = kernel(state)
    state, _ = step(state, fixed_batch(c), jax.random.key(1))
    # Adam's second step moves by about lr * 1/4 (its normalised update is <= ~1 in magnitude per element).
    assert 0 < float(np.max(np.abs(kernel(state) - after_first))) <= c.optimizer.lr_generator / 4 * 1.01
