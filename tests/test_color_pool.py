"""Dataset-level colour pools (wespe/color_pool.py): shrinking, sampling, the moment transfer, and how training
uses them (the colour path's initialisation and the pool colour term)."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from wespe import color_pool, losses, train
from tests.test_train import fixed_batch, tiny_config


def _write(folder, name, array):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(folder / f"{name}.png")


def test_photo_colors_box_average_the_whole_photo(tmp_path):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (128, 256, 3), np.uint8)
    _write(tmp_path, "p", photo)
    colors = color_pool.photo_colors(tmp_path / "p.png", side=64)
    blocks = photo.astype(np.float64).reshape(32, 4, 64, 4, 3).mean(axis=(1, 3)).reshape(-1, 3) / 255
    assert colors.shape == (32 * 64, 3) and colors.dtype == np.float32
    np.testing.assert_allclose(colors, blocks, atol=1.5 / 255)  # PIL averages in 8-bit fixed point
    small = color_pool.photo_colors(tmp_path / "p.png", side=1000)  # never enlarged
    np.testing.assert_allclose(small, photo.reshape(-1, 3) / 255, atol=1e-6)


def test_large_jpegs_are_read_at_reduced_scale_with_the_same_colours(tmp_path):
    """A 1600x1200 JPEG is decoded at 1/8 scale (Pillow's draft): its pool colours keep the full decode's
    per-channel mean and std (what moment_transfer uses)."""
    rng = np.random.default_rng(4)
    photo = np.asarray(Image.fromarray(rng.integers(0, 256, (30, 40, 3), np.uint8)).resize((1600, 1200)))
    Image.fromarray(photo).save(tmp_path / "big.jpg", quality=95)
    with Image.open(tmp_path / "big.jpg") as full:
        reference = np.asarray(full.convert("RGB").resize((64, 48), Image.Resampling.BOX)).reshape(-1, 3) / 255
    colors = color_pool.photo_colors(tmp_path / "big.jpg", side=64)
    assert colors.shape == reference.shape
    np.testing.assert_allclose(colors.mean(0), reference.mean(0), atol=2e-3)
    np.testing.assert_allclose(colors.std(0), reference.std(0), atol=2e-3)
    _, info = color_pool.read_image(tmp_path / "big.jpg", draft_side=64)
    assert info.size == (200, 150)  # decoded at 1/8: the draft was used


def test_build_color_pools_is_seeded_equal_sized_and_skips_bad_files(tmp_path, caplog):
    rng = np.random.default_rng(1)
    for i in range(3):
        _write(tmp_path / "src", f"s{i}", rng.integers(0, 128, (40, 60, 3), np.uint8))
        _write(tmp_path / "tgt", f"t{i}", rng.integers(128, 256, (30, 30, 3), np.uint8))
    (tmp_path / "src" / "broken.jpg").write_bytes(b"not a photo")
    with caplog.at_level(logging.WARNING):
        pools = color_pool.build_color_pools(tmp_path / "src", tmp_path / "tgt", photos=10, side=64, pixels=5000)
    assert "broken.jpg" in caplog.text
    assert pools["source"].shape == pools["target"].shape == (3 * 30 * 30, 3)  # the smaller side's pixel count
    assert pools["source"].max() < 0.5 < pools["target"].min()  # each side from its own folder
    again = color_pool.build_color_pools(tmp_path / "src", tmp_path / "tgt", photos=10, side=64, pixels=5000)
    np.testing.assert_array_equal(pools["source"], again["source"])
    fewer = color_pool.build_color_pools(tmp_path / "src", tmp_path / "tgt", photos=1, side=64, pixels=100)
    assert fewer["source"].shape == (100, 3)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad: no readable photo"):
        color_pool.build_color_pools(tmp_path / "bad", tmp_path / "tgt")


def test_moment_transfer_matches_float64_moments():
    rng = np.random.default_rng(2)
    source = rng.random((5000, 3)) * [0.5, 0.6, 0.3] + [0.2, 0.1, 0.4]
    source[:, 2] = 0.45  # a channel that does not vary: gain 1, only its mean moves
    target = rng.random((4000, 3)) ** 2
    matrix, bias = color_pool.moment_transfer(source, target)
    assert matrix.shape == (3, 3) and bias.shape == (3,) and np.count_nonzero(matrix - np.diag(np.diag(matrix))) == 0
    mapped = source @ matrix.T.astype(np.float64) + bias
    np.testing.assert_allclose(mapped[:, :2].mean(0), target[:, :2].mean(0), atol=1e-6)
    np.testing.assert_allclose(mapped[:, :2].std(0), target[:, :2].std(0), rtol=1e-5)
    assert matrix[2, 2] == 1.0 and abs(mapped[:, 2].mean() - target[:, 2].mean()) < 1e-6


def _pools(seed=3, n=4096):
    rng = np.random.default_rng(seed)
    source = rng.random((n, 3)).astype(np.float32) * 0.6 + 0.1
    return {"source": source, "target": np.clip(source[:, ::-1] * 1.3 - 0.05, 0, 1).astype(np.float32)}


def test_moments_init_sets_g_f_and_their_average():
    c = tiny_config("wespe_plus", ema_decay=0.9, color_init="moments")
    state, _ = train.create_train_state(c)
    pools = _pools()
    new = train.init_global_color(state, c, pools)
    m, b = color_pool.moment_transfer(pools["source"], pools["target"])
    mi, bi = color_pool.moment_transfer(pools["target"], pools["source"])
    for tree in (new.params, new.ema):
        np.testing.assert_array_equal(np.asarray(tree["generator"]["color_matrix"][...]), m)
        np.testing.assert_array_equal(np.asarray(tree["generator"]["color_bias"][...]), b)
    np.testing.assert_array_equal(np.asarray(new.params["inverse_generator"]["color_matrix"][...]), mi)
    np.testing.assert_array_equal(np.asarray(new.params["inverse_generator"]["color_bias"][...]), bi)
    np.testing.assert_array_equal(np.asarray(new.params["generator"]["conv_in"]["kernel"][...]),
                                  np.asarray(state.params["generator"]["conv_in"]["kernel"][...]))
    identity = tiny_config("wespe_plus", color_init="identity")
    assert train.init_global_color(state, identity, pools) is state  # unchanged


def test_pool_colour_term_compares_the_colour_path_with_the_target_pool():
    c = tiny_config("wespe_plus", color_distribution_pool=True)
    c.weights.color_distribution = 100.0
    c.weights.restoration = 0.0  # the colour term alone (the restoration term would need a fitted camera model)
    state, graphdefs = train.create_train_state(c)
    weights, pre = train.load_content_network(c)
    with pytest.raises(ValueError, match="color_distribution_pool"):
        train.make_train_step(c, graphdefs, weights, pre)
    pools = _pools()
    step = train.make_train_step(c, graphdefs, weights, pre, color_pools=pools)
    expected = losses.color_distribution_loss(jnp.asarray(pools["source"])[None, None],
                                              jnp.asarray(pools["target"])[None, None])  # colour path = identity
    batch = fixed_batch(c)
    other = {**batch, "target": 1.0 - batch["target"]}
    values = []
    for b in (batch, other):
        fresh, _ = train.create_train_state(c)
        _, metrics = step(fresh, b, jax.random.key(0))
        values.append(float(metrics["loss/color_distribution"]))
    np.testing.assert_allclose(values, [float(expected)] * 2, rtol=1e-5)  # the batch's target plays no part
