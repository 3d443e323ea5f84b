"""Training configs (wespe/config.py): the presets' documented values, laptop scale, saved configs, validation.

The preset numbers are the README's preset table (and the papers'); every experiments/ file loads and validates;
every error path of :func:`wespe.config.validate` names its key.
"""

import importlib.util
import json
import re
from pathlib import Path

import ml_collections
import pytest

from wespe import config as configs
from wespe.errors import UserError

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p for p in (REPO / "experiments").rglob("*.py") if "def get_config" in p.read_text())


def _get_config(path: Path) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(f"_test_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# ------------------------------------------------------------------------------------------------- presets

# README "preset | mode | content / colour / texture / TV | batch | adversarial form | normalisation".
PRESET_TABLE = {
    "wespe_paper": ("wespe", (1.0, 5e-3, 5e-3, 10.0), 30, "bce", "sum"),
    "dped_code": ("dped", (10.0, 0.5, 1.0, 2000.0), 50, "dped_softmax", "sum"),
    "wespe_plus": ("wespe", (1.0, 0.0, 5e-3, 0.0), 30, "bce", "sum"),
}


@pytest.mark.parametrize("name", sorted(PRESET_TABLE))
def test_presets_match_the_readme_table(name):
    mode, weights, batch, adversarial, normalization = PRESET_TABLE[name]
    c = configs.preset(name)
    assert c.mode == mode
    assert (c.weights.content, c.weights.color, c.weights.texture, c.weights.tv) == weights
    assert c.batch_size == batch
    assert c.adversarial_form == adversarial and c.loss_normalization == normalization
    # "All: 100x100 patches, Adam 5e-4, content on VGG-19 relu5_4, 20k iterations."
    assert c.patch_size == 100 and c.num_steps == 20000 and c.content_layer == "relu5_4"
    assert c.optimizer.lr_generator == c.optimizer.lr_discriminator == 5e-4
    configs.validate(c)


def test_wespe_plus_switches():
    c = configs.wespe_plus()
    assert (c.generator.output, c.generator.global_color, c.generator.init) == ("residual", "base_affine", "he")
    assert c.weights.residual_lowpass == 100.0
    assert c.weights.restoration == 10.0 and c.generator.norm == "none"
    assert c.color_init == "bandpass" and c.optimizer.global_color_lr_scale == 0.0
    assert c.optimizer.warmup_steps == 50 and c.ema_decay == 0.999


def test_the_papers_turn_every_extra_off():
    for c in (configs.wespe_paper(), configs.dped_code()):
        assert (c.generator.init, c.generator.output, c.generator.global_color) == ("dped", "dped", "none")
        extras = ("identity", "color_distribution", "residual_lowpass", "texture_distribution")
        assert all(c.weights[k] == 0.0 for k in extras)
        assert c.ema_decay == 0.0 and c.optimizer.warmup_steps == 0


def test_presets_by_name_are_fresh_copies():
    for name, make in configs.PRESETS.items():
        assert configs.preset(name).to_dict() == make().to_dict()
    changed = configs.preset("wespe_paper")
    changed.batch_size = 1
    changed.data.source = "elsewhere"  # a FieldReference: must not be shared between configs
    assert configs.preset("wespe_paper").batch_size == 30
    assert configs.preset("wespe_paper").data.source is None
    with pytest.raises(ValueError, match=r"unknown preset 'wespe'.*dped_code.*wespe_paper.*wespe_plus"):
        configs.preset("wespe")


def test_optional_keys_keep_their_type():
    """None by default, but a typed field: a command-line override parses as that type, a wrong type fails."""
    c = configs.base_config()
    assert c.vgg_weights is None and c.data.paired is None
    c.data.source = "photos"
    c.data.paired = True
    with pytest.raises(TypeError):
        c.data.paired = "yes"
    with pytest.raises(TypeError):
        c.vgg_cache_dir = 3


def test_laptop_scale():
    plus = configs.laptop_scale(configs.wespe_plus())
    assert (plus.batch_size, plus.patch_size, plus.num_steps) == (8, 48, 300)
    assert (plus.generator.width, plus.generator.num_blocks) == (16, 2)
    assert (plus.vgg_weights, plus.content_layer) == ("random", "relu1_2")
    assert (plus.log_every, plus.sample_every, plus.checkpoint_every, plus.num_sample_crops) == (10, 100, 100, 4)
    assert plus.ema_decay == 0.99  # an EMA is kept: the shorter decay
    assert configs.laptop_scale(configs.wespe_paper()).ema_decay == 0.0  # none kept: none added
    c = configs.dped_code()
    assert configs.laptop_scale(c) is c  # in place, so experiment files can chain it
    assert c.weights.tv == 2000.0 and c.mode == "dped"  # the preset's own keys stay


# ----------------------------------------------------------------------------------------------- saved configs

@pytest.mark.parametrize("name", sorted(configs.PRESETS))
def test_a_saved_config_reads_back_equal(name):
    c = configs.preset(name)
    saved = json.loads(c.to_json_best_effort())  # what config.json holds
    assert configs.from_saved(saved).to_dict() == c.to_dict()


def test_keys_missing_from_an_old_config_take_their_defaults():
    old = configs.from_saved({"mode": "dped", "batch_size": 7, "weights": {"content": 2.0}})
    assert (old.mode, old.batch_size, old.weights.content) == ("dped", 7, 2.0)
    assert old.weights.color == 5e-3 and old.weights.residual_lowpass == 0.0  # added later: off
    assert old.generator.global_color == "none" and old.ema_decay == 0.0


def test_resume_safe_keys_exist():
    c = configs.base_config()
    for key in configs.RESUME_SAFE_KEYS:
        node = c
        for part in key.split("."):
            assert part in node, key
            node = node[part]


# ------------------------------------------------------------------------------------------------ validation

def _set(key, value):
    def change(c):
        *parents, last = key.split(".")
        node = c
        for part in parents:
            node = node[part]
        node[last] = value
    return change


BAD_VALUES = {
    "mode": _set("mode", "cyclegan"),
    "generator.norm": _set("generator.norm", "layer"),
    "generator.init": _set("generator.init", "xavier"),
    "generator.output": _set("generator.output", "sigmoid"),
    "generator.global_color": _set("generator.global_color", "lut"),
    "discriminator.head": _set("discriminator.head", "patch"),
    "discriminator.norm": _set("discriminator.norm", "batch"),
    "adversarial_form": _set("adversarial_form", "wgan"),
    "loss_normalization": _set("loss_normalization", "median"),
    "blur": _set("blur", "box"),
    "content_layer": _set("content_layer", "relu9_9"),
    "vgg_preprocessing": _set("vgg_preprocessing", "caffe"),
    "compute_dtype": _set("compute_dtype", "float16"),
    "color_init": _set("color_init", "random"),
}


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_a_value_outside_its_choices_names_the_key(key):
    c = configs.wespe_paper()
    BAD_VALUES[key](c)
    with pytest.raises(configs.ConfigError, match=rf"^config\.{key}='\w+': must be one of \("):
        configs.validate(c)


BAD_COMBINATIONS = [
    (_set("generator.global_color", "affine"), r"generator.global_color needs config.generator.output='residual'"),
    (_set("color_init", "moments"), r"color_init='moments' sets the global colour path"),
    (_set("color_distribution_pool", True), r"color_distribution_pool=True sets the global colour path"),
]


@pytest.mark.parametrize("change, match", BAD_COMBINATIONS, ids=[m.split(" ")[0] for _, m in BAD_COMBINATIONS])
def test_a_value_the_step_cannot_use_is_one_clear_error(change, match):
    c = configs.wespe_paper()
    change(c)
    with pytest.raises(configs.ConfigError, match=match) as caught:
        configs.validate(c)
    assert isinstance(caught.value, UserError)  # the CLIs print it as one "error:" line


def _numeric_keys(config, prefix="") -> set[str]:
    keys = set()
    for key, value in config.items():
        if hasattr(value, "items"):
            keys |= _numeric_keys(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            keys.add(prefix + key)
        elif value is None and config.get_type(key) in (int, float):  # optional numbers (None = not set)
            keys.add(prefix + key)
    return keys


def test_every_numeric_key_has_a_range():
    assert set(configs.NUMERIC_RANGES) == _numeric_keys(configs.base_config())


# A value just outside each numeric key's range, of the key's own type (a config file or override may give it).
OUT_OF_RANGE = {
    "batch_size": (0, "must be >= 1"), "patch_size": (0, "must be >= 1"), "num_steps": (0, "must be >= 1"),
    "seed": (-1, "must be >= 0"), "generator.width": (0, "must be >= 1"), "generator.num_blocks": (-1, "must be >= 0"),
    **{f"weights.{term}": (-0.5, "must be >= 0 (0 turns the term off)")
       for term in ("content", "color", "texture", "tv", "identity", "color_distribution", "residual_lowpass",
                    "texture_distribution", "restoration")},
    "degradation.blur_sigma": (-0.5, "must be in [0, 3] px"), "degradation.noise_sigma": (0.75, "must be in [0, 0.5]"),
    "degradation.jpeg_quality": (0.5, "must be 0 (no JPEG) or in [1, 100]"),
    "degradation.jitter": (1.0, "must be in [0, 1)"), "degradation.fit_crops": (0, "must be >= 1"),
    "ema_decay": (1.0, "must be in [0, 1) (0 = no EMA)"),
    "color_pool_photos": (0, "must be >= 1"),
    "optimizer.lr_generator": (-0.5, "must be > 0"), "optimizer.lr_discriminator": (0.0, "must be > 0"),
    "optimizer.b1": (1.0, "must be in [0, 1)"), "optimizer.b2": (-0.1, "must be in [0, 1)"),
    "optimizer.eps": (0.0, "must be > 0"),
    "optimizer.global_color_lr_scale": (-1.0, "must be >= 0 (0 freezes the colour path)"),
    "optimizer.global_color_b1": (1.5, "must be in [0, 1)"),
    "optimizer.warmup_steps": (-1, "must be >= 0"), "data.cache_max_bytes": (-1, "must be >= 0"),
    "mesh.data": (0, "must be >= 1, or -1"), "mesh.fsdp": (-2, "must be >= 1, or -1"),
    "log_every": (0, "must be >= 1"), "sample_every": (0, "must be >= 1"), "checkpoint_every": (0, "must be >= 1"),
    "keep_checkpoints": (0, "must be >= 1"), "num_sample_crops": (0, "must be >= 1"),
}
FLOAT_KEYS = sorted(k for k in OUT_OF_RANGE if isinstance(OUT_OF_RANGE[k][0], float))


def test_every_numeric_range_is_tested():
    assert set(OUT_OF_RANGE) == set(configs.NUMERIC_RANGES)


@pytest.mark.parametrize("key", sorted(OUT_OF_RANGE))
def test_a_number_out_of_its_range_names_the_key_and_the_range(key):
    value, requirement = OUT_OF_RANGE[key]
    c = configs.wespe_paper()
    _set(key, value)(c)
    with pytest.raises(configs.ConfigError, match=re.escape(f"config.{key}={value!r}: {requirement}")) as caught:
        configs.validate(c)
    assert (caught.value.key, caught.value.value) == (key, value)  # what the command lines name
    assert caught.value.requirement.startswith("must be")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_no_float_key_takes_nan_or_inf(key, value):
    c = configs.wespe_paper()
    _set(key, value)(c)
    with pytest.raises(configs.ConfigError, match=re.escape(f"config.{key}={value!r}: must be finite and ")):
        configs.validate(c)


def test_the_edges_of_the_ranges_validate():
    c = configs.wespe_paper()
    for key, value in (("optimizer.lr_generator", 1e-12), ("optimizer.b1", 0.0), ("optimizer.b2", 0.999999),
                       ("ema_decay", 0.0), ("weights.tv", 0.0), ("generator.num_blocks", 0), ("seed", 0),
                       ("mesh.data", -1), ("mesh.fsdp", 1), ("data.cache_max_bytes", 0), ("batch_size", 1)):
        _set(key, value)(c)
    configs.validate(c)


def test_every_allowed_switch_validates():
    c = configs.wespe_plus()
    for global_color in ("affine", "base_affine"):
        c.generator.global_color = global_color
        c.color_distribution_pool = True
        configs.validate(c)
    c = configs.wespe_paper()
    c.generator.output = "residual"  # a residual G without the colour path
    c.compute_dtype, c.blur, c.loss_normalization = "bfloat16", "paper", "mean"
    configs.validate(c)


# ------------------------------------------------------------------------------------------ experiment files

def test_the_experiment_files_are_found():
    names = {str(p.relative_to(REPO / "experiments")) for p in EXPERIMENTS}
    assert {"demo.py", "wespe_plus.py", "wespe_paper.py", "dped_paired.py", "quality/wespe_plus.py"} <= names


@pytest.mark.parametrize("name", sorted(configs.PRESETS))
def test_every_preset_validates_full_size_and_at_laptop_scale(name):
    configs.validate(configs.preset(name))
    configs.validate(configs.laptop_scale(configs.preset(name)))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[str(p.relative_to(REPO)) for p in EXPERIMENTS])
def test_experiment_files_load_and_validate(path):
    c = _get_config(path)
    configs.validate(c)
    assert _get_config(path).to_dict() == c.to_dict()  # deterministic, a fresh config each call


def test_experiment_files_are_their_presets():
    plus = _get_config(REPO / "experiments" / "wespe_plus.py")
    assert plus.to_dict() == configs.wespe_plus().to_dict()
    assert _get_config(REPO / "experiments" / "wespe_paper.py").to_dict() == configs.wespe_paper().to_dict()
    demo = _get_config(REPO / "experiments" / "demo.py")
    assert demo.data.builtin == "demo" and demo.num_steps == 300 and demo.generator.global_color == "base_affine"
    paired = _get_config(REPO / "experiments" / "dped_paired.py")
    assert paired.mode == "dped" and paired.data.paired is True and paired.weights.tv == 2000.0
    quality_paired = _get_config(REPO / "experiments" / "quality" / "dped_paired.py")
    assert (quality_paired.weights.texture, quality_paired.weights.tv, quality_paired.ema_decay) == (0.05, 10.0, 0.99)
