"""Built-in demo: no data or weights to download; trains WESPE on CPU in a few minutes.

    python launch/train.py --config=experiments/demo.py --workdir=runs/demo

Source = scikit-image photos degraded by a documented camera model (wespe/demo.py), target = other clean photos.
Smaller networks and patches than the paper, random VGG-19 weights (a weaker content loss), so it fits a laptop
CPU; at the end it writes demo_grid.png (input | G(input) | clean) and demo_result.json (PSNRs).
"""

from wespe.config import wespe_paper


def get_config():
    c = wespe_paper()
    c.data.builtin = "demo"
    c.vgg_weights = "random"
    c.content_layer = "relu2_2"
    c.batch_size = 8
    c.patch_size = 64
    c.generator.width = 16
    c.generator.num_blocks = 2
    c.num_steps = 300
    c.log_every = 10
    c.sample_every = 100
    c.checkpoint_every = 100
    c.num_sample_crops = 4
    return c
