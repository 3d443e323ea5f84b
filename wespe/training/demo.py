"""The built-in demo: a phone -> DSLR task made from photos that scikit-image ships, no download needed.

Domains (unpaired: no pixel is in both; the same kinds of scenes on both sides, as DPED's phone and DSLR sets):
  training photos:   astronaut, coffee, the left motorcycle view, rocket; each is cut into two halves across its
                     width, one half goes to each side (alternating which):
  source ("phone"):  the source halves, degraded by :func:`degrade`
  target ("DSLR"):   the other halves, clean
  held out:          chelsea (the cat, a scene seen by neither side), degraded as the source, with its clean
                     original as the reference

Why halves and not whole photos per side: unpaired learning matches the *distributions* of the two sides, so a
side's scene content leaks into what is learned. With a handful of photos, whole photos per side (the first
demo: sky-blue rocket and grey motorcycle as the target) teach "make it blue-grey", and the held-out cat got
worse whatever the method (matching the colour moments of those sets: 18.3 dB vs the input's 22.7 dB; of the
halves: 26.2 dB). Real unpaired sets (thousands of photos per camera) share scene statistics by their size.

Camera model of :func:`degrade` (:func:`wespe.training.synthetic_camera.apply_camera` with these parameters, in
this order, on RGB in [0, 1]):
  1. optics blur: Gaussian, sigma 1.2 px;
  2. low contrast and underexposure: ``0.5 + 0.65 * (x - 0.5) - 0.05``;
  3. colour cast: channel gains (1.10, 1.00, 0.78), a warm white balance;
  4. sensor noise: Gaussian, sigma 0.03, seeded;
  5. JPEG compression at quality 35.
At the end of a demo run, :func:`evaluate` enhances held-out crops and reports the PSNR of the degraded input
and of G(input) against the clean crops, with a before/after grid.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from wespe.atomic_write import atomic_write
from wespe.training.synthetic_camera import apply_camera

DEMO_TRAIN = ("astronaut", "coffee", "motorcycle_left", "rocket")
DEMO_HELDOUT = ("chelsea",)
_LAYOUT = "READY-2"  # marker of a complete folder; a new name when the layout changes (old folders are rebuilt)

BLUR_SIGMA = 1.2
CONTRAST, BRIGHTNESS = 0.65, -0.05
COLOUR_GAINS = (1.10, 1.00, 0.78)
NOISE_SIGMA = 0.03
JPEG_QUALITY = 35
DEMO_CAMERA = {"blur_sigma": BLUR_SIGMA, "contrast": CONTRAST, "brightness": BRIGHTNESS,
               "gains": COLOUR_GAINS, "noise_sigma": NOISE_SIGMA, "jpeg_quality": JPEG_QUALITY}


def _photo(name: str) -> np.ndarray:
    import skimage.data
    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name.endswith("left") else right
    return getattr(skimage.data, name)()


def degrade(image: np.ndarray, seed: int) -> np.ndarray:
    """Apply the demo camera model (module docstring) to a uint8 RGB photo; returns uint8 RGB."""
    return apply_camera(image, DEMO_CAMERA, seed)


def prepare(root: str | Path, seed: int = 0) -> tuple[str, str]:
    """Write the demo folders under ``root`` (once; deterministic) and return (source_dir, target_dir).

    Every file is written atomically (temp file, then rename), so several processes of a multi-process run may
    prepare the same folder at once: each only ever sees complete, identical files.
    """
    root = Path(root)
    done = root / _LAYOUT
    if not done.exists():
        images = {}
        for i, name in enumerate(DEMO_TRAIN):
            clean = _photo(name)
            degraded = degrade(clean, seed + i)
            half = clean.shape[1] // 2
            first, second = slice(0, half), slice(half, None)
            source_half, target_half = (first, second) if i % 2 == 0 else (second, first)
            images[f"source/{name}.png"] = np.ascontiguousarray(degraded[:, source_half])
            images[f"target/{name}.png"] = np.ascontiguousarray(clean[:, target_half])
        for i, name in enumerate(DEMO_HELDOUT):
            clean = _photo(name)
            images[f"heldout/clean/{name}.png"] = clean
            images[f"heldout/degraded/{name}.png"] = degrade(clean, seed + 100 + i)
        for relative, image in images.items():
            with atomic_write(root / relative) as f:
                Image.fromarray(image).save(f, format="PNG")
        with atomic_write(done) as f:
            f.write(b"demo data written by wespe.training.demo.prepare\n")
    return str(root / "source"), str(root / "target")


def heldout_crops(root: str | Path, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Aligned (degraded, clean) crops tiling the held-out photos, float32 in [0, 1]."""
    root = Path(root)
    degraded, clean = [], []
    for name in DEMO_HELDOUT:
        d = np.asarray(Image.open(root / "heldout" / "degraded" / f"{name}.png"), np.float32) / 255
        c = np.asarray(Image.open(root / "heldout" / "clean" / f"{name}.png"), np.float32) / 255
        for y in range(0, d.shape[0] - size + 1, size):
            for x in range(0, d.shape[1] - size + 1, size):
                degraded.append(d[y:y + size, x:x + size])
                clean.append(c[y:y + size, x:x + size])
    return np.stack(degraded), np.stack(clean)


def evaluate(generator, workdir: str | Path) -> dict:
    """PSNR and SSIM of x and of G(x) against the clean held-out crops; writes demo_result.json and demo_grid.png."""
    import jax.numpy as jnp

    from wespe import metrics
    from wespe.training import visualize

    workdir = Path(workdir)
    x, clean = heldout_crops(workdir / "demo_data")
    gx = np.clip(np.asarray(generator(jnp.asarray(x))), 0, 1)
    result = {"demo/psnr_input_db": round(float(metrics.psnr_pooled(x, clean)), 3),
              "demo/psnr_enhanced_db": round(float(metrics.psnr_pooled(gx, clean)), 3),
              "demo/ssim_input": round(float(np.mean(metrics.ssim(x, clean))), 4),
              "demo/ssim_enhanced": round(float(np.mean(metrics.ssim(gx, clean))), 4),
              "demo/num_crops": int(len(x))}
    (workdir / "demo_result.json").write_text(json.dumps(result, indent=2) + "\n")
    show = slice(0, min(4, len(x)))
    visualize.save_png(visualize.image_grid([x[show], gx[show], clean[show]]), workdir / "demo_grid.png")
    return result
