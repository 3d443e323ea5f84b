"""The source camera model and its fit (wespe/degradation.py), and the restoration term that trains G on it."""

import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import skimage.data
from PIL import Image

from tests.test_loop import folders  # noqa: F401 (folders: a fixture)
from tests.test_loop import tiny_config as loop_config
from tests.test_train_step import fixed_batch, tiny_config
from wespe import config as configs
from wespe import degradation as dg
from wespe import train_step
from wespe.training import loop


def _psnr(a, b):
    return 10 * np.log10(1.0 / np.mean(np.square(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("quality", [20, 45, 90])
def test_jpeg_matches_pillow_far_closer_than_jpeg_changes_the_photo(quality):
    """The simulated codec is not libjpeg's integer DCT, so not bit-exact: its output must be much nearer
    Pillow's decoded JPEG (> 40 dB) than either is to the photo (JPEG's own loss, 29-37 dB here)."""
    photo = skimage.data.astronaut()[100:228, 150:278]
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=quality)
    pillow = np.asarray(Image.open(buffer).convert("RGB")) / 255.0
    ours = np.asarray(dg.jpeg(jnp.asarray(photo[None] / 255.0, jnp.float32), jnp.array([float(quality)])))[0]
    loss = _psnr(pillow, photo / 255.0)
    assert loss < 38
    assert _psnr(ours, pillow) > 40
    assert abs(_psnr(ours, photo / 255.0) - loss) < 0.5  # the same amount of damage


def test_jpeg_keeps_odd_sizes_and_quality_zero_is_no_jpeg():
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 21, 35, 3)) / 255.0, jnp.float32)
    out = dg.jpeg(x, jnp.array([0.0, 50.0]))
    assert out.shape == x.shape
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(x[0]))
    assert not np.array_equal(np.asarray(out[1]), np.asarray(x[1]))
    values = np.asarray(out[1], np.float64) * 255  # 8-bit values (k / 255 in float32: within 2^-24 * 255 of k)
    np.testing.assert_allclose(values, np.round(values), atol=255 * 2.0**-23)


def test_quantization_tables_follow_libjpeg_scaling():
    luma, chroma = dg.quantization_tables(jnp.array([50.0, 10.0, 100.0]))
    np.testing.assert_array_equal(np.asarray(luma[0]), dg.LUMA_TABLE)  # quality 50: the standard's table
    np.testing.assert_array_equal(np.asarray(luma[1]), np.clip(np.floor((dg.LUMA_TABLE * 500 + 50) / 100), 1, 255))
    np.testing.assert_array_equal(np.asarray(chroma[2]), np.ones((8, 8)))  # quality 100: all ones


def test_gaussian_blur_equals_scipy_per_image():
    rng = np.random.default_rng(1)
    images = rng.random((3, 30, 26, 3))
    sigmas = np.array([0.0, 0.8, 2.3])
    out = np.asarray(dg.gaussian_blur(jnp.asarray(images, jnp.float32), jnp.asarray(sigmas)))
    radius = dg._BLUR_TAPS // 2
    np.testing.assert_array_equal(out[0], images[0].astype(np.float32))  # sigma 0: unchanged
    for i in (1, 2):
        reference = np.stack([scipy.ndimage.gaussian_filter(images[i][..., c], sigmas[i], mode="nearest",
                                                            truncate=radius / sigmas[i]) for c in range(3)], -1)
        # 19 taps, each product and sum within float32 rounding of values in [0, 1]: 19 * 2^-24 * 2 < 1e-5.
        np.testing.assert_allclose(out[i], reference, atol=1e-5)


def test_degrade_is_the_colour_map_alone_without_blur_noise_or_jpeg():
    rng = np.random.default_rng(2)
    clean = jnp.asarray(rng.random((2, 16, 16, 3)), jnp.float32)
    m, b = np.diag([0.6, 0.7, 0.5]).astype(np.float32), np.array([0.1, 0.05, 0.2], np.float32)
    zero = jnp.zeros(2)
    out = dg.degrade(clean, zero, zero, zero, jnp.asarray(m), jnp.asarray(b), jax.random.key(0))
    expected = np.round(np.clip(np.asarray(clean, np.float64) @ m.T + b, 0, 1) * 255)  # 8-bit levels
    levels = np.round(np.asarray(out, np.float64) * 255)
    assert np.max(np.abs(levels - expected)) <= 1  # a value within float32 rounding of a half may round either way
    assert np.mean(levels != expected) < 0.01


def _photo_crops(n, size, seed):
    rng = np.random.default_rng(seed)
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    crops = []
    for i in range(n):
        p = photos[i % len(photos)]
        y, x = rng.integers(0, p.shape[0] - size), rng.integers(0, p.shape[1] - size)
        crops.append(p[y:y + size, x:x + size])
    return np.stack(crops).astype(np.float32) / 255.0


@pytest.mark.optimized  # hundreds of candidate cameras: the optimised program runs them faster than it compiles
def test_fit_recovers_a_known_camera_from_other_crops_of_the_same_kind_of_photos():
    """The 'source' set is other crops of the same photos degraded by a known camera: the fit must land near it
    (the statistics are of different pixels on the two sides, as in real unpaired sets)."""
    m, b = np.diag([0.7, 0.65, 0.55]).astype(np.float32), np.array([0.1, 0.12, 0.15], np.float32)
    truth = (1.3, 0.03, 35.0)
    clean_source = _photo_crops(48, 48, seed=0)
    n = len(clean_source)
    source = np.asarray(dg.degrade(jnp.asarray(clean_source), jnp.full(n, truth[0]), jnp.full(n, truth[1]),
                                   jnp.full(n, truth[2]), jnp.asarray(m), jnp.asarray(b), jax.random.key(5)))
    target = _photo_crops(48, 48, seed=1)  # every fit below has crops of this shape: one compilation
    fitted, record = dg.fit(source, target, m, b, seed=0)
    assert abs(fitted.blur_sigma - truth[0]) <= 0.5, fitted
    assert truth[1] / 1.6 <= fitted.noise_sigma <= truth[1] * 1.6, fitted
    assert abs(fitted.jpeg_quality - truth[2]) <= 15, fitted
    assert record["distance"] < 0.2 * record["distance_undegraded"]
    # the record's statistics of the fit are those of the target crops degraded by it (the search's own numbers;
    # recomputed here in a program of its own: the same arithmetic, so equal up to float summation order, ~0)
    again = jax.jit(dg._degraded_statistics)(jnp.asarray(target), fitted.blur_sigma, fitted.noise_sigma,
                                             fitted.jpeg_quality, jnp.asarray(m), jnp.asarray(b),
                                             jax.random.normal(jax.random.key(0), target.shape, jnp.float32))
    assert dg.statistics_distance(record["fit_statistics"], np.asarray(again)) < 1e-6
    clean_fit, _ = dg.fit(_photo_crops(48, 48, seed=2), target, np.eye(3), np.zeros(3), seed=0)  # a clean source
    assert clean_fit.noise_sigma <= 0.01 and clean_fit.blur_sigma <= 0.7 and clean_fit.jpeg_quality in (0, 90), clean_fit
    fixed, _ = dg.fit(source, target, m, b, seed=0, fixed={"jpeg_quality": 0.0, "blur_sigma": 1.0})
    assert fixed.jpeg_quality == 0.0 and fixed.blur_sigma == 1.0


def test_degradation_config_ranges_and_mode():
    c = configs.wespe_plus()
    c.weights.restoration = 1.0
    configs.validate(c)  # fitted: None values are allowed
    for key, bad in (("degradation.noise_sigma", -0.1), ("degradation.jpeg_quality", 0.5),
                     ("degradation.jitter", 1.0), ("degradation.blur_sigma", 9.0)):
        bad_config = configs.wespe_plus()
        configs.set_key(bad_config, key, bad)
        with pytest.raises(configs.ConfigError, match=key.replace(".", r"\.")):
            configs.validate(bad_config)
    d = configs.dped_code()
    d.weights.restoration = 1.0
    with pytest.raises(configs.ConfigError, match="restoration"):
        configs.validate(d)


def test_restoration_term_is_the_l1_of_g_on_the_degraded_targets():
    """At the first step (G = its colour path, identity here) the term is mean |D(y) - y| with the step's own
    draws of D, and only the target side of the batch enters it."""
    c = tiny_config("wespe_plus", color_init="identity")
    c.weights.restoration = 1.0
    state, graphdefs = train_step.create_train_state(c)
    weights, pre = train_step.load_content_network(c)
    fit = dg.Degradation(1.0, 0.03, 40.0)
    with pytest.raises(ValueError, match="degradation"):
        train_step.make_train_step(c, graphdefs, weights, pre)
    step = train_step.make_train_step(c, graphdefs, weights, pre, degradation=fit)
    batch = fixed_batch(c)
    rng = jax.random.key(3)
    _, metrics = step(state, batch, rng)
    degraded = dg.degrade_batch(batch["target"], fit, jax.random.fold_in(rng, train_step.RESTORATION_STREAM),
                                c.degradation.jitter)
    generator = train_step.generator_from_state(train_step.create_train_state(c)[0], graphdefs, use_ema=False)
    expected = jnp.mean(jnp.abs(generator(degraded) - batch["target"]))
    np.testing.assert_allclose(float(metrics["loss/restoration"]), float(expected), rtol=1e-5)
    other = {**batch, "source": 1.0 - batch["source"]}
    _, again = step(train_step.create_train_state(c)[0], other, rng)
    assert float(again["loss/restoration"]) == float(metrics["loss/restoration"])


def test_training_fits_saves_and_reuses_the_degradation(folders, tmp_path):
    c = loop_config(folders, num_steps=2, checkpoint_every=2, **{"weights.restoration": 1.0,
                                                                  "degradation.fit_crops": 8})
    loop.run_training(c, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / dg.FIT_FILE).read_text())
    assert set(saved) == {"degradation", "fit"} and saved["fit"]["candidates"] > 100
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(line["loss/restoration"]) for line in lines)
    # A resumed (longer) run trains on the saved camera model, not a new fit.
    marker = dict(saved, degradation={**saved["degradation"], "noise_sigma": 0.0123})
    (tmp_path / "run" / dg.FIT_FILE).write_text(json.dumps(marker))
    assert loop.fitted_degradation(c, tmp_path / "run", c.data.source, c.data.target, None, False
                                   ).noise_sigma == 0.0123
