"""Dataset-level colour pools (wespe/training/color_pool.py): shrinking, sampling, the moment transfer, and how training
uses them (the colour path's initialisation and the pool colour term)."""

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tests.test_train_step import fixed_batch, tiny_config
from wespe import color_map, losses, train_step
from wespe.training import color_pool


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
    matrix, bias = color_map.moment_transfer(source, target)
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
    state, _ = train_step.create_train_state(c)
    pools = _pools()
    new = train_step.init_global_color(state, c, pools)
    m, b = color_map.moment_transfer(pools["source"], pools["target"])
    mi, bi = color_map.moment_transfer(pools["target"], pools["source"])
    for tree in (new.params, new.ema):
        np.testing.assert_array_equal(np.asarray(tree["generator"]["color_matrix"][...]), m)
        np.testing.assert_array_equal(np.asarray(tree["generator"]["color_bias"][...]), b)
    np.testing.assert_array_equal(np.asarray(new.params["inverse_generator"]["color_matrix"][...]), mi)
    np.testing.assert_array_equal(np.asarray(new.params["inverse_generator"]["color_bias"][...]), bi)
    np.testing.assert_array_equal(np.asarray(new.params["generator"]["conv_in"]["kernel"][...]),
                                  np.asarray(state.params["generator"]["conv_in"]["kernel"][...]))
    identity = tiny_config("wespe_plus", color_init="identity")
    assert train_step.init_global_color(state, identity, pools) is state  # unchanged


def test_pool_colour_term_compares_the_colour_path_with_the_target_pool():
    c = tiny_config("wespe_plus", color_distribution_pool=True)
    c.weights.color_distribution = 100.0
    c.weights.restoration = 0.0  # the colour term alone (the restoration term would need a fitted camera model)
    state, graphdefs = train_step.create_train_state(c)
    weights, pre = train_step.load_content_network(c)
    with pytest.raises(ValueError, match="color_distribution_pool"):
        train_step.make_train_step(c, graphdefs, weights, pre)
    pools = _pools()
    step = train_step.make_train_step(c, graphdefs, weights, pre, color_pools=pools)
    expected = losses.color_distribution_loss(jnp.asarray(pools["source"])[None, None],
                                              jnp.asarray(pools["target"])[None, None])  # colour path = identity
    batch = fixed_batch(c)
    other = {**batch, "target": 1.0 - batch["target"]}
    values = []
    for b in (batch, other):
        fresh, _ = train_step.create_train_state(c)
        _, metrics = step(fresh, b, jax.random.key(0))
        values.append(float(metrics["loss/color_distribution"]))
    np.testing.assert_allclose(values, [float(expected)] * 2, rtol=1e-5)  # the batch's target plays no part


def _gaussian_float64(image, sigma):
    """An independent float64 Gaussian filter of each channel: the sampled kernel normalised to 1 out to 4 sigma
    (scipy's truncate), borders mirrored with the edge pixel repeated (scipy's ``reflect``, NumPy's
    ``symmetric``), one axis after the other."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = np.asarray(image, np.float64)
    for axis in (0, 1):
        pad = [(radius, radius) if a == axis else (0, 0) for a in range(3)]
        padded = np.pad(out, pad, mode="symmetric")
        n = out.shape[axis]
        out = sum(t * np.take(padded, np.arange(k, k + n), axis=axis) for k, t in enumerate(taps))
    return out


def test_folder_band_std_matches_a_float64_difference_of_gaussians(tmp_path):
    rng = np.random.default_rng(5)
    photos = [rng.integers(0, 256, (50, 70, 3), np.uint8), rng.integers(0, 256, (64, 40, 3), np.uint8)]
    for i, photo in enumerate(photos):
        _write(tmp_path, f"p{i}", photo)
    fine, coarse = color_pool.BAND_SIGMAS
    squares, count = np.zeros(3), 0
    for photo in photos:
        x = photo / 255.0
        band = _gaussian_float64(x, fine) - _gaussian_float64(x, coarse)
        squares, count = squares + (band ** 2).sum(axis=(0, 1)), count + band.shape[0] * band.shape[1]
    got = color_pool.folder_band_std(tmp_path, photos=10, seed=0)
    # the reference truncates its kernels at 4 sigma (tail mass 6e-5 a side), the DCT does not: ~1e-4 apart
    np.testing.assert_allclose(got, np.sqrt(squares / count), rtol=5e-4)
    one = color_pool.folder_band_std(tmp_path, photos=1, seed=0)  # the seed's first photo only
    assert not np.allclose(one, got)


def _scene(rng, shape, layout):
    """A photo-like float image: a band-limited texture (the same statistics in every scene) plus a smooth
    layout of amplitude ``layout`` (half a cosine period across each side: large regions, like sky and ground)."""
    h, w = shape
    texture = rng.normal(size=(h, w, 3))
    texture = _gaussian_float64(texture, 2.0) - _gaussian_float64(texture, 8.0)
    texture *= 0.08 / texture.std()
    yy, xx = np.meshgrid(np.cos(np.pi * np.arange(h) / (h - 1)), np.cos(np.pi * np.arange(w) / (w - 1)),
                         indexing="ij")
    return 0.5 + texture + layout * (yy * xx)[..., None] * np.array([1.0, 0.8, 0.6])


def test_bandpass_gain_recovers_the_camera_gain_where_the_scene_layouts_differ(tmp_path):
    """The estimator's reason to exist: the target scenes have little large-scale layout, the source scenes much
    (a camera of gain 0.6 on every channel saw them). The moment transfer takes the layout for contrast; the
    band-pass contrast sees the texture, which the camera scaled by 0.6 on both sides alike."""
    rng = np.random.default_rng(6)
    gain = np.array([0.6, 0.6, 0.6])
    for i in range(3):
        _write(tmp_path / "tgt", f"t{i}", np.round(np.clip(_scene(rng, (192, 256), 0.05), 0, 1) * 255).astype(np.uint8))
        camera = gain * (_scene(rng, (192, 256), 0.35) - 0.5) + 0.45
        _write(tmp_path / "src", f"s{i}", np.round(np.clip(camera, 0, 1) * 255).astype(np.uint8))
    pools = color_pool.build_color_pools(tmp_path / "src", tmp_path / "tgt", side=256, band=True)
    band_matrix, band_bias = color_map.fitted_colour_map(pools, "bandpass")
    moments_matrix, _ = color_map.fitted_colour_map(pools, "moments")
    np.testing.assert_allclose(np.diag(band_matrix), 1 / gain, rtol=0.05)
    assert np.all(np.diag(moments_matrix) < 0.8 / gain)  # the layout's variance read as the camera's contrast
    np.testing.assert_allclose(band_bias, color_map.anchored_bias(pools["source"], pools["target"],
                                                                   np.diag(band_matrix)), atol=1e-6)
    inverse, inverse_bias = color_map.fitted_colour_map(pools, "bandpass", reverse=True)
    np.testing.assert_allclose(np.diag(inverse) * np.diag(band_matrix), 1.0, rtol=1e-6)  # the exact inverse map
    np.testing.assert_allclose(inverse_bias, -band_bias / np.diag(band_matrix), atol=1e-5)
    with pytest.raises(ValueError, match="band=True"):
        color_map.fitted_colour_map({k: pools[k] for k in ("source", "target")}, "bandpass")
    with pytest.raises(ValueError, match="unknown colour estimator"):
        color_map.fitted_colour_map(pools, "histogram")


def test_anchored_bias_sends_mean_and_black_point_home_above_clipped_shadows():
    """Source colours = an affine camera of colours drawn like the target's, its shadows clipped at 0 (12% of
    the pixels): with the camera's gain given, the bias is the camera's exact inverse offset; a black point read
    at the 2nd percentile, inside the clipped ranks, would not be."""
    rng = np.random.default_rng(7)
    scene = rng.beta(2.0, 3.0, size=(200_000, 3))
    target, seen = scene[:100_000], scene[100_000:]  # two draws of the same kind of scenes
    gain, offset = np.array([1.4, 1.2, 1.6]), np.array([0.08, 0.1, 0.14])
    source = np.clip(seen / gain - offset / gain, 0, 1)  # x' = (x - offset) / gain: x = gain x' + offset
    clipped = (source <= color_map.CLIPPED).mean(axis=0)
    assert np.all(clipped > 0.03) and np.all(clipped < 0.2)
    bias = color_map.anchored_bias(source, target, gain)
    np.testing.assert_allclose(bias, offset, atol=0.005)  # the clipping moves only the mean anchor, a little
    black_point = np.percentile(target, 2, axis=0) - gain * np.percentile(source, 2, axis=0)
    assert np.all(np.abs(black_point - offset) > 0.02)  # why the clipped ranks are skipped
    unclipped = np.clip(seen / gain - offset / gain, -1, 2)
    np.testing.assert_allclose(color_map.anchored_bias(unclipped, target, gain), offset, atol=2e-3)


def test_band_gain_keeps_gain_1_where_a_side_has_no_band_pass_contrast(caplog):
    with caplog.at_level(logging.WARNING):
        gain = color_map.band_gain(np.array([0.02, 0.0, 0.04]), np.array([0.05, 0.03, 0.0]))
    np.testing.assert_allclose(gain, [2.5, 1.0, 1.0])
    assert "no band-pass contrast in channel(s) [1, 2]" in caplog.text


def test_bandpass_init_sets_g_and_f_to_the_bandpass_maps():
    c = tiny_config("wespe_plus", color_init="bandpass")
    state, _ = train_step.create_train_state(c)
    pools = {**_pools(), "source_band_std": np.array([0.02, 0.03, 0.04]),
             "target_band_std": np.array([0.05, 0.03, 0.02])}
    new = train_step.init_global_color(state, c, pools)
    m, b = color_map.fitted_colour_map(pools, "bandpass")
    np.testing.assert_allclose(np.diag(m), [2.5, 1.0, 0.5], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(new.params["generator"]["color_matrix"][...]), m)
    np.testing.assert_array_equal(np.asarray(new.params["generator"]["color_bias"][...]), b)
    mi, _ = color_map.fitted_colour_map(pools, "bandpass", reverse=True)
    np.testing.assert_array_equal(np.asarray(new.params["inverse_generator"]["color_matrix"][...]), mi)
    assert train_step.colour_estimator(c) == "bandpass"
    assert train_step.colour_estimator(tiny_config("wespe_plus", color_init="identity")) == "moments"


def test_pools_from_the_scans_usable_files_equal_the_folders_and_skip_what_it_skipped(tmp_path, monkeypatch):
    """A training run passes the data scan's usable files: for a clean folder the same files in the same order,
    so the same pools; a file the scan skipped is never read."""
    from wespe.training import scan

    rng = np.random.default_rng(4)
    for i in range(5):
        _write(tmp_path / "src" / ("nested" if i % 2 else ""), f"s{i}", rng.integers(0, 128, (40, 44, 3), np.uint8))
        _write(tmp_path / "tgt", f"t{i}", rng.integers(128, 256, (36, 30, 3), np.uint8))
    scans = scan.scan_training_folders(tmp_path / "src", tmp_path / "tgt", 16, progress=False)
    usable = {side: [str(p) for p in scans[side].good] for side in ("source", "target")}
    from_folders = color_pool.build_color_pools(tmp_path / "src", tmp_path / "tgt", photos=3, pixels=2000, seed=7,
                                                band=True)
    from_files = color_pool.build_color_pools(usable["source"], usable["target"], photos=3, pixels=2000, seed=7,
                                              band=True)
    assert sorted(from_files) == sorted(from_folders)
    for key in from_folders:
        np.testing.assert_array_equal(from_files[key], from_folders[key])
    (tmp_path / "src" / "broken.png").write_bytes(b"skipped by the scan")
    read = []
    real = color_pool.read_image
    monkeypatch.setattr(color_pool, "read_image", lambda path, **kw: (read.append(path), real(path, **kw))[1])
    color_pool.build_color_pools(usable["source"], usable["target"], photos=10, pixels=2000, seed=7)
    assert read and tmp_path / "src" / "broken.png" not in {Path(p) for p in read}
