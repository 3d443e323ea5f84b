"""Train state and the one jitted training step for both modes.

``wespe`` (unpaired): G: source -> target, F: target -> source.
    generator loss = w_content * ||VGG(x) - VGG(F(G(x)))||^2 + w_color * adv(D_c(blur(G(x))))
                     + w_texture * adv(D_t(gray(G(x)))) + w_tv * TV(G(x))
                     [+ w_identity * (|G(y) - y|_1 + |F(x) - x|_1), CycleGAN's identity term, 0 in the papers]
                     [+ w_restoration * |G(D(y)) - y|_1, D the source camera fitted to the sets (wespe.degradation)]
``dped`` (paired): generator loss = w_content * ||VGG(G(x)) - VGG(y)||^2 + w_color * ||blur(G(x)) - blur(y)||^2
                     + w_texture * adv(D_t(gray(G(x)))) + w_tv * TV(G(x))
Discriminators learn target (real) vs G(x) (fake) on the same batch.

Updates are simultaneous: the discriminators see G(x) from the generator before this step's update (as the
PyTorch ports do with ``fake.detach()``), so one step costs one G forward. The official DPED code
alternates on two different batches; with a fresh batch every step the two are statistically alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from wespe import conv, conv_tuning, losses, ops, parallel, vgg
from wespe import degradation as degradation_lib
from wespe.color_map import fitted_colour_map
from wespe.compiler_options import init_compiler_options, train_step_compiler_options
from wespe.config import validate
from wespe.models import Discriminator, Generator

GENERATORS = {"wespe": ("generator", "inverse_generator"), "dped": ("generator",)}
DISCRIMINATORS = {"wespe": ("color_discriminator", "texture_discriminator"), "dped": ("texture_discriminator",)}

RESTORATION_STREAM = 1000  # fold_in(rng, ...) of the degradation's noise: apart from the adversaries' streams
Batch = dict[str, jax.Array]  # {"source": (B, H, W, 3), "target": (B, H, W, 3)}, RGB in [0, 1]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree; checkpoint it whole)."""
    step: jax.Array
    params: dict[str, nnx.State]  # trainable parameters, per network
    batch_stats: dict[str, nnx.State]  # other variables (BatchNorm running averages); empty for instance norm
    opt_state: dict[str, Any]  # {"generators": ..., "discriminators": ...}
    # Exponential moving average of G's parameters ({"generator": ...}; empty when config.ema_decay is 0).
    ema: dict[str, nnx.State] = flax.struct.field(default_factory=dict)


def build_networks(config: ml_collections.ConfigDict) -> dict[str, nnx.Module]:
    """The networks a mode trains, initialised from ``config.seed``."""
    rngs = nnx.Rngs(config.seed)
    num_logits = 2 if config.adversarial_form == "dped_softmax" else 1
    g = config.generator
    nets: dict[str, nnx.Module] = {}
    for name in GENERATORS[config.mode]:
        nets[name] = Generator(width=g.width, num_blocks=g.num_blocks, norm=g.norm, init=g.init, output=g.output,
                               global_color=g.global_color, rngs=rngs)
    for name in DISCRIMINATORS[config.mode]:
        nets[name] = Discriminator(3 if name == "color_discriminator" else 1, head=config.discriminator.head,
                                   input_size=config.patch_size, num_logits=num_logits,
                                   norm=config.discriminator.norm, init=config.discriminator.init, rngs=rngs)
    return nets


GLOBAL_COLOR_PARAMS = ("color_matrix", "color_bias")


def _global_color_labels(params):
    def label(path, _):
        names = {str(getattr(k, "key", getattr(k, "name", k))) for k in path}
        return "global_color" if names & set(GLOBAL_COLOR_PARAMS) else "default"
    return jax.tree_util.tree_map_with_path(label, params)


def init_global_color(state: TrainState, config: ml_collections.ConfigDict, pools: dict) -> TrainState:
    """A fresh state with ``config.color_init`` applied: ``moments`` / ``bandpass`` set G's colour path to that
    estimator's colour map from the source pool to the target pool (``wespe.color_map.fitted_colour_map``) and
    F's (wespe mode) to the reverse one."""
    if config.color_init == "identity":
        return state
    state = with_global_color(state, "generator", *fitted_colour_map(pools, config.color_init))
    if "inverse_generator" in state.params:
        state = with_global_color(state, "inverse_generator",
                                  *fitted_colour_map(pools, config.color_init, reverse=True))
    return state


def colour_estimator(config: ml_collections.ConfigDict) -> str:
    """The ``wespe.color_map.fitted_colour_map`` estimator of a run's colour maps (G's colour start and the
    degradation's colour steps): ``config.color_init``, or ``moments`` where the colour path starts at identity."""
    return "moments" if config.color_init == "identity" else config.color_init


def with_global_color(state: TrainState, name: str, matrix, bias) -> TrainState:
    """``state`` with network ``name``'s global colour matrix and offset (and their moving average, if kept)
    set to ``matrix`` (3, 3) and ``bias`` (3,), placed like the values they replace."""
    values = dict(zip(GLOBAL_COLOR_PARAMS, (matrix, bias)))

    def put(path, leaf):
        names = {str(getattr(k, "key", getattr(k, "name", k))) for k in path} & set(values)
        if not names:
            return leaf
        value = jnp.asarray(values[names.pop()], leaf.dtype).reshape(leaf.shape)
        return jax.device_put(value, leaf.sharding)

    params = {**state.params, name: jax.tree_util.tree_map_with_path(put, state.params[name])}
    ema = dict(state.ema)
    if name in ema:
        ema[name] = jax.tree_util.tree_map_with_path(put, ema[name])
    return state.replace(params=params, ema=ema)


def make_optimizers(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, ...]:
    """Adam for the generators and for the discriminators.

    With ``generator.global_color`` the 12 global colour parameters get ``optimizer.global_color_lr_scale`` times
    the generator learning rate: Adam moves every parameter by about lr per step, and a camera's white balance
    or contrast is an O(1) change of the colour matrix (e.g. 1/0.65 for a 0.65 contrast), which at 5e-4 would
    take thousands of steps while the convolutional path, free to paint the same change locally, gets there
    first (as blotches).
    """
    o = config.optimizer

    def adam(lr, b1=o.b1):
        if o.warmup_steps > 0:  # linear from 0: Adam's first steps move every weight by ~lr whatever the gradient
            lr = optax.linear_schedule(0.0, lr, int(o.warmup_steps))
        return optax.adam(lr, b1=b1, b2=o.b2, eps=o.eps)

    adam_g = adam(o.lr_generator)
    if config.generator.global_color != "none" and (o.global_color_lr_scale != 1.0 or o.global_color_b1 != o.b1):
        # The colour losses see a few random crops per step, so the 12 global parameters get a noisy gradient
        # around a steady drift: a long momentum (b1 0.99 ~ 100 steps) keeps the drift and averages the noise.
        adam_color = (adam(o.lr_generator * o.global_color_lr_scale, o.global_color_b1)
                      if o.global_color_lr_scale > 0 else optax.set_to_zero())  # 0: frozen at color_init
        adam_g = optax.multi_transform({"default": adam_g, "global_color": adam_color}, _global_color_labels)
    return adam_g, adam(o.lr_discriminator)


def _init_train_state(config: ml_collections.ConfigDict, graphdefs: dict) -> TrainState:
    """Fresh networks and optimiser states; fills ``graphdefs`` (the static network structures)."""
    params, stats = {}, {}
    for name, net in build_networks(config).items():
        graphdefs[name], params[name], stats[name] = nnx.split(net, nnx.Param, ...)
    tx_g, tx_d = make_optimizers(config)
    opt_state = {"generators": tx_g.init({n: params[n] for n in GENERATORS[config.mode]}),
                 "discriminators": tx_d.init({n: params[n] for n in DISCRIMINATORS[config.mode]})}
    ema = {"generator": jax.tree.map(jnp.copy, params["generator"])} if config.ema_decay > 0 else {}
    return TrainState(jnp.zeros((), jnp.int32), params, stats, opt_state, ema)


def abstract_train_state(config: ml_collections.ConfigDict) -> tuple[TrainState, dict[str, nnx.GraphDef]]:
    """The state's tree of ``jax.ShapeDtypeStruct``s (no memory used) and the graph definitions."""
    validate(config)
    graphdefs: dict = {}
    abstract = jax.eval_shape(lambda: _init_train_state(config, graphdefs))
    return abstract, graphdefs


def create_train_state(config: ml_collections.ConfigDict, layout: parallel.Layout | None = None
                       ) -> tuple[TrainState, dict[str, nnx.GraphDef]]:
    """Fresh networks and optimiser states; returns the state and the (static) graph definitions.

    With a ``layout`` the state is created inside one jitted function whose outputs already have the layout's
    shardings (replicated, or FSDP-split): no leaf is ever materialised whole on one device first. Without
    one it is built eagerly on the default device.
    """
    validate(config)
    graphdefs: dict = {}
    if layout is None:
        return _init_train_state(config, graphdefs), graphdefs
    abstract, graphdefs = abstract_train_state(config)
    platform = layout.mesh.devices.flat[0].platform
    state = jax.jit(lambda: _init_train_state(config, {}), out_shardings=layout.state_shardings(abstract),
                    compiler_options=init_compiler_options(platform))()
    return state, graphdefs


def load_content_network(config: ml_collections.ConfigDict) -> tuple[dict, str]:
    """VGG-19 weights for the content loss and the preprocessing they need (fails early, naming the file)."""
    weights, origin = vgg.load_vgg19(config.vgg_weights, config.vgg_cache_dir)
    pre = vgg.PREPROCESSING_FOR_ORIGIN[origin] if config.vgg_preprocessing == "auto" else config.vgg_preprocessing
    return vgg.as_jax(weights), pre


@dataclasses.dataclass(frozen=True)
class _StepContext:
    """What the pieces of one traced training step share: the state it starts from, the content network and the
    config's choices of views and precision."""

    state: TrainState
    vgg_weights: dict
    config: ml_collections.ConfigDict
    graphdefs: dict
    preprocessing: str

    @property
    def compute_dtype(self):
        # Mixed precision: networks compute in compute_dtype from float32 parameters (cast per use, so gradients
        # and Adam stay float32); every loss is computed in float32 from their float32-cast outputs.
        return jnp.dtype(self.config.compute_dtype)

    def blur(self, x):
        return ops.blur(x, mode=self.config.blur)

    def texture_view(self, x):
        return ops.texture_view(x, texture_input=self.config.discriminator.texture_input)

    def content_features(self, images):
        features = vgg.features(self.vgg_weights, images.astype(self.compute_dtype), self.config.content_layer,
                                self.preprocessing)
        return features.astype(jnp.float32)

    def network(self, name, params):
        # Fresh copies of the batch statistics: BatchNorm updates them in place, and NNX refuses to mutate a
        # Variable created outside the current (grad) trace.
        return nnx.merge(self.graphdefs[name], params, jax.tree.map(lambda x: x, self.state.batch_stats[name]))

    def run(self, net, x):
        return net(x.astype(self.compute_dtype)).astype(jnp.float32)


def _generator_terms(ctx: _StepContext, nets: dict, batch: Batch, rng: jax.Array, color_pools: dict | None,
                     degradation: degradation_lib.Degradation | None) -> tuple[dict[str, jax.Array], jax.Array]:
    """The unweighted generator loss terms of the module docstring, and G(x)."""
    config, run, blur = ctx.config, ctx.run, ctx.blur
    mode, form, norm = config.mode, config.adversarial_form, config.loss_normalization
    source, target = batch["source"], batch["target"]
    disc = {n: ctx.network(n, ctx.state.params[n]) for n in DISCRIMINATORS[mode]}
    enhanced = run(nets["generator"], source)
    color = nets["generator"].color(source)  # the global colour path alone (x itself without one)
    terms = {}
    if config.weights.residual_lowpass > 0:
        # Division of labour: the convolutional residual may sharpen and denoise (high frequencies) but not
        # repaint colours locally; global colour and tone go through generator.global_color.
        terms["residual_lowpass"] = jnp.mean(jnp.square(blur(enhanced - color)))
    if mode == "wespe":
        reconstructed = run(nets["inverse_generator"], enhanced)
        terms["content"] = losses.content_loss(jax.lax.stop_gradient(ctx.content_features(source)),
                                               ctx.content_features(reconstructed))
        if config.weights.color > 0:  # off in wespe_plus (weights.color_distribution instead)
            terms["color"] = losses.generator_adversarial_loss(
                run(disc["color_discriminator"], blur(enhanced)), form, norm)
    else:
        terms["content"] = losses.content_loss(ctx.content_features(enhanced),
                                               jax.lax.stop_gradient(ctx.content_features(target)))
        terms["color"] = losses.color_loss(blur(enhanced), blur(target), norm)
    terms["texture"] = losses.generator_adversarial_loss(
        run(disc["texture_discriminator"], ctx.texture_view(enhanced)), form, norm)
    if config.tv_through_color or config.generator.global_color == "none":
        terms["tv"] = losses.tv_loss(enhanced)
    else:
        # Same value, but only the residual path is smoothed: TV grows with contrast, so through the colour
        # path it would fight the contrast and exposure correction the colour losses ask for.
        terms["tv"] = losses.tv_loss(enhanced - color + jax.lax.stop_gradient(color))
    if mode == "wespe":
        terms.update(_wespe_extra_terms(ctx, nets, batch, enhanced, rng, color_pools, degradation))
    return terms, enhanced


def _wespe_extra_terms(ctx: _StepContext, nets: dict, batch: Batch, enhanced: jax.Array, rng: jax.Array,
                       color_pools: dict | None, degradation: degradation_lib.Degradation | None
                       ) -> dict[str, jax.Array]:
    """The terms WESPE's recipes add to the paper's (each off at weight 0), in the order they are summed."""
    config, run = ctx.config, ctx.run
    source, target = batch["source"], batch["target"]
    terms = {}
    if config.weights.color_distribution > 0 and color_pools is not None:
        # The colour path against whole sets (wespe.training.color_pool): the same comparison every step.
        fitted = nets["generator"].affine(color_pools["source"])[None, None]
        terms["color_distribution"] = losses.color_distribution_loss(fitted, color_pools["target"][None, None])
    elif config.weights.color_distribution > 0:
        view = ctx.blur if config.color_distribution_blur else (lambda x: x)
        terms["color_distribution"] = losses.color_distribution_loss(view(enhanced), view(target))
    if config.weights.texture_distribution > 0:
        terms["texture_distribution"] = losses.texture_distribution_loss(enhanced, target)
    if config.weights.identity > 0:
        # CycleGAN's identity term (off in the papers): G leaves target photos alone, F source photos.
        terms["identity"] = (losses.identity_loss(run(nets["generator"], target), target)
                             + losses.identity_loss(run(nets["inverse_generator"], source), source))
    if degradation is not None:
        # Paired examples from the clean side: the target patches degraded by the fitted source camera.
        degraded = jax.lax.stop_gradient(degradation_lib.degrade_batch(
            target, degradation, jax.random.fold_in(rng, RESTORATION_STREAM), config.degradation.jitter))
        terms["restoration"] = jnp.mean(jnp.abs(run(nets["generator"], degraded) - target))
    return terms


def _generator_objective(ctx: _StepContext, gen_params: dict, batch: Batch, rng: jax.Array,
                         color_pools: dict | None, degradation: degradation_lib.Degradation | None):
    """``(weighted total, (terms, G(x), the generators' updated batch statistics))``: what ``value_and_grad``
    differentiates with respect to ``gen_params``."""
    nets = {n: ctx.network(n, gen_params[n]) for n in GENERATORS[ctx.config.mode]}
    terms, enhanced = _generator_terms(ctx, nets, batch, rng, color_pools, degradation)
    total = sum(ctx.config.weights[k] * v for k, v in terms.items())
    new_stats = {n: nnx.state(net, nnx.Not(nnx.Param)) for n, net in nets.items()}
    return total, (terms, enhanced, new_stats)


def _discriminator_objective(ctx: _StepContext, disc_params: dict, fake: jax.Array, target: jax.Array,
                             rng: jax.Array):
    """``(summed loss, {loss/<name>, accuracy/<name>})`` of the discriminators on ``target`` (real) vs ``fake``."""
    config = ctx.config
    form, norm = config.adversarial_form, config.loss_normalization
    views = {"color_discriminator": ctx.blur, "texture_discriminator": ctx.texture_view}
    total, out = 0.0, {}
    # i: each adversary keeps its rng stream whichever are trained
    for i, name in enumerate(DISCRIMINATORS[config.mode]):
        if name == "color_discriminator" and config.weights.color == 0:
            # Nothing uses this adversary (wespe_plus): skip its forward/backward; its gradient is then 0 and
            # Adam leaves its weights as they are.
            continue
        view = views[name]
        inputs, labels = losses.discriminator_batch(view(target), view(fake), form, jax.random.fold_in(rng, i))
        loss, acc = losses.discriminator_loss(ctx.run(ctx.network(name, disc_params[name]), inputs), labels, form,
                                              norm)
        total = total + loss
        out[f"loss/{name}"], out[f"accuracy/{name}"] = loss, acc
    return total, out


def _train_step(state: TrainState, vgg_weights: dict, batch: Batch, rng: jax.Array, color_pools: dict | None, *,
                config: ml_collections.ConfigDict, graphdefs: dict, preprocessing: str,
                degradation: degradation_lib.Degradation | None = None) -> tuple[TrainState, Metrics]:
    ctx = _StepContext(state, vgg_weights, config, graphdefs, preprocessing)
    gen_params = {n: state.params[n] for n in GENERATORS[config.mode]}
    disc_params = {n: state.params[n] for n in DISCRIMINATORS[config.mode]}
    generator_objective = functools.partial(_generator_objective, ctx, batch=batch, rng=rng, color_pools=color_pools,
                                            degradation=degradation)
    (g_total, (terms, enhanced, new_stats)), g_grads = jax.value_and_grad(generator_objective, has_aux=True)(gen_params)
    # The discriminators train on the pre-update G(x) of this batch (simultaneous updates).
    fake = jax.lax.stop_gradient(enhanced)
    discriminator_objective = functools.partial(_discriminator_objective, ctx, target=batch["target"], rng=rng)
    (_, d_metrics), d_grads = jax.value_and_grad(discriminator_objective, has_aux=True)(disc_params, fake)

    params, opt_state = _adam_updates(state, config, gen_params, disc_params, g_grads, d_grads)
    batch_stats = {**state.batch_stats, **new_stats}
    metrics = {f"loss/{k}": v for k, v in terms.items()}
    metrics["loss/generator"] = g_total
    metrics.update(d_metrics)
    for name, grads in {**g_grads, **d_grads}.items():
        metrics[f"grad_norm/{name}"] = optax.tree.norm(grads)
    ema = {}
    if state.ema:
        ema = {"generator": ema_update(state.ema["generator"], params["generator"], state.step, config.ema_decay,
                                       warmup=config.ema_warmup)}
    return TrainState(state.step + 1, params, batch_stats, opt_state, ema), metrics


def _adam_updates(state: TrainState, config: ml_collections.ConfigDict, gen_params: dict, disc_params: dict,
                  g_grads: dict, d_grads: dict) -> tuple[dict, dict]:
    """``(params, opt_state)`` after one simultaneous update of the generators and the discriminators."""
    tx_g, tx_d = make_optimizers(config)
    g_updates, opt_g = tx_g.update(g_grads, state.opt_state["generators"], gen_params)
    d_updates, opt_d = tx_d.update(d_grads, state.opt_state["discriminators"], disc_params)
    params = {**optax.apply_updates(gen_params, g_updates), **optax.apply_updates(disc_params, d_updates)}
    return params, {"generators": opt_g, "discriminators": opt_d}


def ema_update(average, params, step: jax.Array, decay: float, *, warmup: bool = True):
    """One EMA step after update ``step`` (0-based): ``a <- d * a + (1 - d) * p``.

    ``warmup``: ``d = min(decay, (1 + step) / (10 + step))`` (TensorFlow's ExponentialMovingAverage with
    num_updates): the average follows the fast-moving early weights and forgets the initialisation, but in a short
    run it never reaches ``decay`` (0.97 at step 300: ~35 steps averaged). Without it ``d = decay`` from the
    first step: the average starts at the initial weights (the identity, for a residual G) and keeps a
    ``decay**t`` share of them."""
    step = jnp.asarray(step, jnp.float32)
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)) if warmup else jnp.asarray(decay, jnp.float32)
    return jax.tree.map(lambda a, p: d * a + (1.0 - d) * p, average, params)


def uses_color_pools(config: ml_collections.ConfigDict) -> bool:
    """Whether the step fits G's colour path to wespe.training.color_pool's pools (and so needs them)."""
    return config.mode == "wespe" and config.weights.color_distribution > 0 and bool(config.color_distribution_pool)


def uses_degradation(config: ml_collections.ConfigDict) -> bool:
    """Whether the step trains G on degraded target photos (``weights.restoration``), and so needs the fit."""
    return config.mode == "wespe" and config.weights.restoration > 0


def make_train_step(config: ml_collections.ConfigDict, graphdefs: dict, vgg_weights: dict, preprocessing: str,
                    layout: parallel.Layout | None = None, color_pools: dict | None = None, *,
                    degradation: degradation_lib.Degradation | None = None
                    ) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
    """The pure step ``(state, batch, rng) -> (state, metrics)``, jitted once; the input state is donated.

    Deterministic for a given rng (which only drives the ``dped_softmax`` real/fake swaps). With a ``layout``
    the step is compiled for it: the state in and out keeps the layout's shardings, the batch is split over
    the mesh, the VGG weights are placed once (replicated, or FSDP-split), and the metrics come back replicated.
    Sums and means over the batch are over the global batch (XLA inserts the all-reduces), so the result equals
    the single-device step up to float reduction order.
    ``color_pools``: ``wespe.training.color_pool.build_color_pools`` output, exactly when :func:`uses_color_pools`.
    ``degradation``: the source camera model (:mod:`wespe.degradation`), exactly when :func:`uses_degradation`.
    """
    validate(config)
    conv_tuning.policy()  # a bad WESPE_CONV_CHOICE fails here, not inside the step's trace (where it is used)
    if (degradation is not None) != uses_degradation(config):
        raise ValueError("pass degradation exactly when config.weights.restoration > 0 (wespe mode): fit it with "
                         "wespe.degradation.fit (wespe.training.loop.fitted_degradation)")
    if (color_pools is not None) != uses_color_pools(config):
        raise ValueError("pass color_pools exactly when config.color_distribution_pool is on (wespe mode, "
                         "weights.color_distribution > 0): build them with wespe.training.color_pool.build_color_pools")
    if color_pools is not None:
        color_pools = {k: jnp.asarray(v, jnp.float32) for k, v in color_pools.items()}
    unbanded = layout is not None and layout.mesh.size > 1

    def step(state, vgg_weights, batch, rng, color_pools):
        # The banded kernel gradient (wespe.conv) would all-reduce once per band in a program partitioned over
        # several devices: those use XLA's own. Acts while the step is traced.
        with conv.kernel_gradient("xla") if unbanded else contextlib.nullcontext():
            return _train_step(state, vgg_weights, batch, rng, color_pools, config=config, graphdefs=graphdefs,
                               preprocessing=preprocessing, degradation=degradation)

    # Only the compiler options follow the platform the step is built on: they are jax.jit's, not the program's
    # (jax.export drops them), and wespe.conv's CPU formulations are chosen when the step is lowered, so a step
    # built on a CPU still exports clean GPU/TPU programs (tests/test_accelerator_lowering.py).
    platform = (jax.default_backend() if layout is None else layout.mesh.devices.flat[0].platform)
    options = train_step_compiler_options(platform)
    if layout is None:
        jitted = jax.jit(step, donate_argnums=0, compiler_options=options)
    else:
        state_shardings = layout.state_shardings(abstract_train_state(config)[0])
        vgg_shardings = layout.state_shardings(vgg_weights)
        vgg_weights = layout.put(vgg_weights, vgg_shardings)
        if color_pools is not None:
            color_pools = layout.put(color_pools, jax.tree.map(lambda _: layout.replicated, color_pools))
        jitted = jax.jit(step, donate_argnums=0,
                         in_shardings=(state_shardings, vgg_shardings, layout.batch, layout.replicated,
                                       layout.replicated),
                         out_shardings=(state_shardings, layout.replicated), compiler_options=options)

    def train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
        return jitted(state, vgg_weights, batch, rng, color_pools)

    train_step.jitted = jitted  # for cost analysis / lowering in benchmarks
    train_step.unjitted = step  # to lower variants (e.g. under conv.kernel_gradient("xla") for FLOP counts)
    train_step.vgg_weights = vgg_weights  # as placed for the step
    train_step.color_pools = color_pools
    return train_step


def generator_from_state(state: TrainState, graphdefs: dict, name: str = "generator", *,
                         use_ema: bool = True) -> nnx.Module:
    """The trained network as an NNX module (for inference: enhance, export): G's moving average when the run
    keeps one (``config.ema_decay > 0``) and ``use_ema``, else the raw weights."""
    return nnx.merge(graphdefs[name], inference_params(state, name, use_ema), state.batch_stats[name])


def inference_params(state: TrainState, name: str = "generator", use_ema: bool = True) -> nnx.State:
    """The parameters a network is used with after training: its moving average when the run keeps one."""
    return state.ema[name] if use_ema and name in state.ema else state.params[name]
