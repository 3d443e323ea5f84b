"""Quality benchmark preset: the recommended recipe (experiments/quality/wespe_plus.py) trained 5x longer.

    python launch/quality.py --output_dir=runs/quality_restore \
        --presets=wespe_restore=experiments/quality/wespe_restore.py

wespe_plus learns local restoration from the unpaired sets (weights.restoration: the source camera's blur, noise
and JPEG fitted to the two sets degrade each batch's target patches, and an L1 term, the largest of G's loss, asks
G(D(y)) = y), without normalisation in G's blocks (generator.norm=none). This preset shows what more steps of that
add: 1,500 instead of the laptop scale's 300, on the benchmark's camera and on a noisy phone-like one
(experiments/quality/unseen_camera.py --camera=noisy_phone); measured (with the moment colour fit, before
wespe_plus took the band-pass fit): see the README's Results.
"""

from wespe.config import laptop_scale, wespe_plus


def get_config():
    c = laptop_scale(wespe_plus())
    c.num_steps = 1500
    return c
