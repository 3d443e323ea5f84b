"""wespe: learn to translate photo quality between cameras from unpaired photos (WESPE, DPED) in JAX/Flax NNX.

The calls a user makes, top to bottom of a project: a config (``wespe_plus()``, ...), ``run_training(config,
workdir)``, ``load_generator(anything)``, ``enhance(generator, image)`` / ``enhance_files(generator, inputs,
output_dir)``, ``evaluate(generator, sources, references)``; then the building blocks for one's own JAX program
(networks, losses, the jitted step, sharding). Each name's module says more; the README
(section Layout) lists which module owns what.
"""

import importlib

# name -> the module that owns it. Loaded on first use (PEP 562), so ``import wespe`` stays cheap and a command
# imports only what it runs (enhancing photos does not load orbax or grain).
_OWNERS = {
    # the user-level calls
    "dped_code": "config", "laptop_scale": "config", "preset": "config", "wespe_paper": "config",
    "wespe_plus": "config", "run_training": "training.loop", "load_generator": "inference.loading",
    "load_dped_generator": "inference.loading", "load_exported_generator": "inference.loading",
    "load_checkpoint_generator": "inference.loading", "save_generator": "inference.export",
    "enhance": "inference.enhance", "enhance_files": "inference.file_enhancement", "evaluate": "evaluation.evaluate",
    "write_results": "evaluation.evaluate",
    "list_images": "image_paths", "read_image": "image_io", "write_image": "image_io",
    # building blocks
    "Generator": "models", "Discriminator": "models", "InstanceNorm": "models", "count_parameters": "models",
    "inference_view": "models", "color_loss": "losses", "color_distribution_loss": "losses",
    "content_loss": "losses", "discriminator_batch": "losses", "discriminator_loss": "losses",
    "generator_adversarial_loss": "losses", "texture_distribution_loss": "losses", "tv_loss": "losses",
    "blur": "ops", "grayscale": "ops", "total_variation": "ops", "Layout": "parallel",
    "initialize_distributed": "parallel", "make_mesh": "parallel", "TrainState": "train_step",
    "create_train_state": "train_step", "load_content_network": "train_step", "make_train_step": "train_step",
    "load_vgg19": "vgg",
}
__all__ = sorted(_OWNERS)


def __getattr__(name: str):
    if name in _OWNERS:
        value = getattr(importlib.import_module(f"wespe.{_OWNERS[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'wespe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_OWNERS))


__version__ = "0.1.0"
