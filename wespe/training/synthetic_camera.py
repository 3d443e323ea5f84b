"""A simple "phone camera" model: the degradations that turn a clean photo into a source-camera photo.

:func:`apply_camera` applies given parameters, in this order, to RGB in [0, 1] (float64):

  1. optics blur: Gaussian of ``blur_sigma`` px per channel (``scipy.ndimage.gaussian_filter``, mode reflect);
  2. low contrast and exposure: ``0.5 + contrast * (x - 0.5) + brightness``;
  3. colour cast: per-channel ``gains`` (R, G, B) (a white-balance error; R > 1 > B is warm);
  4. sensor noise: Gaussian of ``noise_sigma``, drawn from ``np.random.default_rng(noise_seed)``;
  5. clip to [0, 1], round to 8 bits;
  6. JPEG compression at ``jpeg_quality`` (Pillow), decoded back to RGB.

The built-in demo's camera (:data:`wespe.training.demo.DEMO_CAMERA`, :func:`wespe.training.demo.degrade`) is one fixed
set of parameters. :func:`camera_model` draws a different camera per photo from :data:`CAMERA_RANGES`, ranges centred
on the demo's camera, so a benchmark's source photos are not all degraded identically (a model cannot learn one fixed
inverse filter):

  ===============  ===========================  ============================
  parameter        distribution                 demo
  ===============  ===========================  ============================
  blur_sigma       U(0.8, 1.6) px               1.2
  contrast         U(0.55, 0.75)                0.65
  brightness       U(-0.08, -0.02)              -0.05
  gains            R U(1.04, 1.16), G 1,        (1.10, 1.00, 0.78)
                   B U(0.72, 0.84)
  noise_sigma      U(0.02, 0.04)                0.03
  jpeg_quality     integer U[30, 45]            35
  noise_seed       integer U[0, 2**31)          the demo passes its own seed
  ===============  ===========================  ============================
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# (low, high) of each uniform draw; jpeg_quality is an integer drawn from low..high inclusive.
CAMERA_RANGES = {"blur_sigma": (0.8, 1.6), "contrast": (0.55, 0.75), "brightness": (-0.08, -0.02),
                 "gain_r": (1.04, 1.16), "gain_b": (0.72, 0.84), "noise_sigma": (0.02, 0.04),
                 "jpeg_quality": (30, 45)}
# Other camera families, each setting every key of CAMERA_RANGES (what a benchmark degrades its source photos
# with when draw_camera reads them instead; experiments/quality/unseen_camera.py, colour_estimators.py):
# cool_overexposed: a cool cast, over-exposed, mildly flat, less blur and noise, JPEG 60-80; noisy_phone: mostly
# sensor noise that survives a mild JPEG, little blur, a mild cast (the case of real phone photos);
# warm_contrasty: a warm cast, more contrast than the scene (shadows and highlights clip), light noise, JPEG
# 70-90; dim: dark, flat and green, noisy, JPEG 50-70.
CAMERA_FAMILIES = {
    "benchmark": dict(CAMERA_RANGES),
    "cool_overexposed": {"blur_sigma": (0.5, 1.0), "contrast": (0.8, 0.9), "brightness": (0.03, 0.08),
                         "gain_r": (0.80, 0.90), "gain_b": (1.10, 1.20), "noise_sigma": (0.01, 0.02),
                         "jpeg_quality": (60, 80)},
    "noisy_phone": {"blur_sigma": (0.5, 1.0), "contrast": (0.8, 0.95), "brightness": (-0.04, 0.0),
                    "gain_r": (0.95, 1.05), "gain_b": (0.90, 1.00), "noise_sigma": (0.04, 0.07),
                    "jpeg_quality": (85, 95)},
    "warm_contrasty": {"blur_sigma": (0.6, 1.0), "contrast": (1.1, 1.2), "brightness": (-0.02, 0.02),
                       "gain_r": (1.05, 1.15), "gain_b": (0.85, 0.95), "noise_sigma": (0.02, 0.03),
                       "jpeg_quality": (70, 90)},
    "dim": {"blur_sigma": (0.8, 1.2), "contrast": (0.7, 0.8), "brightness": (-0.08, -0.04),
            "gain_r": (0.85, 0.95), "gain_b": (0.85, 0.95), "noise_sigma": (0.03, 0.05), "jpeg_quality": (50, 70)},
}
# The parameters apply_camera needs (wespe.training.demo.DEMO_CAMERA has exactly these).
CAMERA_KEYS = ("blur_sigma", "contrast", "brightness", "gains", "noise_sigma", "jpeg_quality")


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Per-channel Gaussian blur of an (H, W, 3) float image (reflect mode at the borders)."""
    import scipy.ndimage
    return np.stack([scipy.ndimage.gaussian_filter(x[..., c], sigma, mode="reflect") for c in range(3)], -1)


def apply_camera(image: np.ndarray, params: dict, noise_seed: int) -> np.ndarray:
    """Degrade a uint8 RGB photo with the camera ``params`` (keys :data:`CAMERA_KEYS`; other keys, such as a
    ``noise_seed`` recorded beside them, are ignored) and sensor noise seeded by ``noise_seed``. Returns uint8
    RGB of the same size. The steps are listed in the module docstring."""
    missing = [k for k in CAMERA_KEYS if k not in params]
    if missing:
        raise ValueError(f"camera params lack {missing}; expected the keys {list(CAMERA_KEYS)}")
    x = np.asarray(image).astype(np.float64) / 255.0
    x = gaussian_blur(x, params["blur_sigma"])
    x = 0.5 + params["contrast"] * (x - 0.5) + params["brightness"]
    x = x * np.asarray(params["gains"])
    x = x + np.random.default_rng(noise_seed).normal(0.0, params["noise_sigma"], x.shape)
    x = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="JPEG", quality=int(params["jpeg_quality"]))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def colour_inverse(params: dict) -> tuple[np.ndarray, np.ndarray]:
    """The exact inverse of :func:`apply_camera`'s colour steps (2 and 3) as ``(matrix, bias)`` for
    ``x = matrix @ x' + bias``: from ``x' = gains * (0.5 + contrast * (x - 0.5) + brightness)``,
    ``x = x' / (gains * contrast) + 0.5 - (0.5 + brightness) / contrast`` per channel. float64; ``matrix`` is
    diagonal (the same form as :func:`wespe.color_map.moment_transfer`'s fit)."""
    gains = np.asarray(params["gains"], np.float64)
    contrast, brightness = float(params["contrast"]), float(params["brightness"])
    return np.diag(1.0 / (gains * contrast)), np.full(3, 0.5 - (0.5 + brightness) / contrast)


def centre_camera(ranges: dict | None = None) -> dict:
    """The colour parameters at the centre of ``ranges`` (default :data:`CAMERA_RANGES`): the camera family's
    middle, whose :func:`colour_inverse` is the one colour map a set-level fit to many photos of the family
    would approach."""
    r = CAMERA_RANGES if ranges is None else ranges
    mid = {k: (float(lo) + float(hi)) / 2 for k, (lo, hi) in r.items()}
    return {"contrast": mid["contrast"], "brightness": mid["brightness"],
            "gains": [mid["gain_r"], 1.0, mid["gain_b"]]}


def draw_camera(rng: np.random.Generator) -> dict:
    """One camera drawn from :data:`CAMERA_RANGES`, plus the ``noise_seed`` of its sensor noise (plain Python
    numbers, so the dict is JSON-serialisable and reads back to the same values)."""
    r = CAMERA_RANGES
    params = {"blur_sigma": float(rng.uniform(*r["blur_sigma"])), "contrast": float(rng.uniform(*r["contrast"])),
              "brightness": float(rng.uniform(*r["brightness"]))}
    params["gains"] = [float(rng.uniform(*r["gain_r"])), 1.0, float(rng.uniform(*r["gain_b"]))]
    params["noise_sigma"] = float(rng.uniform(*r["noise_sigma"]))
    params["jpeg_quality"] = int(rng.integers(r["jpeg_quality"][0], r["jpeg_quality"][1] + 1))
    params["noise_seed"] = int(rng.integers(0, 2**31))
    return params


def camera_model(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Draw a camera (:func:`draw_camera`) with ``rng`` and apply it to the uint8 RGB ``image``.

    Returns ``(degraded_uint8, params)``; ``apply_camera(image, params, params["noise_seed"])`` reproduces
    ``degraded_uint8`` exactly.
    """
    params = draw_camera(rng)
    return apply_camera(image, params, params["noise_seed"]), params
