"""Training configuration: the two presets of the papers and every key they share.

Configs are ``ml_collections.ConfigDict``s; experiment files in ``experiments/`` start from a preset here
and override keys. Each key, with its paper/code meaning:

mode                 ``wespe`` (unpaired, cycle G/F, colour+texture adversaries) or ``dped`` (paired)
batch_size           global batch (WESPE paper 30, DPED code 50)
patch_size           training crop side (100 in both papers; the ``dped_fc`` head is tied to it)
num_steps            training iterations (20k in both)
seed                 parameter-init and data seed
generator.width / num_blocks / norm       DPED ResNet: 64 / 4 / ``instance`` (``batch``, ``none``)
generator.init       ``dped`` (official truncated-normal 0.01: G starts as a near-constant grey) or ``he``
generator.output     ``dped`` (official ``tanh(.) * 0.58 + 0.5``) or ``residual`` (``colour(x) + r(x)``, last conv
                     zero-initialised: G starts as the identity, at the input's quality)
generator.global_color  ``none`` (papers) or ``affine``: a learned 3x3 colour matrix + offset on the input (the
                     residual output's global path; white balance / contrast without local blotches)
discriminator.head   ``dped_fc`` (official, needs patch_size inputs) or ``global_pool`` (any size)
discriminator.norm   ``instance`` (official) or ``none``
weights.content / color / texture / tv    loss weights (WESPE 1/5e-3/5e-3/10; DPED code 10/0.5/1/2000)
weights.identity     CycleGAN's identity term |G(y)-y|_1 + |F(x)-x|_1 (wespe mode; 0 = the papers)
weights.color_distribution  sliced Wasserstein-2 distance between the colours of blurred G(x) and blurred target
                     photos of the batch (wespe mode; 0 = the papers): a deterministic, unpaired colour match
weights.texture_distribution  Wasserstein-2 distance between the luma-gradient distributions of G(x) and of the
                     target photos (wespe mode; 0 = the papers): sharper edges, quieter flat areas
weights.residual_lowpass  mean square of the blurred residual G(x) - colour(x) (residual output; 0 = off): the
                     convolutional path may change detail but not paint colour locally (no blotches)
color_init           with generator.global_color: ``identity`` (default) or ``moments``: a fresh run starts the colour
                     path at the per-channel mean/std transfer from the source to the target colours (wespe.color_pool;
                     F gets the inverse), measured steadier and better than learning it from batches
color_distribution_pool  with weights.color_distribution and generator.global_color: False = compare the batch's
                     blurred G(x) with its target patches; True = fit the colour path to whole sets instead:
                     colour(source colour pool) vs the target colour pool (wespe.color_pool; the batch term drops)
color_pool_photos    photos per side read (shrunken whole) for the colour pools of color_init / _distribution_pool
color_distribution_blur  compare the colours of blurred images (True: D_c's view, colour without texture) or of
                     the images themselves (False)
ema_warmup           TF's EMA warm-up min(decay, (1 + t) / (10 + t)) (True) or the plain decay from step 0 (False)
tv_through_color     with generator.global_color: whether the TV term's gradient reaches the colour path (True,
                     plain TV of G(x)) or only the residual path (False: smooth noise without flattening contrast)
ema_decay            exponential moving average of G's weights (0 = off, the papers), used for samples, the
                     exported generator and evaluation; warm-up min(decay, (1 + step) / (10 + step))
adversarial_form     ``dped_softmax`` (official code: per-sample real/fake swap, 2-way softmax, minimax
                     generator term), ``bce`` (non-saturating; the WESPE paper's -sum log D(G(x))),
                     ``lsgan``, ``hinge``
loss_normalization   ``sum`` (official code / WESPE formulas: adversarial terms summed over the batch,
                     paired colour loss summed over pixels / 2*batch) or ``mean`` (all means, most ports)
blur                 colour blur: ``dped_code`` (official 21x21 kernel, sigma ~4.34 px) or ``paper``
                     (Gaussian of variance 3)
content_layer        VGG-19 layer of the content loss (``relu5_4`` in both papers)
vgg_weights          path to imagenet-vgg-verydeep-19.mat / vgg19-*.pth / .npz, or ``random`` (demo stand-in)
vgg_preprocessing    ``auto`` (from the weights: MatConvNet -> ``dped``, torchvision and random -> ``imagenet``),
                     ``dped`` (x*255 - mean) or ``imagenet`` (mean/std)
vgg_cache_dir        where converted VGG weights are cached (None: $WESPE_CACHE_DIR or ~/.cache/wespe)
optimizer.lr_generator / lr_discriminator / b1 / b2 / eps   Adam (5e-4 for all networks in both papers)
optimizer.global_color_lr_scale   learning-rate multiplier of generator.global_color's 12 parameters (0 = frozen
                     at their color_init)
optimizer.global_color_b1   Adam's momentum for those parameters (0.99 averages their noisy per-batch gradient)
optimizer.warmup_steps   linear learning-rate warm-up from 0 (0 = none, the papers): without it Adam's first steps
                     move every weight by ~lr at once, which throws an identity-initialised G far off its input
compute_dtype        ``float32`` (default, as the papers) or ``bfloat16``: networks compute in bf16 from float32
                     parameters; losses, gradients and Adam stay float32 (mixed precision, for GPUs/TPUs)
mesh.data / mesh.fsdp   device mesh (``wespe.parallel``): the batch is split over data x fsdp devices; state is
                     replicated, or split over ``fsdp`` when it is > 1 (FSDP). -1 = all devices left over.
                     May change between resumes (a checkpoint restores onto any mesh)

data.source / target folders of photos (``--source`` / ``--target`` set them); paired by file name in ``dped``
                     mode (``data.paired`` None = follow the mode), unpaired otherwise
data.dped_root / dped_phone   read the DPED layout ``<root>/<phone>/training_data/{<phone>,canon}`` instead
data.builtin         ``demo``: build source/target from photos scikit-image ships (no download)
data.heldout         folder of source-camera photos kept out of training, for the sample grids (default: crops of
                     the training source folder; the demo uses its held-out photo)
data.heldout_reference  clean references of the data.heldout photos (same file names): every sample_every steps
                     the PSNR / SSIM of G(x) and of x against them are logged (quality/*), with a warning when
                     G(x) is worse than x. Without it, reference-free measures are logged instead
data.flips / rot90   random flips / 90-degree rotations of patches (off: the papers do not use them)
data.cache_max_bytes decode every image once and keep it in memory when the set fits (else stream)
log_every            metrics.jsonl / TensorBoard scalars every N steps (the NaN check runs every step)
sample_every         samples/step_<N>.png grids [x | G(x) | F(G(x))] on fixed crops of data.heldout (or source)
checkpoint_every     orbax checkpoint every N steps (and at the end, and on SIGTERM / Ctrl-C)
keep_checkpoints     how many checkpoints to keep
num_sample_crops     rows of the sample grids
allow_config_change  resume a workdir whose saved config differs (otherwise a clear error)
"""

from __future__ import annotations

import ml_collections

from wespe.errors import UserError


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.mode = "wespe"
    c.batch_size = 30
    c.patch_size = 100
    c.num_steps = 20000
    c.seed = 0
    c.generator = ml_collections.ConfigDict(dict(width=64, num_blocks=4, norm="instance", init="dped",
                                                 output="dped", global_color="none"))
    c.discriminator = ml_collections.ConfigDict(dict(head="dped_fc", norm="instance"))
    c.weights = ml_collections.ConfigDict(dict(content=1.0, color=5e-3, texture=5e-3, tv=10.0, identity=0.0,
                                               color_distribution=0.0, residual_lowpass=0.0,
                                               texture_distribution=0.0))
    c.ema_decay = 0.0
    c.ema_warmup = True
    c.tv_through_color = True
    c.color_distribution_blur = True
    c.color_init = "identity"
    c.color_distribution_pool = False
    c.color_pool_photos = 128
    c.adversarial_form = "bce"
    c.loss_normalization = "sum"
    c.blur = "dped_code"
    c.content_layer = "relu5_4"
    c.vgg_weights = ml_collections.FieldReference(None, field_type=str)
    c.vgg_preprocessing = "auto"
    c.vgg_cache_dir = ml_collections.FieldReference(None, field_type=str)
    c.optimizer = ml_collections.ConfigDict(dict(lr_generator=5e-4, lr_discriminator=5e-4, b1=0.9, b2=0.999,
                                                 eps=1e-8, global_color_lr_scale=1.0,
                                                 global_color_b1=0.9, warmup_steps=0))
    c.data = ml_collections.ConfigDict(dict(
        source=ml_collections.FieldReference(None, field_type=str),
        target=ml_collections.FieldReference(None, field_type=str),
        paired=ml_collections.FieldReference(None, field_type=bool),
        dped_root=ml_collections.FieldReference(None, field_type=str), dped_phone="iphone",
        builtin=ml_collections.FieldReference(None, field_type=str),
        heldout=ml_collections.FieldReference(None, field_type=str),
        heldout_reference=ml_collections.FieldReference(None, field_type=str),
        flips=False, rot90=False, cache_max_bytes=2 * 1024**3))
    c.compute_dtype = "float32"
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.log_every = 10
    c.sample_every = 500
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.num_sample_crops = 6
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
    c.loss_normalization = "sum"
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
