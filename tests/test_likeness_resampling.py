"""wespe.evaluation.likeness_resampling: pooled patch moments against np.cov / a float64 weighted covariance written
here, the Bayesian bootstrap's weights (fixed by photo name, so sets of the same photos are paired), what pairing
buys, the flat and empty cases, and the npz round trip.

Photos: the left halves of four scikit-image photos are the target camera; their right halves the test photos.
About 3 s."""

import json

import numpy as np
import pytest

from wespe.evaluation import likeness_resampling as lr
from wespe.evaluation import no_reference as nr


@pytest.fixture(scope="module")
def halves():
    import skimage.data
    full = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    left = {f"t{i}": p[:, :p.shape[1] // 2] for i, p in enumerate(full)}
    right = {f"p{i}": p[:, p.shape[1] // 2:] for i, p in enumerate(full)}
    return {"model": nr.fit_target_model(left), "right": right}


def _noisy(images, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return {k: np.clip(x + rng.normal(0, sigma, x.shape), 0, 255).round().astype(np.uint8) for k, x in images.items()}


def test_pooled_moments_are_the_stacked_patches_moments(halves):
    model = halves["model"]
    mean, cov = model.moments.pooled()  # weights 1: the model itself
    np.testing.assert_allclose(mean, model.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cov, model.cov, rtol=1e-10, atol=1e-12 * np.abs(model.cov).max())
    features = nr.SetStats().add_all(halves["right"]).selected_features()
    moments = lr.PhotoMoments.of(features)
    assert moments.names == ("p0", "p1", "p2", "p3") and moments.means.shape == (4, 36)
    # integer weights: the patches repeated (np.cov of the stack), a weight 0 leaves the photo out
    counts = [2, 0, 1, 3]
    stacked = np.concatenate([np.repeat(features[n], k, axis=0) for n, k in zip(moments.names, counts)])
    mean, cov = moments.pooled(counts)
    np.testing.assert_allclose(mean, stacked.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(stacked, rowvar=False), rtol=1e-10, atol=1e-12 * np.abs(cov).max())
    # real weights: every patch of photo i weighted w_i, scatter over (total weight - 1), written out per patch
    w = np.array([0.3, 1.7, 0.05, 2.2])
    x = np.concatenate([features[n] for n in moments.names])
    pw = np.concatenate([np.full(len(features[n]), wi) for n, wi in zip(moments.names, w)])
    ref_mean = (pw[:, None] * x).sum(0) / pw.sum()
    ref_cov = sum(wi * np.outer(xi - ref_mean, xi - ref_mean) for wi, xi in zip(pw, x)) / (pw.sum() - 1)
    mean, cov = moments.pooled(w)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10, atol=1e-12 * np.abs(ref_cov).max())
    assert moments.pooled(np.zeros(4)) is None
    one = lr.PhotoMoments.of({"a": features["p0"][:1]})  # a single patch: covariance 0, as the model's
    assert not one.pooled()[1].any()


def test_weights_follow_the_photo_name_not_its_position():
    a = lr._weights(("x", "y"), 0, lr.SET_SIDE, 50)
    b = lr._weights(("w", "x", "y", "z"), 0, lr.SET_SIDE, 50)
    assert a.shape == (50, 2) and (a > 0).all()
    np.testing.assert_array_equal(a, b[:, 1:3])  # the same photo, the same weight, in any set
    assert not np.array_equal(a, lr._weights(("x", "y"), 0, lr.TARGET_SIDE, 50))  # the target: its own draws
    assert not np.array_equal(a, lr._weights(("x", "y"), 1, lr.SET_SIDE, 50))  # another seed
    big = lr._weights(tuple(f"photo{i}" for i in range(200)), 0, lr.SET_SIDE, 200)
    assert big.mean() == pytest.approx(1.0, abs=0.02) and big.std() == pytest.approx(1.0, abs=0.03)  # Exp(1)


def test_pairing_makes_a_small_difference_visible(halves):
    model, right = halves["model"], halves["right"]
    noisy = _noisy(right, 1.0)
    sets = {"clean": nr.SetStats().add_all(right), "noisy": nr.SetStats().add_all(noisy),
            "noisy_renamed": nr.SetStats().add_all({k.replace("p", "q"): x for k, x in noisy.items()})}
    assert sets["clean"].report(model)["niqe_set"] < sets["noisy"].report(model)["niqe_set"]
    d = lr.resample_distances({k: s.moments() for k, s in sets.items()}, model.moments)
    assert all(v.shape == (lr.RESAMPLES,) and np.isfinite(v).all() for v in d.values())
    paired, unpaired = lr.p_closer(d["clean"], d["noisy"]), lr.p_closer(d["clean"], d["noisy_renamed"])
    # the same photos weighted alike: the noise shows in nearly every resample (measured 0.965); the same sets
    # under other names are weighted independently, and how the photos differ drowns part of it (0.83)
    assert paired >= 0.95 and unpaired <= paired - 0.1
    assert lr.p_closer(d["noisy"], d["noisy"]) == 0.5  # ties count half
    again = lr.resample_distances({k: s.moments() for k, s in sets.items()}, model.moments)
    assert all(np.array_equal(d[k], again[k]) for k in d)  # deterministic
    stronger = lr.resample_distances({"clean": sets["clean"].moments(),
                                      "noisy": nr.SetStats().add_all(_noisy(right, 4.0)).moments()}, model.moments)
    assert lr.p_closer(stronger["clean"], stronger["noisy"]) == 1.0


def test_range_summary_flat_and_empty_sets(halves):
    model = halves["model"]
    right = nr.SetStats().add_all(halves["right"])
    flat = nr.SetStats().add_all([np.full((192, 192, 3), 128, np.uint8)] * 2)
    d = lr.resample_distances({"right": right.moments(), "none": lr.PhotoMoments.of({})}, model.moments,
                              flat=["grey"])
    assert np.isnan(d["none"]).all() and np.isinf(d["grey"]).all()
    s = lr.summary(d["right"])
    assert s["low"] <= s["median"] <= s["high"] and s["resamples"] == lr.RESAMPLES and not s["all_flat"]
    # the full-set distance (1.99) lies in the lower part of the range: perturbing photos lengthens a distance
    own = right.report(model)["niqe_set"]
    assert s["low"] <= own * 1.05 and own < s["median"]
    assert lr.summary(d["grey"]) == {"low": None, "high": None, "median": None, "all_flat": True,
                                     "resamples": lr.RESAMPLES}
    assert lr.summary(d["none"])["low"] is None and lr.span(lr.summary(d["none"])) == "-"
    assert lr.span(lr.summary(d["grey"])) == "flat" and lr.span(s).count("(") == 1
    assert lr.p_closer(d["right"], d["grey"]) == 1.0 and lr.p_closer(d["right"], d["none"]) is None
    # Likeness's section: the outputs (flat) against their inputs, JSON without NaN or Infinity
    likeness = nr.Likeness(model)
    likeness.outputs, likeness.inputs = flat, nr.SetStats().add_all([halves["right"]["p0"]] * 2)
    section = likeness.section()["resampled"]
    json.dumps(section, allow_nan=False)
    assert section["sets"]["outputs"]["all_flat"] and section["p_outputs_closer"] == 0.0
    assert "closer to the target than their inputs in 0%" in lr.describe(section)


def test_moments_round_trip(tmp_path, halves):
    moments = {"outputs": halves["model"].moments, "inputs": lr.PhotoMoments.of({})}
    lr.save_moments(tmp_path / "m.npz", moments)
    back = lr.load_moments(tmp_path / "m.npz")
    assert set(back) == {"outputs", "inputs"} and back["outputs"].names == moments["outputs"].names
    for field in ("counts", "means", "scatters"):
        np.testing.assert_array_equal(getattr(back["outputs"], field), getattr(moments["outputs"], field))
    assert len(back["inputs"]) == 0
