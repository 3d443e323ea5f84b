"""The WESPE/DPED loss terms as pure functions.

Conventions. Discriminator outputs are turned into one "realness" logit ``s`` (log-odds that the input is a
target-domain image): for the official 2-way softmax head ``s = logit_real - logit_fake`` (so the 2-way
softmax cross-entropy is exactly a sigmoid cross-entropy on ``s``), for a 1-logit head ``s`` is the logit.

Normalisation (config ``loss_normalization``):
  ``sum``  as the official DPED code: adversarial terms summed over the batch, the paired colour loss summed
           over pixels and channels and divided by 2 * batch; content and TV are means there too.
  ``mean`` every term a mean over all its elements (what most ports do).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wespe.ops import GRAYSCALE_WEIGHTS, total_variation

ADVERSARIAL_FORMS = ("dped_softmax", "bce", "lsgan", "hinge")
NORMALIZATIONS = ("sum", "mean")


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")


def _reduce_batch(per_sample: jax.Array, normalization: str) -> jax.Array:
    _check("loss_normalization", normalization, NORMALIZATIONS)
    return jnp.sum(per_sample) if normalization == "sum" else jnp.mean(per_sample)


def content_loss(features_a: jax.Array, features_b: jax.Array) -> jax.Array:
    """Mean squared difference of VGG feature maps (the DPED code's ``2 * l2_loss / (C*H*W*batch)``)."""
    diff = features_a.astype(jnp.float32) - features_b.astype(jnp.float32)
    return jnp.mean(jnp.square(diff))


def color_loss(blurred_a: jax.Array, blurred_b: jax.Array, normalization: str = "sum") -> jax.Array:
    """DPED's paired colour loss between blurred images: ``sum((a-b)^2) / (2*batch)`` or the plain mean."""
    sq = jnp.square(blurred_a.astype(jnp.float32) - blurred_b.astype(jnp.float32))
    _check("loss_normalization", normalization, NORMALIZATIONS)
    if normalization == "sum":
        return jnp.sum(sq) / (2.0 * sq.shape[0])
    return jnp.mean(sq)


def tv_loss(images: jax.Array) -> jax.Array:
    """Total variation averaged over the batch (as the DPED code, in both normalisations)."""
    return jnp.mean(total_variation(images.astype(jnp.float32)))


def identity_loss(mapped: jax.Array, original: jax.Array) -> jax.Array:
    """Mean absolute difference (CycleGAN's identity-mapping term, in pixels)."""
    return jnp.mean(jnp.abs(mapped.astype(jnp.float32) - original.astype(jnp.float32)))


def realness_logit(logits: jax.Array) -> jax.Array:
    """(N, 2) official softmax logits [real, fake] or (N, 1) logits -> (N,) log-odds of "real"."""
    logits = logits.astype(jnp.float32)
    if logits.shape[-1] == 2:
        return logits[..., 0] - logits[..., 1]
    if logits.shape[-1] == 1:
        return logits[..., 0]
    raise ValueError(f"discriminator logits must have 1 or 2 outputs, got shape {logits.shape}")


def discriminator_batch(real: jax.Array, fake: jax.Array, form: str, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The images a discriminator is trained on, and their labels (1 = real).

    ``dped_softmax`` follows the official code: each of the N positions shows the real or the fake image
    by a fair coin flip (N images in all). The other forms show all real and all fake images (2N).
    """
    _check("adversarial_form", form, ADVERSARIAL_FORMS)
    if form == "dped_softmax":
        is_real = jax.random.bernoulli(rng, 0.5, (real.shape[0],))
        mask = is_real.reshape((-1,) + (1,) * (real.ndim - 1))
        return jnp.where(mask, real, fake), is_real.astype(jnp.float32)
    labels = jnp.concatenate([jnp.ones(real.shape[0]), jnp.zeros(fake.shape[0])])
    return jnp.concatenate([real, fake], axis=0), labels


def discriminator_loss(logits: jax.Array, is_real: jax.Array, form: str,
                       normalization: str) -> tuple[jax.Array, jax.Array]:
    """Discriminator loss and accuracy for labelled inputs (labels from :func:`discriminator_batch`)."""
    _check("adversarial_form", form, ADVERSARIAL_FORMS)
    s = realness_logit(logits)
    y = is_real.astype(jnp.float32)
    if form in ("dped_softmax", "bce"):
        per_sample = -(y * jax.nn.log_sigmoid(s) + (1.0 - y) * jax.nn.log_sigmoid(-s))
    elif form == "lsgan":
        per_sample = 0.5 * (y * jnp.square(s - 1.0) + (1.0 - y) * jnp.square(s))
    else:  # hinge
        per_sample = y * jax.nn.relu(1.0 - s) + (1.0 - y) * jax.nn.relu(1.0 + s)
    accuracy = jnp.mean(((s > 0).astype(jnp.float32) == y).astype(jnp.float32))
    return _reduce_batch(per_sample, normalization), accuracy


def generator_adversarial_loss(fake_logits: jax.Array, form: str, normalization: str) -> jax.Array:
    """What the generator minimises against one discriminator, from the logits on its outputs.

    ``dped_softmax``: the official code's ``-loss_discrim`` with every input fake, i.e. ``sum log p_fake``
    (the saturating minimax form). ``bce``: ``-log D(G(x))`` (non-saturating; the WESPE paper's
    ``-sum_i log D(G(x_i))`` with ``sum``). ``lsgan``: ``0.5 (s - 1)^2``. ``hinge``: ``-s``.
    """
    _check("adversarial_form", form, ADVERSARIAL_FORMS)
    s = realness_logit(fake_logits)
    if form == "dped_softmax":
        per_sample = jax.nn.log_sigmoid(-s)
    elif form == "bce":
        per_sample = -jax.nn.log_sigmoid(s)
    elif form == "lsgan":
        per_sample = 0.5 * jnp.square(s - 1.0)
    else:
        per_sample = -s
    return _reduce_batch(per_sample, normalization)


def _unit_directions() -> jax.Array:
    # The three channels, luma-like grey, and the opponent axes (R-G, Y-B and the two other RGB diagonals):
    # fixed, so the loss is deterministic and the same on every device layout.
    d = jnp.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [1, -1, 0], [1, 1, -2], [1, -1, 1], [-1, 1, 1]],
                  jnp.float32)
    return d / jnp.linalg.norm(d, axis=1, keepdims=True)


def color_distribution_loss(images: jax.Array, reference: jax.Array) -> jax.Array:
    """Sliced Wasserstein-2 distance between the pixel colours of two batches (unpaired).

    Every pixel of ``images`` and of ``reference`` (both (N, H, W, 3), the same size) is a point in RGB; both
    point sets are projected on 8 fixed directions (the channels, grey and the opponent axes), each projection
    is sorted, and the mean squared difference of the sorted values is the squared 1-D Wasserstein distance of
    the two colour histograms along that direction. It matches the *distribution* of colours (white balance,
    contrast, tone curve) of a batch to the target set's, without pairing pixels and without a discriminator,
    so it is deterministic, cannot oscillate, and its gradient moves every pixel a little towards the target
    histogram instead of painting local patches (the blotches a colour GAN makes early in training).
    """
    if images.shape != reference.shape:
        raise ValueError(f"color_distribution_loss needs batches of the same shape, got {images.shape} and "
                         f"{reference.shape}")
    directions = _unit_directions()
    a = images.astype(jnp.float32).reshape(-1, images.shape[-1]) @ directions.T
    b = reference.astype(jnp.float32).reshape(-1, reference.shape[-1]) @ directions.T
    return jnp.mean(jnp.square(jnp.sort(a, axis=0) - jnp.sort(b, axis=0)))


def _gradients(gray: jax.Array) -> list[jax.Array]:
    """Horizontal and vertical differences of (N, H, W) images, at full and half resolution (2x2 means)."""
    out = []
    for level in range(2):
        if level:
            n, h, w = gray.shape
            gray = gray[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
        out += [gray[:, :, 1:] - gray[:, :, :-1], gray[:, 1:, :] - gray[:, :-1, :]]
    return out


def texture_distribution_loss(images: jax.Array, reference: jax.Array) -> jax.Array:
    """Wasserstein-2 distance between the luma-gradient distributions of two batches (unpaired).

    The horizontal and vertical luma differences at full and half resolution of ``images`` and of ``reference``
    (both (N, H, W, 3), the same size) are sorted and compared like :func:`color_distribution_loss`. Natural
    photos have heavy-tailed gradient distributions: blur removes the large gradients, sensor noise and JPEG
    blocking add many small ones, so matching the target camera's distribution asks G to sharpen edges and
    quieten flat areas, the first-order statistics the texture adversary learns to tell apart, without the
    adversary's noise.
    """
    if images.shape != reference.shape:
        raise ValueError(f"texture_distribution_loss needs batches of the same shape, got {images.shape} and "
                         f"{reference.shape}")
    luma = jnp.asarray(GRAYSCALE_WEIGHTS, jnp.float32)
    ga = _gradients(jnp.sum(images.astype(jnp.float32) * luma, axis=-1))
    gb = _gradients(jnp.sum(reference.astype(jnp.float32) * luma, axis=-1))
    terms = [jnp.mean(jnp.square(jnp.sort(a.reshape(-1)) - jnp.sort(b.reshape(-1)))) for a, b in zip(ga, gb)]
    return sum(terms) / len(terms)
