"""Can the texture adversary see the difference between the two cameras? Train it alone, real against real.

A texture adversary that cannot tell source photos from target photos cannot tell G's output from target photos
either, so its gradient carries no information about noise, blur or JPEG blocks. :func:`probe` trains the
texture discriminator of a config alone on patches of the two training sets (source = "fake", target = "real";
no generator) and reports its accuracy on patches of held-out photos of the two cameras every ``eval_every``
steps: the curve says whether this adversary, with this input view, normalisation, init, head and patch size,
can learn what the generator is meant to learn. ``launch/benchmark.py --mode=texture_probe`` runs it on the
quality benchmark's photos (README: Results).

Measured on the quality benchmark, the adversary tells the two cameras apart better on the high-pass view
(``discriminator.texture_input=highpass``) than on raw grayscale, with the official normalisation and init or
without (measured: see the README's Results). Raw grayscale patches of two sets differ mostly in scene content
and shading; the high-pass removes them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from wespe import losses, ops
from wespe.image_io import read_image
from wespe.image_paths import list_images
from wespe.models import Discriminator


def load_folder(folder: str | os.PathLike) -> list[np.ndarray]:
    """Every photo of ``folder`` as float32 RGB in [0, 1]."""
    return [read_image(p)[0].astype(np.float32) / 255.0 for p in list_images([folder])]


def random_patches(images: Sequence[np.ndarray], n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random ``size`` px crops, each of a random photo of ``images`` large enough (N, size, size, 3)."""
    usable = [im for im in images if min(im.shape[:2]) >= size]
    if not usable:
        raise ValueError(f"no photo is at least {size} px on both sides")
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        im = usable[rng.integers(len(usable))]
        y, x = rng.integers(0, im.shape[0] - size + 1), rng.integers(0, im.shape[1] - size + 1)
        out[i] = im[y:y + size, x:x + size]
    return out


def probe(config: ml_collections.ConfigDict, source: Sequence[np.ndarray], target: Sequence[np.ndarray],
          heldout_source: Sequence[np.ndarray], heldout_target: Sequence[np.ndarray], *, steps: int = 600,
          eval_every: int = 100, heldout_patches: int = 256, seed: int = 0, progress: bool = True) -> dict:
    """Train ``config``'s texture discriminator (``discriminator.{head, norm, init, texture_input}``,
    ``patch_size``, ``batch_size`` patches a side, Adam at ``optimizer.lr_discriminator``, BCE on one logit) on
    ``source`` ("fake") vs ``target`` ("real") photos (float32 RGB in [0, 1]); every ``eval_every`` steps its
    accuracy on ``heldout_patches`` fixed patches of each held-out set. Returns ``{"curve": [{"step",
    "accuracy", "loss"}], "final_accuracy", "best_accuracy", "settings"}`` (``loss``: the training loss averaged
    since the previous point)."""
    d = config.discriminator
    size, batch = int(config.patch_size), int(config.batch_size)
    net = Discriminator(1, head=d.head, input_size=size, num_logits=1, norm=d.norm, init=d.init,
                        rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(net, nnx.Param)
    tx = optax.adam(config.optimizer.lr_discriminator, b1=config.optimizer.b1, b2=config.optimizer.b2)
    opt_state = tx.init(params)

    def logits(p, images):
        return nnx.merge(graphdef, p)(ops.texture_view(images, d.texture_input))

    @jax.jit
    def train_step(p, opt_state, real, fake, key):
        inputs, labels = losses.discriminator_batch(real, fake, "bce", key)

        def loss_fn(p):
            return losses.discriminator_loss(logits(p, inputs), labels, "bce", "mean")[0]
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    @jax.jit
    def accuracy(p, real, fake):
        s_real = losses.realness_logit(logits(p, real))
        s_fake = losses.realness_logit(logits(p, fake))
        return 0.5 * (jnp.mean(s_real > 0) + jnp.mean(s_fake <= 0))

    eval_rng = np.random.default_rng([seed, 1])
    eval_real = jnp.asarray(random_patches(heldout_target, heldout_patches, size, eval_rng))
    eval_fake = jnp.asarray(random_patches(heldout_source, heldout_patches, size, eval_rng))
    rng = np.random.default_rng([seed, 2])
    key = jax.random.key(seed)
    curve, running = [], []
    for step in tqdm(range(1, steps + 1), desc=f"texture probe ({d.texture_input})", unit="step",
                     disable=not progress, dynamic_ncols=True):
        real = jnp.asarray(random_patches(target, batch, size, rng))
        fake = jnp.asarray(random_patches(source, batch, size, rng))
        params, opt_state, loss = train_step(params, opt_state, real, fake, jax.random.fold_in(key, step))
        running.append(loss)
        if step % eval_every == 0 or step == steps:
            curve.append({"step": step, "accuracy": float(accuracy(params, eval_real, eval_fake)),
                          "loss": float(np.mean(jax.device_get(running)))})
            running = []
    accuracies = [c["accuracy"] for c in curve]
    return {"curve": curve, "final_accuracy": accuracies[-1], "best_accuracy": max(accuracies),
            "settings": {"texture_input": d.texture_input, "norm": d.norm, "init": d.init, "head": d.head,
                         "patch_size": size, "batch_per_side": batch, "lr": config.optimizer.lr_discriminator,
                         "steps": steps, "heldout_patches_per_side": heldout_patches, "seed": seed}}
