"""A tiny unpaired preset for tests/test_quality_benchmark.py: width-4 one-block networks, 32 px patches, batch 2,
3 steps."""

from wespe.config import wespe_paper


def get_config():
    c = wespe_paper()
    c.vgg_weights = "random"
    c.content_layer = "relu1_2"
    c.batch_size, c.patch_size = 2, 32
    c.generator.width, c.generator.num_blocks = 4, 1
    c.generator.init = "he"
    c.discriminator.head = "global_pool"
    c.num_steps, c.log_every, c.sample_every, c.checkpoint_every = 3, 1, 1000, 1000
    c.num_sample_crops = 2
    return c
