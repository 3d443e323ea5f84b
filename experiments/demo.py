"""Built-in demo: no data or weights to download; trains WESPE on a laptop CPU in about 3-4 minutes.

    python launch/train.py --config=experiments/demo.py --workdir=runs/demo

Source = scikit-image photos degraded by a documented camera model (wespe/demo.py), target = other clean photos.
At the end it writes demo_grid.png (input | G(input) | clean) and demo_result.json (PSNRs vs the clean crops).

Departures from the paper preset, each because 300 CPU steps are 1.5% of the paper's 20k iterations:
  * smaller networks and patches (width 16, 2 blocks, 48 px, batch 8);
  * random VGG-19 weights (nothing to download) with the content loss on relu1_2: random shallow features
    still pin F(G(x)) to x, deep random features do not (the cycle collapsed to a constant G at relu2_2);
  * generator.init=he: with the official 0.01 init G starts as a constant grey and the cycle barely moves
    in a few hundred steps;
  * weights.identity=20 (CycleGAN's identity term): without it the short unpaired run settles on a false-colour
    code of x (PSNR 6-16 dB in trials) instead of a colour-corrected x.
"""

from wespe.config import wespe_paper


def get_config():
    c = wespe_paper()
    c.data.builtin = "demo"
    c.vgg_weights = "random"
    c.content_layer = "relu1_2"
    c.batch_size = 8
    c.patch_size = 48
    c.generator.width = 16
    c.generator.num_blocks = 2
    c.generator.init = "he"
    c.weights.identity = 20.0
    c.num_steps = 300
    c.log_every = 10
    c.sample_every = 100
    c.checkpoint_every = 100
    c.num_sample_crops = 4
    return c
