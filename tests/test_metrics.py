"""wespe.metrics against scikit-image (PSNR, SSIM) and a float64 NumPy port of msssim.py (MS-SSIM)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage, signal
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from wespe import metrics
from wespe.metrics import DPED_MS_SSIM_WEIGHTS, MetricShapeError

CROP = (192, 240)  # >= 176 so all 5 MS-SSIM scales are >= 11 pixels; one shape -> one compilation


# ----------------------------------------------------------------------------------------------------------
# test data: real photos with degradations of several strengths


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf), dtype=np.float64) / 255.0


def _degradations(img: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for sigma in (0.02, 0.1):
        out.append(np.clip(img + rng.normal(0.0, sigma, img.shape), 0.0, 1.0))
    for sigma in (0.8, 2.5):
        out.append(ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0)))
    for quality in (10, 60):
        out.append(_jpeg(img, quality))
    out.append(np.clip(img * 0.8 + 0.15, 0.0, 1.0))  # global contrast/brightness change
    return out


@pytest.fixture(scope="module")
def photo_pairs() -> tuple[np.ndarray, np.ndarray]:
    """(references, degraded), float64 in [0, 1], shape (21, 192, 240, 3)."""
    rng = np.random.default_rng(0)
    h, w = CROP
    refs, degs = [], []
    for name, (y, x) in (("astronaut", (40, 150)), ("coffee", (100, 200)), ("chelsea", (60, 120))):
        img = getattr(data, name)()[y : y + h, x : x + w].astype(np.float64) / 255.0
        for deg in _degradations(img, rng):
            refs.append(img)
            degs.append(deg)
    return np.stack(refs), np.stack(degs)


# ----------------------------------------------------------------------------------------------------------
# reference implementations


def _luma(x: np.ndarray) -> np.ndarray:
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def _skimage_ssim(a: np.ndarray, b: np.ndarray, channel: str = "rgb", win: int = 11) -> float:
    sigma = 1.5 * win / 11
    kw = dict(gaussian_weights=True, sigma=sigma, use_sample_covariance=False, data_range=1.0)
    if win != 11:  # shrunken window: radius (win-1)//2 via truncate, and the matching crop via win_size
        kw.update(win_size=win, truncate=((win - 1) // 2) / sigma)
    if channel == "luma":
        return structural_similarity(_luma(a), _luma(b), **kw)
    return structural_similarity(a, b, channel_axis=-1, **kw)


def _fspecial_gauss(size: int, sigma: float) -> np.ndarray:
    """msssim.py's _FSpecialGauss."""
    radius = size // 2
    offset = 0.0
    start, stop = -radius, radius + 1
    if size % 2 == 0:
        offset = 0.5
        stop -= 1
    x, y = np.mgrid[offset + start : stop, offset + start : stop]
    assert len(x) == size
    g = np.exp(-((x**2 + y**2) / (2.0 * sigma**2)))
    return g / g.sum()


def _ssim_for_multiscale(img1, img2, max_val=255, filter_size=11, filter_sigma=1.5, k1=0.01, k2=0.03):
    """msssim.py's _SSIMForMultiScale (float64, 'valid' fftconvolve)."""
    _, height, width, _ = img1.shape
    size = min(filter_size, height, width)
    sigma = size * filter_sigma / filter_size
    window = np.reshape(_fspecial_gauss(size, sigma), (1, size, size, 1))
    mu1 = signal.fftconvolve(img1, window, mode="valid")
    mu2 = signal.fftconvolve(img2, window, mode="valid")
    sigma11 = signal.fftconvolve(img1 * img1, window, mode="valid")
    sigma22 = signal.fftconvolve(img2 * img2, window, mode="valid")
    sigma12 = signal.fftconvolve(img1 * img2, window, mode="valid")
    mu11, mu22, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma11 -= mu11
    sigma22 -= mu22
    sigma12 -= mu12
    c1 = (k1 * max_val) ** 2
    c2 = (k2 * max_val) ** 2
    v1 = 2.0 * sigma12 + c2
    v2 = sigma11 + sigma22 + c2
    ssim = np.mean(((2.0 * mu12 + c1) * v1) / ((mu11 + mu22 + c1) * v2))
    cs = np.mean(v1 / v2)
    return ssim, cs


def _multiscale_ssim_numpy(img1, img2, weights=DPED_MS_SSIM_WEIGHTS, max_val=255):
    """msssim.py's MultiScaleSSIM on one (1, H, W, C) pair (as the DPED code calls it)."""
    weights = np.array(weights)
    levels = weights.size
    downsample_filter = np.ones((1, 2, 2, 1)) / 4.0
    im1, im2 = img1.astype(np.float64), img2.astype(np.float64)
    mssim, mcs = [], []
    for _ in range(levels):
        s, cs = _ssim_for_multiscale(im1, im2, max_val=max_val)
        mssim.append(s)
        mcs.append(cs)
        filtered = [ndimage.convolve(im, downsample_filter, mode="reflect") for im in (im1, im2)]
        im1, im2 = (x[:, ::2, ::2, :] for x in filtered)
    mssim, mcs = np.array(mssim), np.array(mcs)
    return np.prod(mcs[: levels - 1] ** weights[: levels - 1]) * (mssim[levels - 1] ** weights[levels - 1])


# ----------------------------------------------------------------------------------------------------------
# agreement with the references


def test_psnr_matches_skimage(photo_pairs):
    refs, degs = photo_pairs
    got = np.asarray(metrics.psnr(refs, degs))
    want = np.array([peak_signal_noise_ratio(r, d, data_range=1.0) for r, d in zip(refs, degs)])
    assert got.shape == (len(refs),)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
    assert np.ptp(want) > 10  # the degradations really span a range of qualities

    pooled = float(metrics.psnr_pooled(refs, degs))
    mse = np.mean([np.mean((r - d) ** 2) for r, d in zip(refs, degs)])
    np.testing.assert_allclose(pooled, 10 * np.log10(1 / mse), rtol=0, atol=1e-3)


@pytest.mark.parametrize("channel", ["rgb", "luma"])
def test_ssim_matches_skimage(photo_pairs, channel):
    refs, degs = photo_pairs
    got = np.asarray(metrics.ssim(refs, degs, channel=channel))
    want = np.array([_skimage_ssim(r, d, channel) for r, d in zip(refs, degs)])
    assert got.shape == (len(refs),)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert want.min() < 0.5 < want.max()


def test_ssim_single_image_and_float32(photo_pairs):
    refs, degs = photo_pairs
    got = metrics.ssim(refs[0].astype(np.float32), degs[0].astype(np.float32))
    assert np.shape(got) == ()
    np.testing.assert_allclose(float(got), _skimage_ssim(refs[0], degs[0]), atol=1e-4)


def test_ms_ssim_matches_numpy_msssim(photo_pairs):
    refs, degs = photo_pairs
    got = np.asarray(metrics.ms_ssim(refs, degs))
    # msssim.py runs on 0..255 with max_val 255; [0, 1] with data range 1 is the same number
    want = np.array([_multiscale_ssim_numpy(r[None] * 255, d[None] * 255) for r, d in zip(refs, degs)])
    assert got.shape == (len(refs),)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert want.min() < 0.85


def test_ms_ssim_weights():
    assert len(DPED_MS_SSIM_WEIGHTS) == 5
    assert sum(DPED_MS_SSIM_WEIGHTS) == pytest.approx(1.0, abs=1e-3)


def test_ms_ssim_odd_sizes_match_numpy():
    """Odd sides exercise the reflect-padded box downsampling; 37 -> 19 -> 10 -> 5 -> 3 shrinks the filter."""
    rng = np.random.default_rng(1)
    base = data.coffee()[:37, :45].astype(np.float64) / 255.0
    a = base[None]
    b = np.clip(a + rng.normal(0, 0.03, a.shape), 0, 1)
    want = _multiscale_ssim_numpy(a * 255, b * 255)
    np.testing.assert_allclose(float(metrics.ms_ssim(a, b)[0]), want, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# edge cases


@pytest.mark.filterwarnings("error")
def test_identical_images_no_warnings(photo_pairs):
    refs, _ = photo_pairs
    x = refs[:3]
    assert np.all(np.isposinf(np.asarray(metrics.psnr(x, x))))
    assert np.isposinf(float(metrics.psnr_pooled(x, x)))
    np.testing.assert_allclose(np.asarray(metrics.ssim(x, x)), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics.ssim(x, x, channel="luma")), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics.ms_ssim(x, x)), 1.0, atol=1e-6)


@pytest.mark.filterwarnings("error")
def test_constant_images():
    a = np.full((2, 32, 32, 3), 0.3)
    b = np.full((2, 32, 32, 3), 0.3)
    np.testing.assert_allclose(np.asarray(metrics.ssim(a, b)), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics.ms_ssim(a, b)), 1.0, atol=1e-6)
    c = np.full((32, 32, 3), 0.7)
    got = float(metrics.ssim(a[0], c))
    np.testing.assert_allclose(got, _skimage_ssim(a[0], c), atol=1e-4)
    # constant images: cs = 1 at every scale, so MS-SSIM = luminance ** w[-1]
    lum = (2 * 0.3 * 0.7 + 0.01**2) / (0.3**2 + 0.7**2 + 0.01**2)
    np.testing.assert_allclose(float(metrics.ms_ssim(a[0], c)), lum ** DPED_MS_SSIM_WEIGHTS[-1], atol=1e-5)
    np.testing.assert_allclose(float(metrics.psnr(a[0], c)), -10 * np.log10(0.16), atol=1e-4)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("shape", [(3, 5), (7, 7), (10, 10), (5, 12)])
def test_ssim_small_images_shrink_window(shape):
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 1, (4, *shape, 3))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    win = min(shape) if min(shape) % 2 else min(shape) - 1
    for channel in ("rgb", "luma"):
        got = np.asarray(metrics.ssim(a, b, channel=channel))
        assert np.all(np.isfinite(got)) and np.all(np.abs(got) <= 1)
        want = [_skimage_ssim(x, y, channel, win=win) for x, y in zip(a, b)]
        np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.filterwarnings("error")
def test_ssim_one_pixel_is_luminance_term():
    a = np.array([[[0.2, 0.5, 0.9]]])
    b = np.array([[[0.4, 0.5, 0.1]]])
    lum = (2 * a * b + 1e-4) / (a**2 + b**2 + 1e-4)
    np.testing.assert_allclose(float(metrics.ssim(a, b)), lum.mean(), atol=1e-6)
    ya, yb = _luma(a), _luma(b)
    lum_y = (2 * ya * yb + 1e-4) / (ya**2 + yb**2 + 1e-4)
    np.testing.assert_allclose(float(metrics.ssim(a, b, channel="luma")), lum_y.item(), atol=1e-6)
    assert float(metrics.ssim(a, a)) == pytest.approx(1.0, abs=1e-6)
    # 1xW strip: the window is one pixel too
    strip_a, strip_b = np.tile(a, (1, 6, 1)), np.tile(b, (1, 6, 1))
    np.testing.assert_allclose(float(metrics.ssim(strip_a, strip_b)), lum.mean(), atol=1e-6)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("size", [16, 40])
def test_ms_ssim_small_images(size):
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 1, (3, size, size, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    c = rng.uniform(0, 1, a.shape)  # unrelated noise: cs may go negative somewhere -> clipped, never NaN
    for other in (b, c):
        got = np.asarray(metrics.ms_ssim(a, other))
        assert np.all(np.isfinite(got)) and np.all((got >= 0) & (got <= 1))
    # where msssim.py is defined (no negative term) it agrees with it, down to the 1x1 scale for 16x16
    want = [_multiscale_ssim_numpy(x[None], y[None], max_val=1.0) for x, y in zip(a, b)]
    np.testing.assert_allclose(np.asarray(metrics.ms_ssim(a, b)), want, atol=1e-4)


def test_shape_mismatch_raises():
    a = np.zeros((2, 16, 16, 3))
    with pytest.raises(MetricShapeError, match=r"\(2, 16, 16, 3\).*\(2, 16, 17, 3\)"):
        metrics.psnr(a, np.zeros((2, 16, 17, 3)))
    for fn in (metrics.psnr_pooled, metrics.ssim, metrics.ms_ssim):
        with pytest.raises(MetricShapeError):
            fn(a, a[:1])
    with pytest.raises(MetricShapeError, match="3-channel"):
        metrics.ssim(np.zeros((16, 16, 1)), np.zeros((16, 16, 1)), channel="luma")
    with pytest.raises(MetricShapeError):
        metrics.ssim(np.zeros((16, 16)), np.zeros((16, 16)))
    assert issubclass(MetricShapeError, ValueError)
    with pytest.raises(ValueError, match="channel"):
        metrics.ssim(a, a, channel="ycbcr")


def test_entropy():
    const = np.full((2, 8, 8, 3), 77, np.uint8)
    np.testing.assert_array_equal(np.asarray(metrics.entropy(const)), 0.0)
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=-1)
    assert float(metrics.entropy(ramp)) == pytest.approx(8.0, abs=1e-5)
    two = np.zeros((4, 4, 3), np.uint8)
    two[:2] = 255
    assert float(metrics.entropy(two)) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(TypeError):
        metrics.entropy(np.zeros((4, 4, 3)))


def test_bits_per_pixel_png():
    rng = np.random.default_rng(4)
    const = np.full((64, 64, 3), 128, np.uint8)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    bpp = metrics.bits_per_pixel_png(np.stack([const, noise]))
    assert isinstance(bpp, np.ndarray) and bpp.shape == (2,)
    assert bpp[0] < 0.5
    assert bpp[1] >= 24.0  # 3 incompressible bytes per pixel
    gray_noise = rng.integers(0, 256, (64, 64, 1), dtype=np.uint8)
    assert float(metrics.bits_per_pixel_png(gray_noise)) >= 8.0
