"""Can G learn to undo a camera's degradation on crops, and does what it learns carry to whole photos?

``weights.restoration`` trains G on target crops degraded by a camera model (wespe.degradation) beside WESPE's
unpaired losses. :func:`probe` trains that one term alone: G (the config's generator, its colour path fixed at a
given colour map) on ``|G(D(y)) - y|`` over random crops of clean photos, and every ``eval_every`` steps runs it
on whole held-out photos of the source camera against their clean originals. The curve separates the questions
the full recipe mixes: can this network learn restoration at this scale, does learning on crops transfer to
whole photos, and is the degradation D (fitted, or the true camera family where it is known) the right one.
``launch/benchmark.py --mode=restoration_probe`` runs it on the quality benchmark's photos (README: Results).

What it showed there: with instance norm in G's blocks, restoration learned from the camera family's blur, noise
and JPEG makes whole photos worse than the colour start (a norm over a crop's statistics is not one over a
photo's); without it, better; from the fitted camera (which overestimates the damage), about even (measured: see
the README's Results). Held-out scores move between evaluations at a small batch size: one run is indicative.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from PIL import Image
from tqdm import tqdm

from wespe import degradation as degradation_lib
from wespe import metrics
from wespe.evaluation.texture_probe import random_patches
from wespe.models import Generator

# Degrades a batch of clean crops (N, s, s, 3) float32 in [0, 1]; returns 8-bit values in [0, 1], float32.
Degrader = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def fitted_degrader(fitted: degradation_lib.Degradation, jitter: float) -> Degrader:
    """The camera model of ``weights.restoration`` (:func:`wespe.degradation.degrade_batch`, parameters drawn
    around ``fitted`` with ``jitter``), as training draws it."""
    degrade = jax.jit(lambda clean, key: degradation_lib.degrade_batch(clean, fitted, key, jitter))

    def apply(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.asarray(degrade(jnp.asarray(clean), jax.random.key(int(rng.integers(2**31)))))
    return apply


def camera_degrader(ranges: dict, color_matrix: np.ndarray, color_bias: np.ndarray) -> Degrader:
    """A known camera family's blur, sensor noise and JPEG (each crop its own draw from ``ranges``, the keys of
    :data:`wespe.training.synthetic_camera.CAMERA_RANGES`), with the colour map ``x -> color_matrix @ x + color_bias``
    in place of the family's colour steps, so that G's fixed colour path is its exact inverse: the degradation a perfect
    fit would find. Pillow's JPEG, as the quality benchmark's camera."""
    from wespe.training.synthetic_camera import gaussian_blur
    m, b = np.asarray(color_matrix, np.float64), np.asarray(color_bias, np.float64)

    def one(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = gaussian_blur(clean.astype(np.float64), rng.uniform(*ranges["blur_sigma"])) @ m.T + b
        x = x + rng.normal(0.0, rng.uniform(*ranges["noise_sigma"]), x.shape)
        buf = io.BytesIO()
        quality = int(rng.integers(ranges["jpeg_quality"][0], ranges["jpeg_quality"][1] + 1))
        Image.fromarray(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), np.float32) / 255.0

    return lambda clean, rng: np.stack([one(c, rng) for c in clean])


def _colour_fixed(path: tuple) -> bool:
    return any(getattr(k, "key", k) in ("color_matrix", "color_bias") for k in path)


def probe(config: ml_collections.ConfigDict, clean: Sequence[np.ndarray], heldout_degraded: Sequence[np.ndarray],
          heldout_clean: Sequence[np.ndarray], color_matrix: np.ndarray, color_bias: np.ndarray,
          degrader: Degrader, *, steps: int = 1200, eval_every: int = 200, seed: int = 0,
          progress: bool = True) -> dict:
    """Train ``config``'s generator (``generator.{width, num_blocks, norm, init}``; a residual output with a
    global colour path, whose map is set to ``color_matrix`` (3, 3) / ``color_bias`` (3,) and not trained) on
    ``mean |G(degrader(y)) - y|`` over ``config.batch_size`` random ``config.patch_size`` px crops of the
    ``clean`` photos a step (Adam at ``optimizer.lr_generator`` with ``optimizer.warmup_steps`` of linear
    warm-up). At step 0 and every ``eval_every`` steps: G on each whole ``heldout_degraded`` photo, rounded to
    8 bits, PSNR / SSIM against ``heldout_clean`` (means over the photos). Photos are float32 RGB in [0, 1].
    Returns ``{"curve": [{"step", "psnr", "ssim", "loss"}], "start", "final", "best_psnr", "colour_path",
    "settings"}`` (``colour_path``: G's colour map after training, which must be the one given)."""
    g = config.generator
    if g.output != "residual" or g.global_color == "none":
        raise ValueError("the restoration probe needs generator.output=residual with a global_color path (the "
                         "colour map it keeps fixed)")
    size, batch = int(config.patch_size), int(config.batch_size)
    net = Generator(width=g.width, num_blocks=g.num_blocks, norm=g.norm, init=g.init, output=g.output,
                    global_color=g.global_color, rngs=nnx.Rngs(seed))
    net.color_matrix[...] = jnp.asarray(color_matrix, jnp.float32)
    net.color_bias[...] = jnp.asarray(color_bias, jnp.float32)
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    o = config.optimizer
    lr = optax.linear_schedule(0.0, o.lr_generator, int(o.warmup_steps)) if o.warmup_steps > 0 else o.lr_generator
    trainable = jax.tree_util.tree_map_with_path(lambda path, _: "fixed" if _colour_fixed(path) else "train",
                                                 params)
    tx = optax.multi_transform({"train": optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps),
                                "fixed": optax.set_to_zero()}, trainable)
    opt_state = tx.init(params)

    def run(p, x):
        return nnx.merge(graphdef, p, rest)(x)

    @jax.jit
    def train_step(p, opt_state, degraded, target):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean(jnp.abs(run(p, degraded) - target)))(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    forward = jax.jit(run)

    def evaluate(p) -> tuple[float, float]:
        psnrs, ssims = [], []
        for x, y in zip(heldout_degraded, heldout_clean):
            out = np.round(np.clip(np.asarray(forward(p, jnp.asarray(x)[None]))[0], 0, 1) * 255) / 255
            psnrs.append(float(metrics.psnr(out, y)))
            ssims.append(float(metrics.ssim(out, y)))
        return float(np.mean(psnrs)), float(np.mean(ssims))

    psnr, ssim = evaluate(params)
    curve = [{"step": 0, "psnr": psnr, "ssim": ssim, "loss": None}]
    rng = np.random.default_rng([seed, 3])
    running = []
    for step in tqdm(range(1, steps + 1), desc="restoration probe", unit="step", disable=not progress,
                     dynamic_ncols=True):
        target = random_patches(clean, batch, size, rng)
        degraded = degrader(target, rng)
        params, opt_state, loss = train_step(params, opt_state, jnp.asarray(degraded), jnp.asarray(target))
        running.append(loss)
        if step % eval_every == 0 or step == steps:
            psnr, ssim = evaluate(params)
            curve.append({"step": step, "psnr": psnr, "ssim": ssim, "loss": float(np.mean(jax.device_get(running)))})
            running = []
    trained = nnx.merge(graphdef, params, rest)
    colour_path = {"matrix": np.asarray(trained.color_matrix[...]).tolist(),
                   "bias": np.asarray(trained.color_bias[...]).tolist()}  # as given: not trained
    return {"curve": curve, "start": curve[0], "final": curve[-1], "best_psnr": max(c["psnr"] for c in curve),
            "colour_path": colour_path,
            "settings": {"width": g.width, "num_blocks": g.num_blocks, "norm": g.norm, "init": g.init,
                         "patch_size": size, "batch_size": batch, "lr": o.lr_generator,
                         "warmup_steps": o.warmup_steps, "steps": steps, "seed": seed}}
