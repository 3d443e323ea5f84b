"""Training configuration: the presets of the two papers and every key they share.

Configs are ``ml_collections.ConfigDict``s; experiment files in ``experiments/`` start from a preset here and
override keys (``--config.batch_size=30`` on the command line). Every key is documented where
:func:`base_config` sets it, with its paper / official-code meaning; the presets below say only what they change.
"""

from __future__ import annotations

import ml_collections

from wespe.errors import UserError


def _optional(field_type: type) -> ml_collections.FieldReference:
    """A key that is None by default but typed, so ``--config.key=value`` parses as ``field_type``."""
    return ml_collections.FieldReference(None, field_type=field_type)


def base_config() -> ml_collections.ConfigDict:
    """Every key, at the WESPE paper's values (:func:`wespe_paper`)."""
    c = ml_collections.ConfigDict()
    # ``wespe`` (unpaired, cycle G/F, colour + texture adversaries) or ``dped`` (paired).
    c.mode = "wespe"
    # Global batch (WESPE paper 30, DPED code 50).
    c.batch_size = 30
    # Training crop side (100 in both papers; the ``dped_fc`` discriminator head is tied to it).
    c.patch_size = 100
    # Training iterations (20k in both papers).
    c.num_steps = 20000
    # Parameter-init and data seed.
    c.seed = 0

    c.generator = ml_collections.ConfigDict()
    # The DPED ResNet: 64 channels, 4 residual blocks, ``instance`` norm (or ``batch``, ``none``).
    c.generator.width = 64
    c.generator.num_blocks = 4
    c.generator.norm = "instance"
    # ``dped`` (official truncated-normal 0.01: G starts as a near-constant grey) or ``he``.
    c.generator.init = "dped"
    # ``dped`` (official ``tanh(.) * 0.58 + 0.5``) or ``residual`` (``colour(x) + r(x)``, last conv
    # zero-initialised: G starts as the identity, at the input's quality).
    c.generator.output = "dped"
    # ``none`` (the papers); ``affine``: a learned 3x3 colour matrix + offset on the input (the residual output's
    # global path: white balance / contrast without local blotches); ``base_affine``: the same map on a Gaussian
    # base layer of the input, the detail passed through.
    c.generator.global_color = "none"

    c.discriminator = ml_collections.ConfigDict()
    # ``dped_fc`` (official; needs patch_size inputs) or ``global_pool`` (any input size).
    c.discriminator.head = "dped_fc"
    # ``instance`` (official) or ``none``.
    c.discriminator.norm = "instance"

    c.weights = ml_collections.ConfigDict()
    # Loss weights content / colour / texture / TV: WESPE 1 / 5e-3 / 5e-3 / 10 (DPED code 10 / 0.5 / 1 / 2000).
    c.weights.content = 1.0
    c.weights.color = 5e-3
    c.weights.texture = 5e-3
    c.weights.tv = 10.0
    # CycleGAN's identity term |G(y) - y|_1 + |F(x) - x|_1 (wespe mode; 0 = the papers).
    c.weights.identity = 0.0
    # Sliced Wasserstein-2 distance between the colours of blurred G(x) and of the blurred target photos of the
    # batch (wespe mode; 0 = the papers): a deterministic, unpaired colour match.
    c.weights.color_distribution = 0.0
    # Mean square of the blurred residual G(x) - colour(x) (residual output; 0 = off): the convolutional path may
    # change detail but not paint colour locally (no blotches).
    c.weights.residual_lowpass = 0.0
    # Wasserstein-2 distance between the luma-gradient distributions of G(x) and of the target photos (wespe
    # mode; 0 = the papers): sharper edges, quieter flat areas.
    c.weights.texture_distribution = 0.0

    # Exponential moving average of G's weights (0 = off, the papers), used for the samples, the exported
    # generator and evaluation.
    c.ema_decay = 0.0
    # TF's EMA warm-up min(decay, (1 + step) / (10 + step)) (True) or the plain decay from step 0 (False).
    c.ema_warmup = True
    # With generator.global_color: whether the TV term's gradient reaches the colour path (True: plain TV of
    # G(x)) or only the residual path (False: smooths noise without flattening contrast).
    c.tv_through_color = True
    # Compare the colours of blurred images (True: D_c's view, colour without texture) or of the images
    # themselves (False).
    c.color_distribution_blur = True
    # With generator.global_color: ``identity`` or ``moments``: a fresh run starts the colour path at the
    # per-channel mean/std transfer from the source to the target colours (wespe.color_pool; F gets the inverse),
    # measured steadier and better than learning it from batches.
    c.color_init = "identity"
    # With weights.color_distribution and generator.global_color: False = compare the batch's blurred G(x) with
    # its target patches; True = fit the colour path to whole sets instead: colour(source colour pool) vs the
    # target colour pool (wespe.color_pool; the batch term drops).
    c.color_distribution_pool = False
    # Photos per side read (shrunken whole) for the colour pools of color_init / color_distribution_pool.
    c.color_pool_photos = 128
    # ``dped_softmax`` (official code: per-sample real/fake swap, 2-way softmax, minimax generator term), ``bce``
    # (non-saturating; the WESPE paper's -sum log D(G(x))), ``lsgan`` or ``hinge``.
    c.adversarial_form = "bce"
    # ``sum`` (official code / WESPE formulas: adversarial terms summed over the batch, the paired colour loss
    # summed over pixels / 2 * batch) or ``mean`` (all means, as most ports).
    c.loss_normalization = "sum"
    # Colour blur: ``dped_code`` (official 21x21 kernel, sigma ~4.34 px) or ``paper`` (Gaussian of variance 3).
    c.blur = "dped_code"
    # VGG-19 layer of the content loss (``relu5_4`` in both papers).
    c.content_layer = "relu5_4"
    # Path to imagenet-vgg-verydeep-19.mat / vgg19-*.pth / .npz, or ``random`` (the demo's stand-in).
    c.vgg_weights = _optional(str)
    # ``auto`` (from the weights: MatConvNet -> ``dped``, torchvision and random -> ``imagenet``), ``dped``
    # (x * 255 - mean) or ``imagenet`` (mean / std).
    c.vgg_preprocessing = "auto"
    # Where converted VGG weights are cached (None: $WESPE_CACHE_DIR or ~/.cache/wespe).
    c.vgg_cache_dir = _optional(str)

    c.optimizer = ml_collections.ConfigDict()
    # Adam (5e-4 for all networks in both papers).
    c.optimizer.lr_generator = 5e-4
    c.optimizer.lr_discriminator = 5e-4
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    # Learning-rate multiplier of generator.global_color's 12 parameters (0 = frozen at their color_init).
    c.optimizer.global_color_lr_scale = 1.0
    # Adam's momentum for those parameters (0.99 averages their noisy per-batch gradient).
    c.optimizer.global_color_b1 = 0.9
    # Linear learning-rate warm-up from 0 (0 = none, the papers): without it Adam's first steps move every weight
    # by ~lr at once, which throws an identity-initialised G far off its input.
    c.optimizer.warmup_steps = 0

    c.data = ml_collections.ConfigDict()
    # Folders of photos (``--source`` / ``--target`` set them): paired by file name in ``dped`` mode, unpaired
    # otherwise; ``paired`` None follows the mode.
    c.data.source = _optional(str)
    c.data.target = _optional(str)
    c.data.paired = _optional(bool)
    # Read the DPED layout ``<root>/<phone>/training_data/{<phone>,canon}`` instead.
    c.data.dped_root = _optional(str)
    c.data.dped_phone = "iphone"
    # ``demo``: build source / target from photos scikit-image ships (no download).
    c.data.builtin = _optional(str)
    # Folder of source-camera photos kept out of training, for the sample grids (default: crops of the training
    # source folder; the demo uses its held-out photo).
    c.data.heldout = _optional(str)
    # Clean references of the data.heldout photos (same file names): every sample_every steps the PSNR / SSIM of
    # G(x) and of x against them are logged (quality/*), with a warning when G(x) is worse than x. Without it,
    # reference-free measures are logged instead.
    c.data.heldout_reference = _optional(str)
    # Random flips / 90-degree rotations of patches (off: the papers do not use them).
    c.data.flips = False
    c.data.rot90 = False
    # Decode every image once and keep it in memory when the set fits in this many bytes (else stream).
    c.data.cache_max_bytes = 2 * 1024**3

    # ``float32`` (as the papers) or ``bfloat16``: the networks compute in bf16 from float32 parameters; losses,
    # gradients and Adam stay float32 (mixed precision, for GPUs / TPUs).
    c.compute_dtype = "float32"
    # Device mesh (wespe.parallel): the batch is split over data x fsdp devices; the state is replicated, or split
    # over ``fsdp`` when it is > 1 (FSDP). -1 = all devices left over. May change between resumes (a checkpoint
    # restores onto any mesh).
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    # metrics.jsonl / TensorBoard scalars every N steps (the NaN check runs every step).
    c.log_every = 10
    # samples/step_<N>.png grids [x | G(x) | F(G(x))] on fixed crops of data.heldout (or of the source).
    c.sample_every = 500
    # An orbax checkpoint every N steps (and at the end, and on SIGTERM / Ctrl-C); how many are kept.
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    # Rows of the sample grids.
    c.num_sample_crops = 6
    # Resume a workdir whose saved config differs (otherwise a clear error).
    c.allow_config_change = False
    return c


# Keys that may differ between a checkpoint's config and the resuming run's without changing the result.
RESUME_SAFE_KEYS = ("num_steps", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints",
                    "num_sample_crops", "allow_config_change", "mesh.data", "mesh.fsdp", "data.heldout",
                    "data.heldout_reference")


def wespe_paper() -> ml_collections.ConfigDict:
    """WESPE (CVPR-W 2018): unpaired; content 1, colour 5e-3, texture 5e-3, TV 10; batch 30; Adam 5e-4."""
    return base_config()


def wespe_plus() -> ml_collections.ConfigDict:
    """The recommended unpaired recipe: WESPE plus an identity-initialised residual G whose global colour path is
    fitted to the two sets' colour moments and stretches only the base layer, no colour GAN, no TV, a low-pass
    penalty on the residual and an EMA of G (experiments/wespe_plus.py says why each is on; README: Results)."""
    c = wespe_paper()
    c.generator.update(dict(init="he", output="residual", global_color="base_affine"))
    c.weights.update(dict(color=0.0, residual_lowpass=100.0, tv=0.0))
    c.color_init = "moments"
    c.optimizer.global_color_lr_scale = 0.0  # the colour path stays at the fitted moments
    c.optimizer.warmup_steps = 50
    c.ema_decay = 0.999
    return c


def laptop_scale(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrink a preset to a few hundred CPU steps (the demo and the quality benchmark): width 16, 2 blocks, 48 px
    patches, batch 8, 300 steps, EMA decay 0.99 where an EMA is kept, random VGG-19 weights (nothing to
    download) with the content loss on relu1_2 (random deep features do not pin F(G(x)) to x; the cycle
    collapsed to a constant G at relu2_2)."""
    c.vgg_weights = "random"
    c.content_layer = "relu1_2"
    c.batch_size, c.patch_size, c.num_steps = 8, 48, 300
    c.generator.width, c.generator.num_blocks = 16, 2
    if c.ema_decay > 0:
        c.ema_decay = 0.99
    c.log_every, c.sample_every, c.checkpoint_every, c.num_sample_crops = 10, 100, 100, 4
    return c


def dped_code() -> ml_collections.ConfigDict:
    """The official DPED code (ICCV 2017): paired; content 10, colour 0.5, texture 1, TV 2000; batch 50."""
    c = base_config()
    c.mode = "dped"
    c.batch_size = 50
    c.weights.update(dict(content=10.0, color=0.5, texture=1.0, tv=2000.0))
    c.adversarial_form = "dped_softmax"
    return c


def from_saved(saved: dict) -> ml_collections.ConfigDict:
    """A config saved by an earlier run (``config.json``, checkpoint metadata), with keys added since then at
    their defaults (their defaults reproduce the behaviour before the key existed)."""
    config = base_config()
    config.update(saved)
    return config


PRESETS = {"wespe_paper": wespe_paper, "wespe_plus": wespe_plus, "dped_code": dped_code}


def preset(name: str) -> ml_collections.ConfigDict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]()


class ConfigError(UserError):
    """A config value the run cannot use (the message names the key)."""


def validate(config: ml_collections.ConfigDict) -> None:
    """Fail early, naming the key, on values the step would only reject after compiling."""
    from wespe.losses import ADVERSARIAL_FORMS, NORMALIZATIONS
    from wespe.models import DISCRIMINATOR_HEADS, GLOBAL_COLORS, INITS, NORMS, OUTPUTS
    from wespe.ops import BLUR_MODES
    from wespe.vgg import LAYERS, PREPROCESSING

    checks = [("mode", config.mode, ("wespe", "dped")),
              ("generator.norm", config.generator.norm, NORMS),
              ("generator.init", config.generator.init, INITS),
              ("generator.output", config.generator.output, OUTPUTS),
              ("generator.global_color", config.generator.global_color, GLOBAL_COLORS),
              ("discriminator.head", config.discriminator.head, DISCRIMINATOR_HEADS),
              ("discriminator.norm", config.discriminator.norm, ("instance", "none")),
              ("adversarial_form", config.adversarial_form, ADVERSARIAL_FORMS),
              ("loss_normalization", config.loss_normalization, NORMALIZATIONS),
              ("blur", config.blur, BLUR_MODES),
              ("content_layer", config.content_layer, LAYERS),
              ("vgg_preprocessing", config.vgg_preprocessing, ("auto",) + PREPROCESSING),
              ("compute_dtype", config.compute_dtype, ("float32", "bfloat16")),
              ("color_init", config.color_init, ("identity", "moments"))]
    for key, value, allowed in checks:
        if value not in allowed:
            raise ConfigError(f"config.{key}={value!r} is not one of {tuple(allowed)}")
    if config.generator.global_color != "none" and config.generator.output != "residual":
        raise ConfigError("config.generator.global_color needs config.generator.output='residual'")
    if float(config.optimizer.global_color_lr_scale) < 0:
        raise ConfigError(f"config.optimizer.global_color_lr_scale must be >= 0 (0 freezes the colour path), got "
                         f"{config.optimizer.global_color_lr_scale}")
    if int(config.color_pool_photos) < 1:
        raise ConfigError(f"config.color_pool_photos must be >= 1, got {config.color_pool_photos}")
    for key, value, off in (("color_init", config.color_init, "identity"),
                            ("color_distribution_pool", config.color_distribution_pool, False)):
        if value != off and config.generator.global_color == "none":
            raise ConfigError(f"config.{key}={value!r} sets the global colour path: it needs "
                             "config.generator.global_color='affine'")
    if not 0.0 <= float(config.ema_decay) < 1.0:
        raise ConfigError(f"config.ema_decay must be in [0, 1), got {config.ema_decay}")
    for key in ("batch_size", "patch_size", "num_steps", "log_every", "sample_every", "checkpoint_every",
                "keep_checkpoints"):
        if int(config[key]) < 1:
            raise ConfigError(f"config.{key} must be >= 1, got {config[key]}")
