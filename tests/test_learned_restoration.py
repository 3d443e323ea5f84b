"""The recommended recipe learns what its colour path cannot (issue: the trained network added 0.00 dB to the
colour transform fitted before its first step).

One photo's halves, as the quality benchmark cuts them: the left halves with sensor noise (8-bit) are the source
camera, the right halves clean the target camera; a held-out noisy photo with its clean original. wespe_plus, as
``launch/train.py`` runs it by default (its restoration term fits the source camera's noise to the two sets and
trains G to remove it), at a tiny size for 120 steps, must then beat its own colour path (the fitted colour map,
which is what G is before training and what every earlier version of the recipe ended as) by a clear margin on
the held-out photo (at least +0.7 dB; +1.03 measured, +0.86 at 100 steps, +1.13 at 150). Without the restoration
term the same run gains ~nothing over the colour path (README: Results), so this fails if the term, the
degradation fit or the generator's restoration path breaks.
"""

import numpy as np
import pytest
from PIL import Image

from wespe import config as configs
from wespe import metrics
from wespe.evaluation import quality_data
from wespe.inference import loading
from wespe.training import loop

NOISE = 0.05  # of [0, 1]: a noisy phone in low light (the quality benchmark's noisy_phone camera: 0.04-0.07)


def _noisy(photo: np.ndarray, seed: int) -> np.ndarray:
    x = photo / 255.0 + np.random.default_rng(seed).normal(0.0, NOISE, photo.shape)
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _half_size(photo: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(photo).resize((photo.shape[1] // 2, photo.shape[0] // 2), Image.LANCZOS))


@pytest.mark.slow
@pytest.mark.optimized  # 120 training steps: XLA's optimised program runs them ~2.6x faster than it compiles
def test_default_recipe_learns_to_denoise_beyond_its_colour_path(tmp_path):
    source, target = tmp_path / "phone", tmp_path / "dslr"
    source.mkdir()
    target.mkdir()
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "motorcycle_left")):
        photo = _half_size(quality_data.load_photo(name))
        half = photo.shape[1] // 2
        Image.fromarray(_noisy(photo[:, :half], seed=i)).save(source / f"{name}.png")
        Image.fromarray(photo[:, half:]).save(target / f"{name}.png")
    clean = _half_size(quality_data.load_photo("rocket"))[:192, :192]
    heldout = _noisy(clean, seed=99)

    c = configs.laptop_scale(configs.wespe_plus())  # the recipe's switches, restoration and norm=none included
    c.generator.width, c.generator.num_blocks = 8, 1
    c.patch_size, c.batch_size, c.num_steps = 32, 8, 120
    c.log_every, c.sample_every, c.checkpoint_every, c.num_sample_crops = 50, 120, 120, 2
    c.degradation.fit_crops = 32
    c.data.source, c.data.target = str(source), str(target)
    assert c.weights.restoration > 0 and c.generator.norm == "none"
    loop.run_training(c, tmp_path / "run")

    g = loading.load_exported_generator(tmp_path / "run")
    x = (heldout / 255.0).astype(np.float32)[None]
    colour_path = np.clip(np.asarray(g.color(x))[0], 0, 1)  # G before training: the fitted colour map alone
    enhanced = np.clip(np.asarray(g(x))[0], 0, 1)
    reference = clean / 255.0
    gain = metrics.psnr(enhanced, reference) - metrics.psnr(colour_path, reference)
    # Measured here: +1.03 dB and +0.061 SSIM (without the restoration term the recipe adds 0.00 dB: README)
    assert gain >= 0.7, f"G adds {gain:.2f} dB to its colour path on a held-out noisy photo"
    assert metrics.ssim(enhanced, reference) > metrics.ssim(colour_path, reference) + 0.03
