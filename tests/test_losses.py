"""Loss terms: edge cases and exact values against NumPy versions of the official DPED formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wespe import losses


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_identical_inputs_give_zero():
    a = jnp.asarray(np.random.default_rng(0).random((2, 6, 6, 8)), jnp.float32)
    assert float(losses.content_loss(a, a)) == 0.0
    for norm in ("sum", "mean"):
        assert float(losses.color_loss(a[..., :3], a[..., :3], norm)) == 0.0
    assert float(losses.tv_loss(jnp.full((2, 5, 5, 3), 0.7))) == 0.0


def test_content_and_color_normalisation():
    rng = np.random.default_rng(1)
    a, b = rng.random((4, 5, 6, 3)), rng.random((4, 5, 6, 3))
    ja, jb = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    assert float(losses.content_loss(ja, jb)) == pytest.approx(np.mean((a - b) ** 2), rel=1e-5)
    # Official: tf.reduce_sum(tf.pow(dslr_blur - enhanced_blur, 2)) / (2 * batch_size)
    assert float(losses.color_loss(ja, jb, "sum")) == pytest.approx(np.sum((a - b) ** 2) / 8, rel=1e-5)
    assert float(losses.color_loss(ja, jb, "mean")) == pytest.approx(np.mean((a - b) ** 2), rel=1e-5)
    with pytest.raises(ValueError, match="loss_normalization"):
        losses.color_loss(ja, jb, "median")


def test_dped_softmax_discriminator_matches_official_formula():
    """-sum(target * log(softmax)) with target = [adv, 1 - adv] on the swapped batch (official train_model.py)."""
    rng = np.random.default_rng(2)
    real, fake = rng.random((8, 4, 4, 1)).astype(np.float32), rng.random((8, 4, 4, 1)).astype(np.float32)
    inputs, is_real = losses.discriminator_batch(jnp.asarray(real), jnp.asarray(fake), "dped_softmax",
                                                 jax.random.key(3))
    adv = np.asarray(is_real)[:, None]
    assert inputs.shape == real.shape and 0 < adv.sum() < 8
    np.testing.assert_array_equal(np.asarray(inputs), fake * (1 - adv[..., None, None]) + real * adv[..., None, None])
    logits = rng.normal(size=(8, 2)) * 3
    target = np.concatenate([adv, 1 - adv], 1)
    official = -np.sum(target * np.log(np.clip(softmax(logits), 1e-10, 1.0)))
    loss, acc = losses.discriminator_loss(jnp.asarray(logits, jnp.float32), is_real, "dped_softmax", "sum")
    assert float(loss) == pytest.approx(official, rel=1e-5)
    expected_acc = np.mean(np.argmax(softmax(logits), 1) == np.argmax(target, 1))
    assert float(acc) == pytest.approx(expected_acc)
    # The generator's texture loss is -loss_discrim with every input fake: sum(log p_fake).
    gen = losses.generator_adversarial_loss(jnp.asarray(logits, jnp.float32), "dped_softmax", "sum")
    assert float(gen) == pytest.approx(np.sum(np.log(softmax(logits)[:, 1])), rel=1e-5)


def test_swap_is_deterministic_for_a_key():
    real, fake = jnp.ones((16, 2, 2, 1)), jnp.zeros((16, 2, 2, 1))
    a = losses.discriminator_batch(real, fake, "dped_softmax", jax.random.key(7))[1]
    b = losses.discriminator_batch(real, fake, "dped_softmax", jax.random.key(7))[1]
    c = losses.discriminator_batch(real, fake, "dped_softmax", jax.random.key(8))[1]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("form", ["bce", "lsgan", "hinge"])
def test_other_forms_against_numpy(form):
    rng = np.random.default_rng(4)
    real, fake = jnp.zeros((5, 3, 3, 1)), jnp.ones((5, 3, 3, 1))
    inputs, labels = losses.discriminator_batch(real, fake, form, jax.random.key(0))
    assert inputs.shape[0] == 10 and np.asarray(labels).tolist() == [1] * 5 + [0] * 5
    s = rng.normal(size=10)
    sr, sf = s[:5], s[5:]
    log_sig = lambda z: -np.log1p(np.exp(-z))  # noqa: E731
    d_expected = {"bce": -log_sig(sr).sum() - log_sig(-sf).sum(),
                  "lsgan": 0.5 * (((sr - 1) ** 2).sum() + (sf ** 2).sum()),
                  "hinge": np.maximum(0, 1 - sr).sum() + np.maximum(0, 1 + sf).sum()}[form]
    d_loss, acc = losses.discriminator_loss(jnp.asarray(s[:, None], jnp.float32), labels, form, "sum")
    assert float(d_loss) == pytest.approx(d_expected, rel=1e-5)
    assert float(acc) == pytest.approx((np.sum(sr > 0) + np.sum(sf <= 0)) / 10)
    d_mean, _ = losses.discriminator_loss(jnp.asarray(s[:, None], jnp.float32), labels, form, "mean")
    assert float(d_mean) == pytest.approx(d_expected / 10, rel=1e-5)
    g_expected = {"bce": -log_sig(sf).sum(), "lsgan": 0.5 * ((sf - 1) ** 2).sum(), "hinge": -sf.sum()}[form]
    g = losses.generator_adversarial_loss(jnp.asarray(sf[:, None], jnp.float32), form, "sum")
    assert float(g) == pytest.approx(g_expected, rel=1e-5)


def test_two_logit_head_is_a_sigmoid_on_the_difference():
    logits = jnp.asarray([[2.0, -1.0], [0.5, 0.5]])
    np.testing.assert_allclose(np.asarray(losses.realness_logit(logits)), [3.0, 0.0])
    with pytest.raises(ValueError, match="1 or 2"):
        losses.realness_logit(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="adversarial_form"):
        losses.generator_adversarial_loss(logits, "wgan", "sum")


def test_losses_are_finite_at_saturation():
    """log-sigmoid keeps the adversarial terms finite where a clipped softmax would not give gradients."""
    logits = jnp.asarray([[80.0, -80.0], [-80.0, 80.0]])
    for form in ("dped_softmax", "bce"):
        g = jax.grad(lambda z: losses.generator_adversarial_loss(z, form, "sum"))(logits)
        assert np.all(np.isfinite(np.asarray(g)))


def test_identity_loss_is_mean_absolute_difference():
    a = np.random.default_rng(6).random((2, 5, 5, 3)).astype(np.float32)
    b = np.random.default_rng(7).random((2, 5, 5, 3)).astype(np.float32)
    assert float(losses.identity_loss(jnp.asarray(a), jnp.asarray(b))) == pytest.approx(np.mean(np.abs(a - b)),
                                                                                          rel=1e-5)
    assert float(losses.identity_loss(jnp.asarray(a), jnp.asarray(a))) == 0.0


def _sliced_w2_reference(a, b):
    """float64 NumPy: mean over the 8 fixed directions of the squared 1-D Wasserstein-2 distance."""
    d = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [1, -1, 0], [1, 1, -2], [1, -1, 1], [-1, 1, 1]], float)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    pa = np.sort(a.reshape(-1, 3).astype(np.float64) @ d.T, axis=0)
    pb = np.sort(b.reshape(-1, 3).astype(np.float64) @ d.T, axis=0)
    return np.mean((pa - pb) ** 2)


def test_color_distribution_loss_against_numpy_and_unpaired():
    rng = np.random.default_rng(0)
    a = rng.random((2, 6, 5, 3)).astype(np.float32)
    b = (rng.random((2, 6, 5, 3)) * 0.5 + 0.2).astype(np.float32)
    np.testing.assert_allclose(float(losses.color_distribution_loss(a, b)), _sliced_w2_reference(a, b), rtol=1e-5)
    # Unpaired: only the colour distributions matter, not where pixels are or which image holds them.
    shuffled = rng.permutation(a.reshape(-1, 3)).reshape(a.shape)
    assert float(losses.color_distribution_loss(shuffled, a)) == 0.0
    np.testing.assert_allclose(float(losses.color_distribution_loss(shuffled, b)),
                               float(losses.color_distribution_loss(a, b)), rtol=1e-6)
    # A global shift of every colour by s along a unit direction costs s^2 along it: a grey shift of 0.1 (each
    # channel +0.1) moves the projections by 0.1 * (d . 1).
    d = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [1, -1, 0], [1, 1, -2], [1, -1, 1], [-1, 1, 1]], float)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    expected = np.mean((0.1 * d.sum(1)) ** 2)
    np.testing.assert_allclose(float(losses.color_distribution_loss(a + 0.1, a)), expected, rtol=1e-4)
    with pytest.raises(ValueError, match="same shape"):
        losses.color_distribution_loss(a, b[:1])
