"""Quality benchmark preset: wespe_plus plus learned local restoration from the unpaired sets (weights.restoration).

    python launch/quality.py --output_dir=runs/quality_restore --presets=wespe_restore=experiments/quality/wespe_restore.py

G is also trained to undo the source camera's degradation on the clean target photos: the camera model of
wespe/degradation.py (blur, the target -> source colour map, noise, JPEG), fitted to the two sets at the start of
the run, degrades each batch's target patches, and an L1 term (weight 10, the largest term of G's loss) asks
G(D(y)) = y. 1,500 steps (the other presets: 300), since at 300 it changed nothing measurable. No normalisation in
G's residual blocks (generator.norm=none): with instance norm, what G learns on 48 px patches made whole photos
worse (a norm over a patch's statistics is not one over a photo's; launch/benchmark.py --mode=restoration_probe).
Measured (3 seeds; README: Results): 23.24 dB / SSIM 0.7447 / detail PSNR 30.22 against its own colour start's
23.00 / 0.7227 / 29.69 (with instance norm, seed 0: 22.90 / 0.7297 / 29.63). Not yet the recommended recipe.
"""

from wespe.config import laptop_scale, wespe_plus


def get_config():
    c = laptop_scale(wespe_plus())
    c.weights.restoration = 10.0
    c.generator.norm = "none"
    c.num_steps = 1500
    return c
