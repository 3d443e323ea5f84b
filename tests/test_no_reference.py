"""wespe.evaluation.no_reference: the NIQE-style features against a plain float64 reimplementation written here (loops,
scipy.ndimage, MATLAB's imresize algorithm), the GGD / AGGD fits on samples of known parameters, the distances'
order on made degradations, determinism and stability, and launch/evaluate.py --target end to end.

Photos: the four colour photos shipped inside scikit-image (astronaut, coffee, chelsea, rocket), each cut into a
left half (the "target camera": 192 px crops every 64 px, so the model has 136 patches (61 sharp ones), more
than its 36 features) and a right half (held-out test photos, 300-512 px a side). About 5 s in all.
"""

import io
import json
import math

import numpy as np
import pytest
import scipy.ndimage
import scipy.special
import scipy.stats
from PIL import Image
from test_cli_errors import run_cli  # forked command lines

from wespe.errors import UserError
from wespe.evaluation import no_reference as nr

# ---------------------------------------------------------------------------------- a plain reimplementation

def ref_mscn(gray):
    """fspecial('gaussian', 7, 7/6) written out, imfilter(..., 'replicate') as scipy's 2-D correlate."""
    window = np.array([[math.exp(-(x * x + y * y) / (2 * (7 / 6) ** 2)) for x in range(-3, 4)]
                       for y in range(-3, 4)])
    window /= window.sum()
    mu = scipy.ndimage.correlate(gray, window, mode="nearest")
    sigma = np.sqrt(np.abs(scipy.ndimage.correlate(gray * gray, window, mode="nearest") - mu * mu))
    return (gray - mu) / (sigma + 1), sigma


def _cubic(x):
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax ** 3 - 2.5 * ax ** 2 + 1
    if ax <= 2:
        return -0.5 * ax ** 3 + 2.5 * ax ** 2 - 4 * ax + 2
    return 0.0


def _imresize_half_matrix(n):
    """MATLAB imresize's contributions for scale 0.5 (bicubic, antialiased kernel, mirrored indices), 1-based."""
    scale, width = 0.5, 8.0
    out = np.zeros((n // 2, n))
    for i in range(1, n // 2 + 1):
        u = i / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        for j in range(left, left + int(math.ceil(width)) + 2):
            k = j
            while k < 1 or k > n:  # aux = [1:n, n:-1:1]
                k = 1 - k if k < 1 else 2 * n + 1 - k
            out[i - 1, k - 1] += scale * _cubic(scale * (u - j))
        out[i - 1] /= out[i - 1].sum()
    return out


def ref_halve(gray):
    return _imresize_half_matrix(gray.shape[0]) @ gray @ _imresize_half_matrix(gray.shape[1]).T


GAM = np.arange(0.2, 10.0005, 0.001)


def ref_ggd(vec):
    """estimateggdparam.m, returning the variance."""
    r_gam = scipy.special.gamma(1 / GAM) * scipy.special.gamma(3 / GAM) / scipy.special.gamma(2 / GAM) ** 2
    sigma_sq = np.mean(vec ** 2)
    rho = sigma_sq / np.mean(np.abs(vec)) ** 2
    return GAM[np.argmin(np.abs(rho - r_gam))], sigma_sq


def ref_aggd(vec):
    """estimateaggdparam.m; features alpha, mean, left and right variances (BRISQUE's)."""
    g = scipy.special.gamma
    r_gam = g(2 / GAM) ** 2 / (g(1 / GAM) * g(3 / GAM))
    leftstd, rightstd = np.sqrt(np.mean(vec[vec < 0] ** 2)), np.sqrt(np.mean(vec[vec > 0] ** 2))
    gammahat = leftstd / rightstd
    rhat = np.mean(np.abs(vec)) ** 2 / np.mean(vec ** 2)
    rhatnorm = rhat * (gammahat ** 3 + 1) * (gammahat + 1) / (gammahat ** 2 + 1) ** 2
    alpha = GAM[np.argmin((r_gam - rhatnorm) ** 2)]
    const = math.sqrt(g(1 / alpha) / g(3 / alpha))
    mean = (rightstd - leftstd) * const * g(2 / alpha) / g(1 / alpha)
    return alpha, mean, leftstd ** 2, rightstd ** 2


def ref_features(image, patch=96):
    gray = image.astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140])
    gray = gray[:gray.shape[0] // patch * patch, :gray.shape[1] // patch * patch]
    rows = []
    scales = [(ref_mscn(gray)[0], patch), (ref_mscn(ref_halve(gray))[0], patch // 2)]
    for r in range(gray.shape[0] // patch):
        for c in range(gray.shape[1] // patch):
            row = []
            for m, s in scales:
                p = m[r * s:(r + 1) * s, c * s:(c + 1) * s]
                row += ref_ggd(p.ravel())
                for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
                    pairs = [p[y, x] * p[y + dy, x + dx] for y in range(s) for x in range(s)
                             if y + dy < s and 0 <= x + dx < s]
                    row += ref_aggd(np.array(pairs))
            rows.append(row)
    return np.array(rows)


def made_image(seed=0, shape=(192, 288)):
    """Sinusoids, a step edge and noise: every feature is away from its table's ends."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:shape[0], :shape[1]]
    base = 120 + 50 * np.sin(x / 7.0) * np.cos(y / 11.0) + 40 * (x > shape[1] * 0.6) + rng.normal(0, 6, shape)
    return np.clip(np.stack([base, base * 0.9 + 10, base * 0.8 + 20], -1), 0, 255).round().astype(np.uint8)


# ------------------------------------------------------------------------------------------------- features

def test_mscn_and_halving_match_the_reference():
    gray = nr.luma(made_image())
    coefficients, sigma = nr.mscn(gray)
    want, want_sigma = ref_mscn(gray)
    np.testing.assert_allclose(coefficients, want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(sigma, want_sigma, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(nr.halve(gray), ref_halve(gray), rtol=0, atol=1e-9)
    # and MATLAB's antialiased bicubic is Pillow's in the interior (Pillow's border renormalises instead)
    pil = np.asarray(Image.fromarray(gray.astype(np.float32), mode="F").resize(
        (gray.shape[1] // 2, gray.shape[0] // 2), Image.Resampling.BICUBIC), np.float64)
    np.testing.assert_allclose(nr.halve(gray)[4:-4, 4:-4], pil[4:-4, 4:-4], atol=2e-3)


@pytest.mark.parametrize("which", ["made", "astronaut"])
def test_the_36_features_match_the_reference(which):
    import skimage.data
    image = made_image() if which == "made" else skimage.data.astronaut()[100:292, 150:342]
    features, sharpness = nr.patch_features(image)
    want = ref_features(image)
    assert features.shape == want.shape == (len(want), 36) and len(nr.FEATURE_NAMES) == 36
    np.testing.assert_allclose(features, want, rtol=1e-8, atol=1e-12)
    sigma = ref_mscn(nr.luma(image))[1]  # both images are whole multiples of 96 px: no crop
    assert sharpness[0] == pytest.approx(sigma[:96, :96].mean(), rel=1e-10)
    assert sharpness[-1] == pytest.approx(sigma[-96:, -96:].mean(), rel=1e-10)


def _ggd_tolerance(x, alpha):
    """5 standard errors of the fitted shape: the delta method on rho = E[x^2] / E[|x|]^2 (its standard error
    from the sample's own moments and size), divided by the slope of the table at alpha, plus one grid step."""
    m2, m1 = np.mean(x * x), np.mean(np.abs(x))
    grad = np.array([1 / m1 ** 2, -2 * m2 / m1 ** 3])
    se_rho = math.sqrt(grad @ np.cov(np.stack([x * x, np.abs(x)])) @ grad / len(x))
    g = scipy.special.gammaln
    slope = abs(np.gradient(np.exp(g(1 / GAM) + g(3 / GAM) - 2 * g(2 / GAM)), GAM)[np.argmin(np.abs(GAM - alpha))])
    return 5 * se_rho / slope + 0.001


@pytest.mark.parametrize("alpha", [0.8, 2.0])
def test_ggd_fit_recovers_the_shape(alpha):
    x = scipy.stats.gennorm.rvs(alpha, scale=0.7, size=200_000, random_state=np.random.default_rng(1))
    fitted, variance = nr.fit_ggd(x)
    assert abs(fitted - alpha) < _ggd_tolerance(x, alpha)
    true_variance = 0.49 * math.gamma(3 / alpha) / math.gamma(1 / alpha)
    assert variance == pytest.approx(true_variance, abs=5 * np.std(x * x) / math.sqrt(len(x)))
    assert np.isnan(nr.fit_ggd(np.zeros(100))).all()  # no distribution to fit


def test_aggd_fit_recovers_an_asymmetric_case():
    alpha, left_sd, right_sd, n = 1.3, 0.5, 1.5, 200_000
    g = math.gamma
    beta_l, beta_r = (s * math.sqrt(g(1 / alpha) / g(3 / alpha)) for s in (left_sd, right_sd))
    rng = np.random.default_rng(2)
    magnitude = np.abs(scipy.stats.gennorm.rvs(alpha, size=n, random_state=rng))
    x = np.where(rng.random(n) < beta_l / (beta_l + beta_r), -beta_l * magnitude, beta_r * magnitude)
    fitted = np.array(nr.fit_aggd(x))
    # tolerance from the data: 5 standard errors, estimated from the spread of the fit over 8 disjoint eighths
    parts = np.array([nr.fit_aggd(part) for part in x.reshape(8, -1)])
    tolerance = 5 * parts.std(axis=0, ddof=1) / math.sqrt(8) + np.array([0.001, 0, 0, 0])
    truth = np.array([alpha, (beta_r - beta_l) * g(2 / alpha) / g(1 / alpha), left_sd ** 2, right_sd ** 2])
    assert (np.abs(fitted - truth) < tolerance).all(), (fitted, truth, tolerance)
    one_sided = nr.fit_aggd(np.abs(x))  # no negative values: a left variance of 0, still finite
    assert np.isfinite(one_sided).all() and one_sided[2] == 0


def test_mvg_distance_and_sliced_wasserstein_by_hand():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(50, 36))
    mean, cov = a.mean(0), np.cov(a, rowvar=False)
    assert nr.mvg_distance(mean, cov, mean, cov) == 0
    d = np.ones(36)
    want = math.sqrt(d @ np.linalg.pinv(cov) @ d)  # (cov + cov) / 2 = cov
    assert nr.mvg_distance(mean + d, cov, mean, cov) == pytest.approx(want, rel=1e-8)
    # W2 of 3 against 2 points along x: both expanded to 6 equally weighted points
    p, q = np.array([[0.1, 0, 0], [0.5, 0, 0], [0.9, 0, 0]]), np.array([[0.2, 0, 0], [0.3, 0, 0]])
    w2 = math.sqrt(np.mean((np.sort(np.repeat(p[:, 0], 2)) - np.sort(np.repeat(q[:, 0], 3))) ** 2))
    assert nr.sliced_wasserstein(p, q, np.array([[1.0, 0, 0]])) == pytest.approx(w2, rel=1e-12)


def test_flat_and_small_photos():
    image = made_image(shape=(192, 384))
    image[:, :200] = 128  # two flat patches (and a third one flat at half scale)
    features, _ = nr.patch_features(image)
    assert np.isnan(features[0]).all() and np.isfinite(features[3]).all()
    stats = nr.SetStats().add_all({"half_flat": image, "flat": np.full((200, 200, 3), 77, np.uint8),
                                   "tiny": made_image(shape=(80, 200)), "sliver": np.zeros((2, 50, 3), np.uint8)})
    reasons = {s["name"]: s["reason"] for s in stats.skipped}
    assert "every 96x96 patch is flat" in reasons["flat"] and "80x200 is smaller" in reasons["tiny"]
    assert "not measured" in reasons["sliver"] and "half_flat" not in reasons
    assert stats.num_images == 3 and list(stats.features) == ["half_flat"]
    model = nr.fit_target_model([image, made_image(1, (288, 384)), made_image(2, (192, 192))])
    out = stats.report(model)
    assert all(v is None or np.isfinite(v) for v in out.values() if isinstance(v, float)), out
    # a target without a patch with detail: no NIQE part, the rest compared all the same
    thumbnails = nr.fit_target_model([np.full((200, 200, 3), 9, np.uint8), made_image(shape=(64, 64))])
    assert thumbnails.mean is None and "no NIQE numbers" in thumbnails.notes[0]
    out = stats.report(thumbnails)
    assert out["niqe_set"] is None and out["target_niqe_set"] is None and out["color_distance"] > 0
    assert "no NIQE numbers" in nr.markdown({"target": thumbnails.summary(), "outputs": out})
    with pytest.raises(UserError, match="no photos"):
        nr.fit_target_model([])


# ------------------------------------------------------------------------------------------- photo sets

def _degrade(kind, x, rng):
    if kind == "noise":
        return np.clip(x + rng.normal(0, 8, x.shape), 0, 255).round().astype(np.uint8)
    if kind == "blur":
        return np.clip(scipy.ndimage.gaussian_filter(x.astype(float), (1.5, 1.5, 0)), 0, 255).round().astype(np.uint8)
    if kind in ("jpeg", "jpeg95"):
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, "JPEG", quality=10 if kind == "jpeg" else 95)
        return np.asarray(Image.open(buf).convert("RGB"))
    gain = {"cast": 1.1, "strong_cast": 1.25}[kind]
    return np.clip(x * np.array([gain, 1.0, 1 / gain]), 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def photos():
    import skimage.data
    full = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    left = [p[:, :p.shape[1] // 2] for p in full]
    target = [a[i:i + 192, j:j + 192] for a in left for i in range(0, a.shape[0] - 191, 64)
              for j in range(0, a.shape[1] - 191, 64)]
    model = nr.fit_target_model(target)
    rng = np.random.default_rng(0)
    right = [p[:, p.shape[1] // 2:] for p in full]
    sets = {"clean": right, **{k: [_degrade(k, x, rng) for x in right]
                               for k in ("noise", "blur", "jpeg", "cast", "strong_cast")}}
    return {"model": model, "target": target, "left": left, "reports": {k: nr.report(v, model)
                                                                        for k, v in sets.items()}}


def test_target_model_and_its_own_distance(photos):
    model = photos["model"]  # the default: every usable patch of the target photos
    assert model.num_images == len(photos["target"]) == 34 and model.num_patches == 136 and not model.notes
    assert model.mean.shape == (36,) and model.cov.shape == (36, 36) and model.patches == "all"
    own = nr.report(photos["target"], model)  # the target folder scored as any set: exactly 0
    assert own["niqe_set"] == pytest.approx(0, abs=1e-6) == model.niqe_set and own["color_distance"] == 0
    assert own["noise_log2_ratio"] == 0 and own["sharpness_log2_ratio"] == 0
    assert 0 < own["niqe_per_image_mean"] == pytest.approx(model.niqe_per_image_mean, rel=1e-9)  # one photo != folder
    assert "34 target photos, 136 usable patches" in model.describe()
    # the NIQE paper's pristine selection: only each photo's patches sharper than 0.75 x its sharpest
    sharp = nr.fit_target_model(photos["target"], patches="sharp")
    assert sharp.num_patches == 61 and sharp.patches == "sharp" and "61 sharp patches" in sharp.describe()
    stats = nr.SetStats(patches="sharp").add_all(photos["target"])
    assert stats.report(sharp)["niqe_set"] == pytest.approx(0, abs=1e-6)  # the model's selection on both sides: 0
    stats.patches = "all"  # all patches, as a test set is scored (report's default): the sharp model's own floor
    floor = stats.report(sharp)
    assert floor["niqe_set"] == pytest.approx(sharp.niqe_set, rel=1e-9) == floor["target_niqe_set"]
    assert sharp.niqe_set > 0.5  # the target's blurred and plain patches are not in a model of the sharp ones
    with pytest.raises(ValueError, match="patches must be"):
        nr.fit_target_model(photos["target"], patches="in_focus")


def test_distances_order_clean_and_degraded(photos):
    r = photos["reports"]
    for kind in ("noise", "blur", "jpeg"):  # held-out clean photos are nearer the clean target than degraded ones
        assert r["clean"]["niqe_set"] < 0.5 * r[kind]["niqe_set"], kind
        assert r["clean"]["niqe_per_image_mean"] < r[kind]["niqe_per_image_mean"], kind
    # noise: above the target for noisy photos; about the target's for clean photos of its own scenes (the
    # held-out halves show other scenes, which Immerkaer's estimate partly reads as noise: within half an octave)
    assert r["noise"]["noise_log2_ratio"] > 0.5 and r["noise"]["noise_log2_ratio"] > r["clean"]["noise_log2_ratio"] + 1
    assert abs(r["clean"]["noise_log2_ratio"]) < 0.6
    left = nr.report(photos["left"], photos["model"])
    assert abs(left["noise_log2_ratio"]) < 0.1 and abs(left["sharpness_log2_ratio"]) < 0.1
    assert r["blur"]["sharpness_log2_ratio"] < r["clean"]["sharpness_log2_ratio"] - 1
    # colour: a cast moves the colours away from the target's, a stronger one further; NIQE (luma) hardly moves
    assert r["clean"]["color_distance"] < r["cast"]["color_distance"] < r["strong_cast"]["color_distance"]
    assert r["cast"]["niqe_set"] == pytest.approx(r["clean"]["niqe_set"], rel=0.1)


def test_deterministic_and_stable_under_resize_and_jpeg(photos):
    model, clean = photos["model"], photos["reports"]["clean"]
    import skimage.data
    right = [p[:, p.shape[1] // 2:] for p in (skimage.data.astronaut(), skimage.data.coffee(),
                                               skimage.data.chelsea(), skimage.data.rocket())]
    assert nr.report(right, model) == clean  # every number, twice
    smaller = [np.asarray(Image.fromarray(x).resize((round(x.shape[1] * 0.9), round(x.shape[0] * 0.9)),
                                                    Image.Resampling.LANCZOS)) for x in right]
    degraded = min(photos["reports"][k]["niqe_set"] for k in ("noise", "blur", "jpeg"))

    def within(r, colour, octaves_sharpness, octaves_noise, niqe_per_image, niqe_set):
        assert r["color_distance"] == pytest.approx(clean["color_distance"], rel=colour)
        assert abs(r["sharpness_log2_ratio"] - clean["sharpness_log2_ratio"]) < octaves_sharpness
        assert abs(r["noise_log2_ratio"] - clean["noise_log2_ratio"]) < octaves_noise
        assert r["niqe_per_image_mean"] == pytest.approx(clean["niqe_per_image_mean"], rel=niqe_per_image)
        assert r["niqe_set"] == pytest.approx(clean["niqe_set"], rel=niqe_set)
        assert r["niqe_set"] < degraded  # and still nearer the target than any degraded set

    # Stated tolerances for a 0.9x resize (Lanczos): colour 5 %, sharpness 0.1 and noise 0.3 octaves (resampling
    # averages noise away), per-photo NIQE 15 %. The set-level NIQE moves most (60 %): the 96 px grid then
    # covers other content (30 patches instead of 40).
    within(nr.report(smaller, model), 0.05, 0.1, 0.3, 0.15, 0.6)
    # Re-saved as JPEG quality 95 (what sharing a photo does): colour 2 %, noise and sharpness 0.1 octave,
    # per-photo NIQE 10 %, set NIQE 25 % (measured 0.2 %, 0.01, 0.01, 1 %, 10 %).
    within(nr.report([_degrade("jpeg95", x, None) for x in right], model), 0.02, 0.1, 0.1, 0.1, 0.25)


# ------------------------------------------------------------------------------- launch/evaluate.py --target

def test_evaluate_cli_target(tmp_path):
    import skimage.data
    photo = skimage.data.coffee()
    folders = {k: tmp_path / k for k in ("target", "source", "outputs", "empty")}
    for folder in folders.values():
        folder.mkdir()
    for i in range(4):
        Image.fromarray(photo[40 * i:40 * i + 192, 20 + 60 * i:212 + 60 * i]).save(folders["target"] / f"t{i}.png")
    for i in range(3):
        crop = photo[200:360, 100 * i:100 * i + 160]
        Image.fromarray(crop).save(folders["source"] / f"{i}.png")
        Image.fromarray(_degrade("noise", crop, np.random.default_rng(i))).save(folders["outputs"] / f"{i}.png")
    out = tmp_path / "ev"
    code, stdout, stderr = run_cli("evaluate", f"--outputs={folders['outputs']}", f"--source={folders['source']}",
                                   f"--target={folders['target']}", f"--output_dir={out}")
    assert code == 0, stderr[-3000:]
    section = json.loads((out / "results.json").read_text())["no_reference"]
    assert section["target"]["num_images"] == 4 and set(section["protocol"]) >= {"niqe", "color_distance"}
    outputs, inputs = section["outputs"], section["inputs"]
    assert outputs["num_images"] == inputs["num_images"] == 3
    assert outputs["noise_log2_ratio"] > inputs["noise_log2_ratio"] + 0.5  # the "enhancer" added noise
    assert outputs["niqe_set"] > inputs["niqe_set"]

    def read(folder):  # as arrays: a folder would import wespe.evaluation.evaluate (JAX) into this process
        return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.iterdir())]

    expected = nr.report(read(folders["outputs"]), nr.fit_target_model(read(folders["target"])))
    assert outputs["niqe_set"] == pytest.approx(expected["niqe_set"], rel=1e-9)
    assert outputs["color_distance"] == pytest.approx(expected["color_distance"], rel=1e-9)
    assert "Likeness to the target camera" in (out / "results.md").read_text()
    # the photos resampled (likeness_resampling): the noisy outputs are the farther in (nearly) every resample
    resampled = section["resampled"]
    assert set(resampled["sets"]) == {"outputs", "inputs"} and resampled["sets"]["outputs"]["resamples"] == 200
    assert resampled["p_outputs_closer"] <= 0.05 and "than their inputs in" in (out / "results.md").read_text()
    assert resampled["sets"]["inputs"]["median"] < resampled["sets"]["outputs"]["median"]
    assert "photos resampled: median (95% range)" in (out / "results.md").read_text()

    # bad --target: one error line, exit 2, before the (missing) model is looked at
    for target, message in ((tmp_path / "no_such", "does not exist"), (folders["empty"], "no photos")):
        code, _, stderr = run_cli("evaluate", "--checkpoint=no_such.npz", f"--source={folders['source']}",
                                  f"--target={target}", f"--output_dir={tmp_path / 'ev2'}")
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: --target={target}"), stderr
        assert message in lines[0] and "no_such.npz" not in stderr
    assert not (tmp_path / "ev2").exists()
