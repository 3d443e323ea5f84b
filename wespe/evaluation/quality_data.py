"""The quality benchmark's data: public real photos, their licences, the split and the prepared folders.

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
the same part of that scene on both sides, a few dozen pixels apart. Why halves and not whole photos per side
(the first split: three whole photos per side): unpaired learning matches the *distributions* of the two sides,
so with a handful of photos a side's scene content leaks into what is learned (on the built-in demo,
:mod:`wespe.training.demo`, matching the colour moments of whole-photo sides made the held-out photo worse, 18.3 dB vs
the input's 22.7 dB; with halves of the same photos on each side, 26.2 dB). Real unpaired sets (thousands of photos per
camera) share scene statistics by their size.

The degradation is :func:`wespe.training.synthetic_camera.camera_model`: a different camera drawn for every degraded
photo from ranges around the demo's camera (blur, low contrast and exposure, a warm cast, noise, JPEG 30-45) by a NumPy
random generator seeded with ``[data_seed, k]`` for the k-th degraded photo (training photos first, then test photos). A
training photo is degraded whole, then cut. The draws and, for every training photo, which half went to the source are
saved as ``camera_params.json``. :func:`prepare` writes the PNG folders once.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from PIL import Image

from wespe.atomic_write import atomic_write
from wespe.errors import UserError
from wespe.training.synthetic_camera import CAMERA_RANGES, camera_model

QUALITY_EXTRA = 'pip install -e ".[quality]"'

_MIDDLEBURY = ("Middlebury 2014 stereo data set (Scharstein et al., GCPR 2014), down-sampled 4x by scikit-image. "
               "No licence is stated in the installed scikit-image: skimage/data/README.txt names no licence and "
               "the stereo_motorcycle() docstring only credits the data set ('The two images are part of the "
               "Middlebury 2014 stereo benchmark. The dataset was created by Nera Nesic, Porter Westling, Xi Wang, "
               "York Kitajima, Greg Krathwohl, and Daniel Scharstein at Middlebury College.'); cite the paper.")
_SKLEARN = ("scikit-learn sklearn/datasets/images/README.txt: 'Released under a creative commons license. [1] "
            "Attribution: Some rights reserved by danielbuechele [2]', [1] = "
            "https://creativecommons.org/licenses/by/2.0/ (CC BY 2.0: attribution required)")


def _photo(package: str, call: str, licence: str) -> dict[str, str]:
    """One :data:`PHOTOS` entry: the package that ships the photo, the call that loads it, its licence."""
    return {"package": package, "call": call, "licence": licence}


def _skimage_photo(name: str, quote: str, source: str = "") -> dict[str, str]:
    """A scikit-image photo whose loader's docstring states its licence (``quote``, verbatim)."""
    licence = f"skimage.data.{name} docstring: '{quote}'" + (f" ({source})" if source else "")
    return _photo("scikit-image", f"skimage.data.{name}()", licence)


PHOTOS = {
    "astronaut": _skimage_photo("astronaut", "No known copyright restrictions, released into the public domain.",
                                "NASA Great Images database, https://flic.kr/p/r9qvLn"),
    "chelsea": _skimage_photo("chelsea", "No copyright restrictions.  CC0 by the photographer (Stefan van der Walt)."),
    "coffee": _skimage_photo("coffee", "No copyright restrictions.  CC0 by the photographer (Rachel Michetti).",
                             "courtesy of Pikolo Espresso Bar"),
    "rocket": _skimage_photo("rocket", "The image was captured by SpaceX and released in the public domain."),
    "motorcycle_left": _photo("scikit-image", "skimage.data.stereo_motorcycle()[0]", _MIDDLEBURY),
    "motorcycle_right": _photo("scikit-image", "skimage.data.stereo_motorcycle()[1]", _MIDDLEBURY),
    "grace_hopper": _photo("matplotlib", "matplotlib.cbook.get_sample_data('grace_hopper.jpg')",
                           "Official US Navy photograph of Grace Hopper: a work of the US federal government, public "
                           "domain. matplotlib's mpl-data/sample_data/README.txt states no licence; the file's JPEG "
                           "comment reads 'File source: http://commons.wikimedia.org/wiki/File:Grace_Hopper.jpg'."),
    "china": _photo("scikit-learn", "sklearn.datasets.load_sample_image('china.jpg')",
                    _SKLEARN + "; photo https://www.flickr.com/photos/danielbuechele/6061409035"),
    "flower": _photo("scikit-learn", "sklearn.datasets.load_sample_image('flower.jpg')",
                     _SKLEARN + "; the README's links for this photo point to the Flickr user vultilion: "
                     "https://www.flickr.com/photos/vultilion/6056698931"),
}
SPLIT = {"test": ("chelsea", "grace_hopper", "flower"),
         "train": ("astronaut", "coffee", "motorcycle_left", "rocket", "china")}
# The photos' roles swapped (experiments/quality/unseen_camera.py): other held-out scenes than the ones the recipe
# was tuned on.
UNSEEN_SPLIT = {"test": ("astronaut", "coffee", "rocket"),
                "train": ("chelsea", "grace_hopper", "flower", "motorcycle_left", "china")}
# How prepare() uses the train photos; in every READY recipe, so a folder prepared another way is an error.
TRAIN_LAYOUT = ("halves: each train photo degraded whole, then cut at width // 2; even k: degraded left half -> "
                "source, clean right half -> target; odd k: degraded right half -> source, clean left half -> "
                "target; paired/ = the source half, degraded and clean")


class MissingDependencyError(UserError):
    """A package that ships some of the benchmark's photos is not installed."""


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


def folders(root: Path) -> BenchmarkData:
    """The folders :func:`prepare` writes under ``root`` (whether or not it has written them yet)."""
    return BenchmarkData(root=str(root), source=str(root / "source"), target=str(root / "target"),
                         test_degraded=str(root / "test" / "degraded"), test_clean=str(root / "test" / "clean"),
                         paired_source=str(root / "paired" / "source"), paired_target=str(root / "paired" / "target"),
                         camera_params=str(root / "camera_params.json"))


def write_png(path: Path, image: np.ndarray) -> None:
    """``image`` (uint8 RGB) as a PNG at ``path``, written atomically (a concurrent reader sees all or nothing)."""
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
        return folders(root)
    clean = {name: _downscale(load_photo(name), max_side) for name in names}  # all loads first: fail early
    data = folders(root)
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
        write_png(Path(data.source) / f"{name}.png", source)
        write_png(Path(data.target) / f"{name}.png", np.ascontiguousarray(photo[:, target_half]))
        write_png(Path(data.paired_source) / f"{name}.png", source)
        write_png(Path(data.paired_target) / f"{name}.png", np.ascontiguousarray(photo[:, source_half]))
    for k, name in enumerate(split["test"], start=len(split["train"])):
        degraded, cameras[name] = camera_model(clean[name], np.random.default_rng([int(seed), k]))
        write_png(Path(data.test_degraded) / f"{name}.png", degraded)
        write_png(Path(data.test_clean) / f"{name}.png", clean[name])
    with atomic_write(data.camera_params) as f:
        f.write((json.dumps({"recipe": recipe, "ranges": CAMERA_RANGES, "cameras": cameras, "halves": halves},
                            indent=2) + "\n").encode())
    with atomic_write(marker) as f:
        f.write((json.dumps(recipe) + "\n").encode())
    return data

