"""A public real-photo quality benchmark, one command: classical baselines and trained presets, several seeds.

    pip install -e ".[quality]"
    python launch/quality.py --output_dir=runs/quality            # presets of experiments/quality/, seeds 0,1,2
    python launch/quality.py --output_dir=runs/quality --skip_training            # baselines only, seconds

Photos (real photos every install has; no download), with their licences as the installed packages state them
(quoted in full in :data:`PHOTOS` and in every results.json / results.md):

  astronaut         scikit-image   NASA; "No known copyright restrictions, released into the public domain."
  chelsea           scikit-image   "No copyright restrictions.  CC0 by the photographer (Stefan van der Walt)."
  coffee            scikit-image   "No copyright restrictions.  CC0 by the photographer (Rachel Michetti)."
  rocket            scikit-image   SpaceX; "released in the public domain"
  motorcycle_left,  scikit-image   Middlebury 2014 stereo data set (Scharstein et al., GCPR 2014): the installed
  motorcycle_right                 package states no licence (skimage/data/README.txt names none); cite the paper
  grace_hopper      matplotlib     US Navy photograph, public domain (work of the US federal government);
                                   sample_data/README.txt states no licence, the JPEG comment names its source,
                                   commons.wikimedia.org/wiki/File:Grace_Hopper.jpg
  china, flower     scikit-learn   CC BY 2.0 (sklearn/datasets/images/README.txt: "Released under a creative
                                   commons license", "Some rights reserved by danielbuechele"): attribution required

:data:`SPLIT` (data, so it can be changed) holds whole photos out for the test and cuts every training photo
into two halves across its width (at ``width // 2``), one half per training side, alternating which:

  test    (held out, whole; degraded, scored against the clean original):  chelsea, grace_hopper, flower
  train   (cut in halves; the k-th photo in this order, k from 0):         astronaut, coffee, motorcycle_left,
                                                                            rocket, china
    source  (degraded; the unpaired training side):  the left half of even k, the right half of odd k
    target  (clean; the unpaired training side):     the other half
    paired  (degraded and clean, pixel-aligned):     the source half both ways (the supervised ``dped`` reference)

The task stays unpaired: the two halves of a photo are different pixels, never the same region, so no pixel is
on both sides; both sides show the same kinds of scenes, as DPED's phone and DSLR sets do. No test scene is on
either side. ``motorcycle_right`` (the other view of the stereo pair) is not used: its halves would put nearly
the same part of that scene on both sides, a few dozen pixels apart. Why halves and not whole photos per side (the first split: three whole photos per side): unpaired
learning matches the *distributions* of the two sides, so with a handful of photos a side's scene content leaks
into what is learned (on the built-in demo, :mod:`wespe.demo`, matching the colour moments of whole-photo sides
made the held-out photo worse, 18.3 dB vs the input's 22.7 dB; with halves of the same photos on each side,
26.2 dB). Real unpaired sets (thousands of photos per camera) share scene statistics by their size.

The degradation is :func:`wespe.camera.camera_model`: a different camera drawn for every degraded photo from
ranges around the demo's camera (blur, low contrast and exposure, a warm cast, noise, JPEG 30-45) by a NumPy
random generator seeded with ``[data_seed, k]`` for the k-th degraded photo (training photos first, then test
photos). A training photo is degraded whole, then cut. The draws and, for every training photo, which half went
to the source are saved as ``camera_params.json``. :func:`prepare` writes the PNG folders once.

Methods, all scored by :func:`wespe.evaluation.evaluate` on the whole held-out photos against the clean ones:

* ``input``: the degraded photo itself (the bar to beat);
* classical baselines (:data:`BASELINES`, pure NumPy, deterministic): :func:`grey_world_autocontrast`,
  :func:`unsharp`, :func:`classical_combo`; their outputs are written as PNGs and scored in outputs mode;
* colour transfers fitted to the training sets (:func:`fitted_baselines`, no network): what wespe_plus's colour
  path does before training, so the table shows what training adds;
* trained presets (``name -> experiment config file``), one training run per seed (:func:`preset_config` says
  what is overridden), scored in model mode; a finished run in ``runs/<preset>/seed_<s>`` is reused.

:func:`run_benchmark` writes ``results.json`` (per-seed aggregates, mean and std over seeds, deltas vs the
input, camera draws, halves, split, licences, the command to rerun), ``results.md`` (one row per method) and
``grid.png`` (centre crops: input | baselines | presets (first seed) | clean).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from wespe import config as configs
from wespe import evaluation, loop
from wespe.errors import JobFailed, UserError
from wespe.camera import CAMERA_RANGES, apply_camera, camera_model, draw_camera  # noqa: F401 - re-exported
from wespe.export import load_generator
from wespe.files import atomic_write

QUALITY_EXTRA = 'pip install -e ".[quality]"'

_MIDDLEBURY = ("Middlebury 2014 stereo data set (Scharstein et al., GCPR 2014), down-sampled 4x by scikit-image. "
               "No licence is stated in the installed scikit-image: skimage/data/README.txt names no licence and "
               "the stereo_motorcycle() docstring only credits the data set ('The two images are part of the "
               "Middlebury 2014 stereo benchmark. The dataset was created by Nera Nesic, Porter Westling, Xi Wang, "
               "York Kitajima, Greg Krathwohl, and Daniel Scharstein at Middlebury College.'); cite the paper.")
_SKLEARN = ("scikit-learn sklearn/datasets/images/README.txt: 'Released under a creative commons license. [1] "
            "Attribution: Some rights reserved by danielbuechele [2]', [1] = "
            "https://creativecommons.org/licenses/by/2.0/ (CC BY 2.0: attribution required)")
PHOTOS = {
    "astronaut": {"package": "scikit-image", "call": "skimage.data.astronaut()",
                  "licence": "skimage.data.astronaut docstring: 'No known copyright restrictions, released into the "
                             "public domain.' (NASA Great Images database, https://flic.kr/p/r9qvLn)"},
    "chelsea": {"package": "scikit-image", "call": "skimage.data.chelsea()",
                "licence": "skimage.data.chelsea docstring: 'No copyright restrictions.  CC0 by the photographer "
                           "(Stefan van der Walt).'"},
    "coffee": {"package": "scikit-image", "call": "skimage.data.coffee()",
               "licence": "skimage.data.coffee docstring: 'No copyright restrictions.  CC0 by the photographer "
                          "(Rachel Michetti).' (courtesy of Pikolo Espresso Bar)"},
    "rocket": {"package": "scikit-image", "call": "skimage.data.rocket()",
               "licence": "skimage.data.rocket docstring: 'The image was captured by SpaceX and released in the "
                          "public domain.'"},
    "motorcycle_left": {"package": "scikit-image", "call": "skimage.data.stereo_motorcycle()[0]",
                        "licence": _MIDDLEBURY},
    "motorcycle_right": {"package": "scikit-image", "call": "skimage.data.stereo_motorcycle()[1]",
                         "licence": _MIDDLEBURY},
    "grace_hopper": {"package": "matplotlib", "call": "matplotlib.cbook.get_sample_data('grace_hopper.jpg')",
                     "licence": "Official US Navy photograph of Grace Hopper: a work of the US federal government, "
                                "public domain. matplotlib's mpl-data/sample_data/README.txt states no licence; the "
                                "file's JPEG comment reads 'File source: "
                                "http://commons.wikimedia.org/wiki/File:Grace_Hopper.jpg'."},
    "china": {"package": "scikit-learn", "call": "sklearn.datasets.load_sample_image('china.jpg')",
              "licence": _SKLEARN + "; photo https://www.flickr.com/photos/danielbuechele/6061409035"},
    "flower": {"package": "scikit-learn", "call": "sklearn.datasets.load_sample_image('flower.jpg')",
               "licence": _SKLEARN + "; the README's links for this photo point to the Flickr user vultilion: "
                          "https://www.flickr.com/photos/vultilion/6056698931"},
}
SPLIT = {"test": ("chelsea", "grace_hopper", "flower"),
         "train": ("astronaut", "coffee", "motorcycle_left", "rocket", "china")}
# How prepare() uses the train photos; in every READY recipe, so a folder prepared another way is an error.
TRAIN_LAYOUT = ("halves: each train photo degraded whole, then cut at width // 2; even k: degraded left half -> "
                "source, clean right half -> target; odd k: degraded right half -> source, clean left half -> "
                "target; paired/ = the source half, degraded and clean")
METRICS = ("psnr_mean", "psnr_pooled", "ssim_rgb_mean", "ms_ssim_mean", "entropy_mean")
GRID_CROP = 192


class MissingDependencyError(UserError):
    """A package that ships some of the benchmark's photos is not installed."""


class PresetError(UserError):
    """A preset (``name=config_path``) that cannot be used: bad syntax, missing file, no ``get_config()``."""


class TrainingInterrupted(JobFailed):
    """A training run stopped before its last step (SIGTERM / Ctrl-C); rerunning the command resumes it."""


# ---------------------------------------------------------------------------------------------------- photos

def load_photo(name: str) -> np.ndarray:
    """The photo ``name`` of :data:`PHOTOS` as uint8 RGB (H, W, 3)."""
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; expected one of {sorted(PHOTOS)}")
    package = PHOTOS[name]["package"]
    if package == "scikit-image":
        import skimage.data
        if name.startswith("motorcycle_"):
            left, right, _ = skimage.data.stereo_motorcycle()
            return left if name == "motorcycle_left" else right
        return getattr(skimage.data, name)()
    if package == "matplotlib":
        import matplotlib.cbook
        with matplotlib.cbook.get_sample_data(f"{name}.jpg") as f:
            return np.asarray(Image.open(f).convert("RGB"))
    try:
        from sklearn.datasets import load_sample_image
    except ImportError as e:
        raise MissingDependencyError(f"the benchmark photo {name}.jpg ships with scikit-learn, which is not "
                                     f"installed ({e}): {QUALITY_EXTRA}") from None
    return np.asarray(load_sample_image(f"{name}.jpg"))


def _downscale(image: np.ndarray, max_side: int | None) -> np.ndarray:
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


# ------------------------------------------------------------------------------------------------ prepared data

@dataclasses.dataclass(frozen=True)
class BenchmarkData:
    """The folders :func:`prepare` wrote (PNG files named ``<photo>.png`` in every folder)."""

    root: str
    source: str  # one half of each train photo, degraded (unpaired training side)
    target: str  # the other half of each train photo, clean (unpaired training side; no pixel of source/)
    test_degraded: str  # held-out photos, whole, degraded
    test_clean: str  # their clean originals (the references)
    paired_source: str  # the source halves degraded (same files as source/) ...
    paired_target: str  # ... and the same halves clean, pixel-aligned: the supervised reference (``dped`` mode)
    camera_params: str  # camera_params.json: the camera drawn for every degraded photo, the halves


def _layout(root: Path) -> BenchmarkData:
    return BenchmarkData(root=str(root), source=str(root / "source"), target=str(root / "target"),
                         test_degraded=str(root / "test" / "degraded"), test_clean=str(root / "test" / "clean"),
                         paired_source=str(root / "paired" / "source"), paired_target=str(root / "paired" / "target"),
                         camera_params=str(root / "camera_params.json"))


def _write_png(path: Path, image: np.ndarray) -> None:
    with atomic_write(path) as f:
        Image.fromarray(image).save(f, format="PNG")


def prepare(root: str | Path, seed: int = 0, *, split: dict | None = None, max_side: int | None = None
            ) -> BenchmarkData:
    """Write the benchmark folders under ``root`` once (a ``READY`` marker; deterministic) and return them.

    ``split``: ``{"test": names, "train": names}`` (default :data:`SPLIT`); a photo may be in one split only.
    The k-th train photo (k from 0, in ``split["train"]`` order) is degraded whole by the camera drawn with
    ``[seed, k]``, then cut at ``width // 2``: for even k the source gets the degraded left half and the target
    the clean right half, for odd k the source the degraded right half and the target the clean left half;
    ``paired/source`` and ``paired/target`` get the source half degraded and clean. Test photos stay whole, each
    degraded by the camera drawn with ``[seed, len(train) + i]``. ``max_side``: downscale every clean photo first
    (before any cut) so its longer side is at most this (Lanczos; quick tests). Files are written atomically, so
    concurrent preparers only see complete, identical files. A folder prepared with another seed, split, layout
    (:data:`TRAIN_LAYOUT`) or max_side is an error (use another ``root``).
    """
    split = {k: tuple(v) for k, v in (split or SPLIT).items()}
    if set(split) != {"test", "train"}:
        raise ValueError(f"split needs exactly the keys test and train (each train photo is cut in halves, one "
                         f"half per training side), not {sorted(split)}")
    names = [n for v in split.values() for n in v]
    if len(set(names)) != len(names):
        raise ValueError(f"a photo appears in more than one split (or twice): {split}")
    root = Path(root)
    marker = root / "READY"
    recipe = {"seed": int(seed), "max_side": max_side, "split": {k: list(v) for k, v in split.items()},
              "train_layout": TRAIN_LAYOUT}
    if marker.exists():
        found = json.loads(marker.read_text())
        if found != recipe:
            raise UserError(f"{root} was prepared with {found}, not {recipe}: use another folder")
        return _layout(root)
    clean = {name: _downscale(load_photo(name), max_side) for name in names}  # all loads first: fail early
    data = _layout(root)
    cameras, halves = {}, {}
    for k, name in enumerate(split["train"]):
        photo = clean[name]
        degraded, cameras[name] = camera_model(photo, np.random.default_rng([int(seed), k]))
        cut = photo.shape[1] // 2
        sides = {"left": slice(0, cut), "right": slice(cut, None)}
        source_side, target_side = ("left", "right") if k % 2 == 0 else ("right", "left")
        source_half, target_half = sides[source_side], sides[target_side]
        halves[name] = {"source": source_side, "target": target_side, "cut_x": cut, "width": photo.shape[1]}
        source = np.ascontiguousarray(degraded[:, source_half])
        _write_png(Path(data.source) / f"{name}.png", source)
        _write_png(Path(data.target) / f"{name}.png", np.ascontiguousarray(photo[:, target_half]))
        _write_png(Path(data.paired_source) / f"{name}.png", source)
        _write_png(Path(data.paired_target) / f"{name}.png", np.ascontiguousarray(photo[:, source_half]))
    for k, name in enumerate(split["test"], start=len(split["train"])):
        degraded, cameras[name] = camera_model(clean[name], np.random.default_rng([int(seed), k]))
        _write_png(Path(data.test_degraded) / f"{name}.png", degraded)
        _write_png(Path(data.test_clean) / f"{name}.png", clean[name])
    with atomic_write(data.camera_params) as f:
        f.write((json.dumps({"recipe": recipe, "ranges": CAMERA_RANGES, "cameras": cameras, "halves": halves},
                            indent=2) + "\n").encode())
    with atomic_write(marker) as f:
        f.write((json.dumps(recipe) + "\n").encode())
    return data


# ----------------------------------------------------------------------------------------- classical baselines

_LUMA = np.array([0.299, 0.587, 0.114])


def grey_world(x: np.ndarray) -> np.ndarray:
    """Grey-world white balance of a float RGB image: scale each channel so its mean equals the mean of the three
    channel means (a neutral average colour). Not clipped: the caller decides (values may exceed 1)."""
    x = np.asarray(x, np.float64)
    means = x.reshape(-1, 3).mean(0)
    return x * (means.mean() / np.maximum(means, 1e-8))


def autocontrast(x: np.ndarray, low: float = 0.5, high: float = 99.5, clip: bool = True) -> np.ndarray:
    """Luma percentile stretch: the ``low`` / ``high`` percentiles of the BT.601 luma map to 0 / 1, by one affine
    map applied to all three channels (so the colour balance is kept). A flat image is returned as is."""
    x = np.asarray(x, np.float64)
    lo, hi = np.percentile(x @ _LUMA, [low, high])
    if hi - lo < 1e-8:
        return np.clip(x, 0, 1) if clip else x
    y = (x - lo) / (hi - lo)
    return np.clip(y, 0, 1) if clip else y


def grey_world_autocontrast(x: np.ndarray) -> np.ndarray:
    """Grey-world white balance, then the luma 0.5% / 99.5% percentile stretch; float RGB in [0, 1] -> [0, 1]."""
    return autocontrast(grey_world(x))


def unsharp(x: np.ndarray, sigma: float = 1.5, amount: float = 0.8) -> np.ndarray:
    """Unsharp mask ``x + amount * (x - gaussian(x, sigma))`` per channel, clipped to [0, 1]: the formula of
    ``skimage.filters.unsharp_mask(x, radius=sigma, amount=amount, channel_axis=2)`` (a Gaussian truncated at 4
    sigma, border mode ``reflect``)."""
    import scipy.ndimage
    x = np.asarray(x, np.float64)
    blurred = np.stack([scipy.ndimage.gaussian_filter(x[..., c], sigma, mode="reflect") for c in range(3)], -1)
    return np.clip(x + amount * (x - blurred), 0, 1)


def classical_combo(x: np.ndarray) -> np.ndarray:
    """:func:`grey_world_autocontrast` followed by :func:`unsharp`."""
    return unsharp(grey_world_autocontrast(x))


BASELINES = {"grey_world_autocontrast": grey_world_autocontrast, "unsharp": unsharp,
             "classical_combo": classical_combo}


def fitted_baselines(data: BenchmarkData) -> dict:
    """Colour transfers fitted to the unpaired training sets, no network: the per-channel mean/std transfer of
    :func:`wespe.color_pool.moment_transfer` from the source set's colours to the target set's (the pools
    wespe_plus builds), applied to every pixel (``moment_transfer``) or, as wespe_plus's colour path does, to a
    Gaussian base layer with the detail passed through (``moment_transfer_base``: exactly wespe_plus's
    generator before its first training step). They show what the trained networks add to the colour fit."""
    import jax.numpy as jnp
    from flax import nnx

    from wespe import color_pool
    from wespe.models import Generator

    pools = color_pool.build_color_pools(data.source, data.target)
    matrix, bias = color_pool.moment_transfer(pools["source"], pools["target"])
    colour_path = Generator(width=1, num_blocks=0, output="residual", global_color="base_affine", rngs=nnx.Rngs(0))
    colour_path.color_matrix[...], colour_path.color_bias[...] = jnp.asarray(matrix), jnp.asarray(bias)

    def moment_transfer(x):
        return np.asarray(x, np.float64) @ matrix.T.astype(np.float64) + bias

    def moment_transfer_base(x):
        return np.asarray(colour_path.color(jnp.asarray(x, jnp.float32)[None]))[0]

    return {"moment_transfer": moment_transfer, "moment_transfer_base": moment_transfer_base}


def apply_uint8(method, image: np.ndarray) -> np.ndarray:
    """A float-in-[0, 1] method applied to a uint8 RGB photo; the result quantised as ``round(clip(y) * 255)``."""
    y = method(np.asarray(image, np.float64) / 255.0)
    return np.round(np.clip(y, 0, 1) * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------- presets

def parse_presets(text: str) -> dict[str, str]:
    """``"a=path/a.py,b=path/b.py"`` -> ``{"a": "path/a.py", "b": "path/b.py"}`` (empty text: no presets)."""
    presets: dict[str, str] = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, sep, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise PresetError(f"--presets: {item!r} is not name=config_path")
        if name in presets:
            raise PresetError(f"--presets: the name {name!r} is given twice")
        presets[name] = path
    return presets


def check_preset_name(name: str) -> None:
    """A preset name is a folder name (letters, digits, ``_.-``) and not one of the other methods' names."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise PresetError(f"--presets: the name {name!r} must be letters, digits, '_', '.' or '-'")
    if name in ("input", "clean", *BASELINES):
        raise PresetError(f"--presets: {name!r} is the name of another method; choose another")


def load_preset_config(path: str | Path):
    """``get_config()`` of the experiment file ``path`` (imported from its path; a fresh config each call)."""
    path = Path(path)
    if not path.is_file():
        raise PresetError(f"--presets: no config file {path}")
    spec = importlib.util.spec_from_file_location(f"_wespe_quality_preset_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any error in a user's file is reported as a preset error
        raise PresetError(f"--presets: {path} cannot be imported: {type(e).__name__}: {e}") from e
    if not callable(getattr(module, "get_config", None)):
        raise PresetError(f"--presets: {path} has no get_config()")
    return module.get_config()


def preset_config(path: str | Path, data: BenchmarkData, seed: int, steps: int | None = None,
                  vgg_weights: str = "random"):
    """The config of one benchmark run: the preset's ``get_config()`` with

    * ``data.builtin`` and ``data.dped_root`` None, ``data.source`` / ``target`` = the prepared folders (a
      ``dped``-mode config: ``data.paired = True`` and the ``paired/`` folders, degraded vs clean by file name);
    * ``data.heldout`` = test/degraded (the sample grids), ``data.heldout_reference`` = test/clean if the config
      has that key;
    * ``seed``, ``num_steps = steps`` (when given) and ``vgg_weights`` (``random`` by default: nothing to
      download; pass the real weights for paper-faithful content losses).
    """
    config = load_preset_config(path)
    d = config.data
    d.builtin = None
    d.dped_root = None
    if config.mode == "dped":
        d.paired = True
        d.source, d.target = data.paired_source, data.paired_target
    else:
        d.source, d.target = data.source, data.target
    d.heldout = data.test_degraded
    if "heldout_reference" in d:
        d.heldout_reference = data.test_clean
    config.seed = int(seed)
    if steps is not None:
        config.num_steps = int(steps)
    config.vgg_weights = vgg_weights
    return config


RUN_RECORD = "quality_run.json"


def _config_json(config) -> dict:
    return json.loads(config.to_json_best_effort())


def train_preset(config, workdir: str | Path) -> dict:
    """Train ``config`` in ``workdir`` unless a finished run of the same config is there (``generator.npz`` and
    this module's ``quality_run.json`` record, whose config, num_steps included, must equal ``config``).
    Returns the record: ``{"config", "num_steps", "train_minutes", "reused"}`` (minutes: wall clock of
    ``run_training``, compilation included; of the original run when reused)."""
    workdir = Path(workdir)
    record_path = workdir / RUN_RECORD
    wanted = _config_json(config)
    if (workdir / "generator.npz").exists() and record_path.exists():
        record = json.loads(record_path.read_text())
        saved = json.loads((workdir / "config.json").read_text()) if (workdir / "config.json").exists() else {}
        # Keys added to the config since that run are compared at their defaults (which reproduce the behaviour
        # before they existed), as a resumed run does.
        recorded = _config_json(configs.from_saved(record["config"])) if "config" in record else None
        if recorded == wanted and saved.get("num_steps") == config.num_steps:
            return {**record, "reused": True}
    start = time.perf_counter()
    result = loop.run_training(config, workdir)
    minutes = (time.perf_counter() - start) / 60
    if result.status != "finished":
        raise TrainingInterrupted(f"training in {workdir} stopped at step {result.step} ({result.status}); run the "
                                  f"same command again to resume it")
    if result.step != config.num_steps:
        raise UserError(f"{workdir} holds a run of {result.step} steps, not the {config.num_steps} asked for: use "
                         f"another output folder (or remove that run)")
    record = {"config": wanted, "num_steps": int(result.step), "train_minutes": minutes}
    with atomic_write(record_path) as f:
        f.write((json.dumps(record, indent=2) + "\n").encode())
    return {**record, "reused": False}


# ------------------------------------------------------------------------------------------------- the benchmark

def _per_seed(result: evaluation.EvalResult, seed, steps, minutes) -> dict:
    a = result.aggregates
    if not result.rows or result.skipped:
        raise JobFailed(f"{len(result.skipped)} held-out photos could not be scored: {result.skipped}")
    return {"seed": seed, **{k: a[k] for k in METRICS}, "train_minutes": minutes, "steps": steps,
            "per_image": [{k: r.get(k) for k in ("name", "psnr", "ssim_rgb", "ms_ssim", "entropy")}
                          for r in result.rows]}


def summarize(per_seed: list[dict]) -> tuple[dict, dict]:
    """Mean and std over seeds of every metric of :data:`METRICS` and the training minutes (sample std, ddof 1;
    0 for a single seed or a deterministic method)."""
    mean, std = {}, {}
    for key in METRICS + ("train_minutes",):
        values = [r[key] for r in per_seed if r.get(key) is not None]
        mean[key] = float(np.mean(values)) if values else None
        std[key] = (float(np.std(values, ddof=1)) if len(values) > 1 else 0.0) if values else None
    return mean, std


def rerun_command(out_dir, presets: dict, seeds, steps, vgg_weights, skip_training, data_seed, max_side) -> str:
    """The ``launch/quality.py`` command line (every option explicit) that reruns this benchmark."""
    args = ["python", "launch/quality.py", f"--output_dir={out_dir}",
            f"--presets={','.join(f'{k}={v}' for k, v in presets.items())}",
            f"--seeds={','.join(str(s) for s in seeds)}", f"--vgg_weights={vgg_weights}", f"--data_seed={data_seed}"]
    if steps is not None:
        args.append(f"--steps={steps}")
    if max_side is not None:
        args.append(f"--max_side={max_side}")
    if skip_training:
        args.append("--skip_training")
    return " ".join(shlex.quote(a) for a in args)


def run_benchmark(out_dir: str | Path, presets: dict[str, str], seeds: Sequence[int] = (0, 1, 2),
                  steps: int | None = None, *, vgg_weights: str = "random", skip_training: bool = False,
                  data_seed: int = 0, max_side: int | None = None, split: dict | None = None,
                  progress: bool = True) -> dict:
    """Prepare the photos, score ``input`` and the classical baselines, train and score every preset for every
    seed (unless ``skip_training``), and write results.json, results.md and grid.png into ``out_dir``.

    ``presets``: name -> experiment config file; every file is loaded (and a bad one raises
    :class:`PresetError`) before any photo is prepared or network trained. ``steps``: training steps of every
    run (None: each config's own ``num_steps``). ``split``: see :func:`prepare` (not a flag of launch/quality.py:
    the recorded command reruns a custom split only with the same ``data`` folder). Returns the content of
    results.json.
    """
    out_dir = Path(out_dir)
    seeds = [int(s) for s in seeds]
    if not skip_training:
        if not seeds:
            raise UserError("give at least one seed")
        for name, path in presets.items():
            check_preset_name(name)
            load_preset_config(path)
    else:
        presets = {}
    data = prepare(out_dir / "data", data_seed, split=split, max_side=max_side)
    split = json.loads(Path(data.root, "READY").read_text())["split"]
    command = rerun_command(out_dir, presets, seeds, steps, vgg_weights, skip_training, data_seed, max_side)

    outputs: dict[str, str] = {"input": data.test_degraded}  # method -> folder of its outputs (first seed)
    methods: dict[str, dict] = {}
    baselines = {**{n: ("classical", f) for n, f in BASELINES.items()},
                 **{n: ("fitted", f) for n, f in fitted_baselines(data).items()}}
    total = 1 + len(baselines) + len(presets) * len(seeds)
    with tqdm(total=total, unit="run", desc="quality benchmark", disable=not progress, dynamic_ncols=True) as bar:
        bar.set_postfix_str("input")
        result = evaluation.evaluate(None, data.test_degraded, data.test_clean, outputs_folder=data.test_degraded,
                                     progress=False)
        methods["input"] = {"kind": "input", "per_seed": [_per_seed(result, None, None, None)]}
        bar.update(1)
        for name, (kind, method) in baselines.items():
            bar.set_postfix_str(name)
            folder = out_dir / "methods" / name
            for path in sorted(Path(data.test_degraded).glob("*.png")):
                _write_png(folder / path.name, apply_uint8(method, np.asarray(Image.open(path).convert("RGB"))))
            result = evaluation.evaluate(None, data.test_degraded, data.test_clean, outputs_folder=folder,
                                         progress=False)
            methods[name] = {"kind": kind, "per_seed": [_per_seed(result, None, None, None)]}
            outputs[name] = str(folder)
            bar.update(1)
        for name, path in presets.items():
            methods[name] = {"kind": "trained", "config": str(path), "per_seed": []}
            for seed in seeds:
                bar.set_postfix_str(f"{name} seed {seed}")
                workdir = out_dir / "runs" / name / f"seed_{seed}"
                record = train_preset(preset_config(path, data, seed, steps, vgg_weights), workdir)
                enhanced = out_dir / "methods" / name / f"seed_{seed}"
                result = evaluation.evaluate(load_generator(workdir), data.test_degraded, data.test_clean,
                                             save_enhanced_to=enhanced, progress=False)
                methods[name]["per_seed"].append(_per_seed(result, seed, record["num_steps"],
                                                           record["train_minutes"]))
                methods[name]["reused_runs"] = methods[name].get("reused_runs", 0) + bool(record["reused"])
                outputs.setdefault(name, str(enhanced))
                bar.update(1)

    base, _ = summarize(methods["input"]["per_seed"])
    for entry in methods.values():
        entry["mean"], entry["std"] = summarize(entry["per_seed"])
        entry["n"] = len(entry["per_seed"])
        entry["delta_vs_input"] = {k: (entry["mean"][k] - base[k] if None not in (entry["mean"][k], base[k])
                                       else None) for k in METRICS}
    cameras = json.loads(Path(data.camera_params).read_text())
    results = {
        "command": command, "cwd": str(Path.cwd()), "methods": methods, "input": methods["input"]["mean"],
        "split": split, "photos": {n: PHOTOS[n] for names in split.values() for n in names},
        "camera_params": cameras["cameras"], "camera_ranges": cameras["ranges"], "halves": cameras["halves"],
        "train_layout": TRAIN_LAYOUT, "data_seed": data_seed,
        "max_side": max_side, "seeds": seeds, "steps": steps, "vgg_weights": vgg_weights,
        "protocol": {**evaluation.PROTOCOL,
                     "std": "sample standard deviation over seeds (ddof 1); 0 for one seed or a deterministic "
                            "method", "delta_vs_input": "method mean minus the input's"},
    }
    with atomic_write(out_dir / "results.json") as f:
        f.write((json.dumps(results, indent=2) + "\n").encode())
    with atomic_write(out_dir / "results.md") as f:
        f.write(markdown(results).encode())
    save_grid(outputs, data, out_dir / "grid.png")
    return results


# --------------------------------------------------------------------------------------------------- reporting

def _f(value, digits=2, sign=False) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def summary_table(results: dict) -> str:
    """The Markdown table of :func:`run_benchmark`'s results: one row per method."""
    header = ["method", "PSNR (dB)", "ΔPSNR", "SSIM", "ΔSSIM", "MS-SSIM", "entropy", "seeds", "steps",
              "train min"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, m in results["methods"].items():
        mean, std, delta = m["mean"], m["std"], m["delta_vs_input"]
        steps = sorted({r["steps"] for r in m["per_seed"] if r["steps"] is not None})
        minutes = mean["train_minutes"]
        row = [name, f"{_f(mean['psnr_mean'])} ± {_f(std['psnr_mean'])}", _f(delta["psnr_mean"], sign=True),
               f"{_f(mean['ssim_rgb_mean'], 4)} ± {_f(std['ssim_rgb_mean'], 4)}",
               _f(delta["ssim_rgb_mean"], 4, sign=True), _f(mean["ms_ssim_mean"], 4), _f(mean["entropy_mean"], 3),
               str(m["n"]) if m["kind"] == "trained" else "-", ",".join(map(str, steps)) or "-",
               f"{_f(minutes, 1)} ± {_f(std['train_minutes'], 1)}" if minutes is not None else "-"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    split = results["split"]
    parts = [
        "# Quality benchmark on public real photos\n",
        f"Rerun: `{results['command']}`\n",
        f"Held-out test photos (whole images, degraded by a camera drawn per photo): {', '.join(split['test'])}. "
        f"Training: {', '.join(split['train'])}, each cut in two halves across its width, one half per side "
        f"(alternating which): source the degraded halves, target the other halves clean; no pixel is on both "
        f"sides. "
        f"Mean over the test photos; ± is the std over seeds. PSNR: mean per image; SSIM on RGB; Δ: vs input.\n",
        summary_table(results),
        "\n## Photos\n",
    ]
    parts += [f"- `{name}` ({p['call']}): {p['licence']}" for name, p in results["photos"].items()]
    return "\n".join(parts) + "\n"


def _centre_crop(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    y, x = (h - side) // 2, (w - side) // 2
    return image[y:y + side, x:x + side]


def _label_strip(labels: list[str], width: int, gap: int) -> np.ndarray:
    from PIL import ImageDraw
    strip = Image.new("RGB", (len(labels) * width + (len(labels) - 1) * gap, 14), "white")
    draw = ImageDraw.Draw(strip)
    for j, label in enumerate(labels):
        while len(label) > 1 and draw.textlength(label) > width - 4:
            label = label[:-1]
        draw.text((j * (width + gap) + 2, 1), label, fill="black")
    return np.asarray(strip)


def save_grid(outputs: dict[str, str], data: BenchmarkData, path: str | Path, crop: int = GRID_CROP) -> Path:
    """One row per test photo, the same centre crop in every column: input | each method of ``outputs``
    (method -> folder of PNGs named as the test photos) | clean reference; a label strip on top."""
    from wespe import visualize
    names = sorted(p.name for p in Path(data.test_clean).glob("*.png"))
    clean = [np.asarray(Image.open(Path(data.test_clean) / n).convert("RGB")) for n in names]
    side = min([crop] + [min(c.shape[:2]) for c in clean])
    columns, labels = [], []
    for label, folder in list(outputs.items()) + [("clean", data.test_clean)]:
        crops = [_centre_crop(np.asarray(Image.open(Path(folder) / n).convert("RGB")), side) for n in names]
        columns.append(np.stack(crops).astype(np.float32) / 255)
        labels.append(label)
    grid = visualize.image_grid(columns)
    grid = np.concatenate([_label_strip(labels, side, 2), grid])
    path = Path(path)
    visualize.save_png(grid, path)
    return path
