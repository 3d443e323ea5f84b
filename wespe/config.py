"""Training configuration: the presets of the two papers and every key they share.

Configs are ``ml_collections.ConfigDict``s; experiment files in ``experiments/`` start from a preset here and
override keys (``--config.batch_size=30`` on the command line). Every key is documented where
:func:`base_config` sets it, with its paper / official-code meaning; the presets below say only what they change.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

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
    # ``dped`` (official truncated-normal 0.01 convs) or ``he``.
    c.discriminator.init = "dped"
    # What the texture adversary sees: ``gray`` (the papers: grayscale) or ``highpass`` (grayscale minus its
    # Gaussian blur, sigma 1 px, x8: noise, blur and JPEG blocks without the scene's shading; wespe.ops).
    c.discriminator.texture_input = "gray"

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

    # L1 distance between G(D(y)) and y on the batch's target photos y, D the source camera's degradation fitted
    # to the two sets (wespe.degradation; wespe mode; 0 = the papers): paired examples of local restoration
    # (noise, blur, JPEG) made from the clean side.
    c.weights.restoration = 0.0

    c.degradation = ml_collections.ConfigDict()
    # The camera model of weights.restoration: None = fitted to the training sets at the start of a run
    # (workdir/degradation.json), a number = that value (blur sigma in px, noise sigma of [0, 1] RGB, JPEG
    # quality 1-100 or 0 for none).
    c.degradation.blur_sigma = _optional(float)
    c.degradation.noise_sigma = _optional(float)
    c.degradation.jpeg_quality = _optional(float)
    # Every degraded patch draws its parameters times U(1 - jitter, 1 + jitter) around the fit: a camera's
    # photos vary, and a fit from a few photos is uncertain, so G learns to restore a range.
    c.degradation.jitter = 0.5
    # Crops per side the fit compares.
    c.degradation.fit_crops = 64

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
    # With generator.global_color: ``identity``, ``moments`` or ``bandpass``: a fresh run starts the colour path
    # at the per-channel mean/std transfer from the source to the target colours (wespe.training.color_pool; F gets the
    # inverse), measured steadier and better than learning it from batches; ``bandpass`` takes the gains from
    # the two sets' band-pass contrast instead of their global std (less tied to the scenes' layout: +0.2 to
    # +1.0 dB on three cameras, wespe.color_map.fitted_colour_map).
    c.color_init = "identity"
    # With weights.color_distribution and generator.global_color: False = compare the batch's blurred G(x) with
    # its target patches; True = fit the colour path to whole sets instead: colour(source colour pool) vs the
    # target colour pool (wespe.training.color_pool; the batch term drops).
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

    c.optimizer = ml_collections.ConfigDict({
        # Adam (5e-4 for all networks in both papers).
        "lr_generator": 5e-4, "lr_discriminator": 5e-4, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
        # Learning-rate multiplier of generator.global_color's 12 parameters (0 = frozen at their color_init).
        "global_color_lr_scale": 1.0,
        # Adam's momentum for those parameters (0.99 averages their noisy per-batch gradient).
        "global_color_b1": 0.9,
        # Linear learning-rate warm-up from 0 (0 = none, the papers): without it Adam's first steps move every
        # weight by ~lr at once, which throws an identity-initialised G far off its input.
        "warmup_steps": 0,
    })

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
    """The recommended unpaired recipe: WESPE plus an identity-initialised residual G without normalisation whose
    global colour path is fitted to the two sets' colours (gains from their band-pass contrast, offsets from their
    means and black points) and stretches only the base layer, no colour GAN, no TV, a low-pass penalty on the
    residual, paired restoration examples from the source camera fitted to the sets, and an EMA of G
    (experiments/wespe_plus.py says why each is on; README: Results)."""
    c = wespe_paper()
    c.generator.update(dict(init="he", output="residual", global_color="base_affine", norm="none"))
    c.weights.update(dict(color=0.0, residual_lowpass=100.0, tv=0.0, restoration=10.0))
    c.color_init = "bandpass"
    c.optimizer.global_color_lr_scale = 0.0  # the colour path stays at the fitted map
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
    """A config value the run cannot use. When one key is to blame, ``key`` (dotted), ``value`` and ``requirement``
    ("must be > 0") say which, so a command line can name the ``--config.<key>=<value>`` the user typed."""

    def __init__(self, message: str, key: str | None = None, value=None, requirement: str | None = None):
        super().__init__(message)
        self.key, self.value, self.requirement = key, value, requirement

    @classmethod
    def for_key(cls, key: str, value, requirement: str) -> "ConfigError":
        return cls(f"config.{key}={value!r}: {requirement}", key, value, requirement)


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric key may take: finite numbers for which ``test`` holds; ``meaning`` says which."""
    test: Callable[[float], bool]
    meaning: str

    def requirement(self, value) -> str | None:
        """None when ``value`` is allowed, else what it must be ("must be > 0")."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number {self.meaning}"
        if not math.isfinite(value):
            return f"must be finite and {self.meaning}"
        return None if self.test(value) else f"must be {self.meaning}"


POSITIVE = Range(lambda v: v > 0, "> 0")
NON_NEGATIVE = Range(lambda v: v >= 0, ">= 0")
AT_LEAST_ONE = Range(lambda v: v >= 1, ">= 1")
DECAY = Range(lambda v: 0 <= v < 1, "in [0, 1)")
MESH_AXIS = Range(lambda v: v == -1 or v >= 1, ">= 1, or -1 for the devices left over")

# Every numeric key of base_config() and the range its meaning allows (tests/test_config.py checks that no numeric
# key is missing). NaN and inf fail every range: one would only surface as a diverged run or a destroyed G.
NUMERIC_RANGES: dict[str, Range] = {
    "batch_size": AT_LEAST_ONE,
    "patch_size": AT_LEAST_ONE,
    "num_steps": AT_LEAST_ONE,
    "seed": Range(lambda v: v >= 0, ">= 0 (a data-pipeline seed)"),
    "generator.width": AT_LEAST_ONE,
    "generator.num_blocks": NON_NEGATIVE,
    # Loss weights: a negative weight maximises its loss.
    **{f"weights.{term}": Range(lambda v: v >= 0, ">= 0 (0 turns the term off)")
       for term in ("content", "color", "texture", "tv", "identity", "color_distribution", "residual_lowpass",
                    "texture_distribution", "restoration")},
    "degradation.blur_sigma": Range(lambda v: 0 <= v <= 3.0, "in [0, 3] px (None: fitted)"),
    "degradation.noise_sigma": Range(lambda v: 0 <= v <= 0.5, "in [0, 0.5] (None: fitted)"),
    "degradation.jpeg_quality": Range(lambda v: v == 0 or 1 <= v <= 100, "0 (no JPEG) or in [1, 100] (None: fitted)"),
    "degradation.jitter": Range(lambda v: 0 <= v < 1, "in [0, 1)"),
    "degradation.fit_crops": AT_LEAST_ONE,
    "ema_decay": Range(lambda v: 0 <= v < 1, "in [0, 1) (0 = no EMA)"),
    "color_pool_photos": AT_LEAST_ONE,
    # Adam: a learning rate <= 0 stands still or climbs the loss; a beta of 1 never forgets its first gradient.
    "optimizer.lr_generator": POSITIVE,
    "optimizer.lr_discriminator": POSITIVE,
    "optimizer.b1": DECAY,
    "optimizer.b2": DECAY,
    "optimizer.eps": POSITIVE,
    "optimizer.global_color_lr_scale": Range(lambda v: v >= 0, ">= 0 (0 freezes the colour path)"),
    "optimizer.global_color_b1": DECAY,
    "optimizer.warmup_steps": Range(lambda v: v >= 0, ">= 0 (0 = no warm-up)"),
    "data.cache_max_bytes": Range(lambda v: v >= 0, ">= 0 (0 = always stream)"),
    "mesh.data": MESH_AXIS,
    "mesh.fsdp": MESH_AXIS,
    "log_every": AT_LEAST_ONE,
    "sample_every": AT_LEAST_ONE,
    "checkpoint_every": AT_LEAST_ONE,
    "keep_checkpoints": AT_LEAST_ONE,
    "num_sample_crops": AT_LEAST_ONE,
}


def get_key(config: ml_collections.ConfigDict, key: str):
    """The value of the dotted ``key`` ("optimizer.lr_generator")."""
    for part in key.split("."):
        config = config[part]
    return config


def set_key(config: ml_collections.ConfigDict, key: str, value) -> None:
    """Sets the dotted ``key`` ("optimizer.lr_generator") of ``config`` to ``value``."""
    parent, _, leaf = key.rpartition(".")
    (get_key(config, parent) if parent else config)[leaf] = value


def validate(config: ml_collections.ConfigDict) -> None:
    """Fail early, naming the key, on values the step would only reject after compiling, and on numbers outside
    the range their meaning allows (:data:`NUMERIC_RANGES`), which the step would take without complaint."""
    _check_choices(config)
    _check_ranges(config)
    _check_combinations(config)


def _check_choices(config: ml_collections.ConfigDict) -> None:
    from wespe.losses import ADVERSARIAL_FORMS, NORMALIZATIONS
    from wespe.models import DISCRIMINATOR_HEADS, GLOBAL_COLORS, INITS, NORMS, OUTPUTS
    from wespe.ops import BLUR_MODES, TEXTURE_INPUTS
    from wespe.vgg import LAYERS, PREPROCESSING

    choices = {"mode": ("wespe", "dped"),
               "generator.norm": NORMS,
               "generator.init": INITS,
               "generator.output": OUTPUTS,
               "generator.global_color": GLOBAL_COLORS,
               "discriminator.head": DISCRIMINATOR_HEADS,
               "discriminator.norm": ("instance", "none"),
               "discriminator.init": INITS,
               "discriminator.texture_input": TEXTURE_INPUTS,
               "adversarial_form": ADVERSARIAL_FORMS,
               "loss_normalization": NORMALIZATIONS,
               "blur": BLUR_MODES,
               "content_layer": LAYERS,
               "vgg_preprocessing": ("auto",) + PREPROCESSING,
               "compute_dtype": ("float32", "bfloat16"),
               "color_init": ("identity", "moments", "bandpass")}
    for key, allowed in choices.items():
        value = get_key(config, key)
        if value not in allowed:
            raise ConfigError.for_key(key, value, f"must be one of {tuple(allowed)}")


# Numeric keys whose None means "not set" (fitted, for the degradation's parameters).
OPTIONAL_NUMERIC = ("degradation.blur_sigma", "degradation.noise_sigma", "degradation.jpeg_quality")


def _check_ranges(config: ml_collections.ConfigDict) -> None:
    for key, allowed in NUMERIC_RANGES.items():
        value = get_key(config, key)
        if value is None and key in OPTIONAL_NUMERIC:
            continue
        requirement = allowed.requirement(value)
        if requirement is not None:
            raise ConfigError.for_key(key, value, requirement)


def _check_combinations(config: ml_collections.ConfigDict) -> None:
    if config.weights.restoration > 0 and config.mode != "wespe":
        raise ConfigError.for_key("weights.restoration", config.weights.restoration,
                                  "must be 0 in dped mode (its pairs are real: the degradation is for unpaired sets)")
    if config.generator.global_color != "none" and config.generator.output != "residual":
        raise ConfigError("config.generator.global_color needs config.generator.output='residual'")
    for key, value, off in (("color_init", config.color_init, "identity"),
                            ("color_distribution_pool", config.color_distribution_pool, False)):
        if value != off and config.generator.global_color == "none":
            raise ConfigError(f"config.{key}={value!r} sets the global colour path: it needs "
                              "config.generator.global_color='affine'")
