"""Pictures people would rather see than read: image grids, and the collapse checks that look at them."""

from __future__ import annotations

import numpy as np
from PIL import Image

from wespe.image_io import to_uint8
from wespe.ops import GRAYSCALE_WEIGHTS


def image_grid(columns: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """One row per sample, one column per array (each (n, h, w, 3) in [0, 1]) -> uint8 (H, W, 3), white gaps."""
    n, h, w, _ = columns[0].shape
    k = len(columns)
    grid = np.full((n * h + (n - 1) * gap, k * w + (k - 1) * gap, 3), 255, np.uint8)
    for j, col in enumerate(columns):
        col = to_uint8(col)
        for i in range(n):
            grid[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = col[i]
    return grid


def save_png(image: np.ndarray, path) -> None:
    Image.fromarray(image).save(path)


def _gray(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float64) @ np.array(GRAYSCALE_WEIGHTS)


def collapse_warnings(source: np.ndarray, enhanced: np.ndarray, target_mean_rgb: np.ndarray | None,
                      *, colour_tolerance: float = 0.25) -> list[str]:
    """Warnings for the failure modes seen in WESPE ports.

    * colour inversion ("negative" images): the luma of G(x) correlates negatively with the luma of x;
    * colour drift: the mean RGB of G(x) is far (> ``colour_tolerance`` on [0, 1]) from the target set's.
    """
    out = []
    gx, gs = _gray(enhanced).reshape(len(enhanced), -1), _gray(source).reshape(len(source), -1)
    gx, gs = gx - gx.mean(1, keepdims=True), gs - gs.mean(1, keepdims=True)
    denom = np.sqrt((gx ** 2).sum(1) * (gs ** 2).sum(1))
    valid = denom > 1e-12
    if valid.any():
        r = float(np.mean((gx * gs).sum(1)[valid] / denom[valid]))
        if r < 0:
            out.append(f"G(x) correlates negatively with x (mean luma r = {r:.2f}): colour-inverted collapse?")
    if target_mean_rgb is not None:
        diff = np.asarray(enhanced, np.float64).reshape(-1, 3).mean(0) - np.asarray(target_mean_rgb)
        if np.max(np.abs(diff)) > colour_tolerance:
            out.append(f"mean colour of G(x) is far from the target set's (RGB difference "
                       f"{np.round(diff, 2).tolist()}): colour collapse?")
    return out
