"""wespe: learn to translate photo quality between cameras from unpaired photos (WESPE, DPED) in JAX/Flax NNX."""

from wespe.config import dped_code, laptop_scale, preset, wespe_paper, wespe_plus
from wespe.enhance import enhance
from wespe.export import load_generator, save_generator
from wespe.image_io import list_images, read_image, write_image
from wespe.losses import (color_distribution_loss, color_loss, content_loss, discriminator_batch,
                          discriminator_loss, generator_adversarial_loss, texture_distribution_loss, tv_loss)
from wespe.models import Discriminator, Generator, InstanceNorm, count_parameters
from wespe.ops import blur, grayscale, total_variation
from wespe.parallel import Layout, initialize_distributed, make_mesh
from wespe.pretrained import load_dped_generator
from wespe.train import TrainState, create_train_state, load_content_network, make_train_step
from wespe.vgg import load_vgg19

__all__ = [
    "Discriminator", "Generator", "InstanceNorm", "TrainState", "blur", "color_loss", "content_loss", "enhance",
    "list_images", "load_dped_generator", "load_generator", "read_image", "save_generator", "write_image",
    "count_parameters", "create_train_state", "discriminator_batch", "discriminator_loss", "dped_code",
    "generator_adversarial_loss", "grayscale", "load_content_network", "load_vgg19", "make_train_step", "preset",
    "total_variation", "tv_loss", "wespe_paper", "Layout", "initialize_distributed", "make_mesh",
    "wespe_plus", "laptop_scale", "color_distribution_loss", "texture_distribution_loss",
]
__version__ = "0.1.0"
