"""VGG-19 feature extractor for the content loss, and import of the ImageNet weights users actually have.

Weights are a plain dict ``{"conv1_1": {"kernel": HWIO, "bias": (C,)}, ...}`` of the 16 conv layers; the
network is a pure function of them (it is frozen: never optimised, never checkpointed).

Sources (``load_vgg19(source)``):
  * ``imagenet-vgg-verydeep-19.mat`` (MatConvNet, what DPED uses): kernels transposed (1, 0, 2, 3) exactly as
    the DPED code does, preprocessing ``dped`` (x*255 - RGB mean).
  * torchvision ``vgg19-*.pth`` state dict (read without torch): OIHW -> HWIO, preprocessing ``imagenet``.
  * a ``.npz`` written by this module (the native cache format).
  * ``"random"``: fixed-seed He-normal weights. A weaker stand-in for demos and tests, not a perceptual loss.
Converted weights are cached as ``.npz`` under ``cache_dir`` (default ``$WESPE_CACHE_DIR`` or
``~/.cache/wespe``), keyed by the source file's SHA-256, so the large file is parsed once.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from wespe import conv
from wespe.atomic_write import atomic_write
from wespe.errors import UserError

# (name, in, out) of the 16 conv layers; a pool follows the last conv of each of the first four blocks.
CONV_LAYERS = (
    ("conv1_1", 3, 64), ("conv1_2", 64, 64),
    ("conv2_1", 64, 128), ("conv2_2", 128, 128),
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256),
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv4_4", 512, 512),
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512), ("conv5_4", 512, 512),
)
# Indices of the conv layers in torchvision's ``vgg19().features``.
TORCHVISION_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)


def _layer_sequence() -> tuple[str, ...]:
    seq = []
    for name, _, _ in CONV_LAYERS:
        seq += [name, "relu" + name[4:]]
        if name in ("conv1_2", "conv2_2", "conv3_4", "conv4_4"):
            seq.append("pool" + name[4])
    return tuple(seq)


LAYERS = _layer_sequence()  # conv1_1, relu1_1, conv1_2, relu1_2, pool1, ..., conv5_4, relu5_4

DPED_RGB_MEAN = (123.68, 116.779, 103.939)  # on 0..255, the DPED/MatConvNet preprocessing
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESSING = ("dped", "imagenet")
# Random He-init weights keep unit-scale inputs at unit scale, so they get the mean/std preprocessing.
PREPROCESSING_FOR_ORIGIN = {"matconvnet": "dped", "torchvision": "imagenet", "random": "imagenet"}

WEIGHTS_HELP = (
    "VGG-19 ImageNet weights are needed for the content loss. Pass a file with --config.vgg_weights=PATH: "
    "either MatConvNet's imagenet-vgg-verydeep-19.mat (what DPED uses; from "
    "https://www.vlfeat.org/matconvnet/models/imagenet-vgg-verydeep-19.mat) or torchvision's vgg19-dcbb9e9d.pth "
    "(https://download.pytorch.org/models/vgg19-dcbb9e9d.pth; torch is not needed to read it). "
    "--config.vgg_weights=random uses fixed random weights instead: fine for demos and tests, a weaker loss.")


class VGGWeightsError(UserError):
    """A VGG-19 weights file is missing, unreadable or has the wrong layers."""


def preprocess(images: jax.Array, mode: str) -> jax.Array:
    """RGB in [0, 1] -> the network input the weights were trained with."""
    if mode == "dped":
        return images * 255.0 - jnp.asarray(DPED_RGB_MEAN, images.dtype)
    if mode == "imagenet":
        return (images - jnp.asarray(IMAGENET_MEAN, images.dtype)) / jnp.asarray(IMAGENET_STD, images.dtype)
    raise ValueError(f"unknown VGG preprocessing {mode!r}; expected one of {PREPROCESSING}")


def features(weights: dict, images: jax.Array, layer: str = "relu5_4", preprocessing: str = "dped") -> jax.Array:
    """VGG-19 activations at ``layer`` (e.g. ``relu5_4``) of NHWC RGB images in [0, 1].

    Only the layers up to ``layer`` are computed. Max pooling is 2x2/2 with SAME padding, as the DPED code
    (identical to torchvision's floor mode for even sizes).
    """
    if layer not in LAYERS:
        raise ValueError(f"unknown VGG-19 layer {layer!r}; expected one of {LAYERS}")
    x = preprocess(images, preprocessing)
    for name in LAYERS[: LAYERS.index(layer) + 1]:
        kind = name[:4]
        if kind == "conv":
            w = weights[name]
            x = conv.conv2d(x, w["kernel"].astype(x.dtype))  # its library chosen per layer on CPU
            x = x + w["bias"].astype(x.dtype)
        elif kind == "relu":
            x = jax.nn.relu(x)
        else:
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")
    return x


def random_weights(seed: int = 0) -> dict:
    """Fixed-seed He-normal kernels and zero biases (NumPy RNG, so identical across JAX versions)."""
    rng = np.random.default_rng(seed)
    return {name: {"kernel": (rng.standard_normal((3, 3, cin, cout)) * np.sqrt(2.0 / (9 * cin))).astype(np.float32),
                   "bias": np.zeros(cout, np.float32)} for name, cin, cout in CONV_LAYERS}


def _validated(weights: dict, source: str) -> dict:
    for name, cin, cout in CONV_LAYERS:
        if name not in weights:
            raise VGGWeightsError(f"{source}: layer {name} is missing; is this a VGG-19 file?")
        k, b = weights[name]["kernel"], weights[name]["bias"]
        if k.shape != (3, 3, cin, cout) or b.shape != (cout,):
            raise VGGWeightsError(f"{source}: layer {name} has kernel {k.shape} / bias {b.shape}, expected "
                                  f"{(3, 3, cin, cout)} / {(cout,)}; is this VGG-19 (not VGG-16)?")
    return {name: {"kernel": np.asarray(weights[name]["kernel"], np.float32),
                   "bias": np.asarray(weights[name]["bias"], np.float32)} for name, _, _ in CONV_LAYERS}


def _read_matconvnet(path: str) -> dict:
    import scipy.io
    try:
        data = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5)
        raise VGGWeightsError(f"{path}: MATLAB v7.3 files are not supported; use the v5 file MatConvNet ships "
                              f"({e})") from e
    except Exception as e:
        raise VGGWeightsError(f"{path}: cannot read as a MATLAB file ({type(e).__name__}: {e})") from e
    if "layers" not in data:
        raise VGGWeightsError(f"{path}: no 'layers' entry; not a MatConvNet network")
    weights = {}
    for layer in np.atleast_1d(data["layers"]):
        name = str(getattr(layer, "name", ""))
        if not name.startswith("conv"):
            continue
        if hasattr(layer, "weights"):
            kernel, bias = layer.weights[0], layer.weights[1]
        else:  # MatConvNet before beta-17 stored separate fields
            kernel, bias = layer.filters, layer.biases
        # As the DPED code (vgg.py): MatConvNet kernels are [W, H, in, out] relative to TF's HWIO.
        weights[name] = {"kernel": np.transpose(np.asarray(kernel), (1, 0, 2, 3)),
                         "bias": np.asarray(bias).reshape(-1)}
    return _validated(weights, path)


def _read_torchvision(path: str) -> dict:
    from wespe.torch_state_dict import load_state_dict
    try:
        sd = load_state_dict(path)
    except ValueError as e:
        raise VGGWeightsError(str(e)) from e
    weights = {}
    for (name, _, _), idx in zip(CONV_LAYERS, TORCHVISION_INDICES):
        kw, kb = f"features.{idx}.weight", f"features.{idx}.bias"
        if kw not in sd or kb not in sd:
            raise VGGWeightsError(f"{path}: no {kw}/{kb}; not a torchvision vgg19 state dict")
        weights[name] = {"kernel": np.transpose(sd[kw], (2, 3, 1, 0)), "bias": sd[kb]}  # OIHW -> HWIO
    return _validated(weights, path)


def save_npz(weights: dict, path: str | os.PathLike, origin: str) -> None:
    """Write weights in the native format (atomically: a half-written cache never looks complete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{n}/{k}": v for n, layer in weights.items() for k, v in layer.items()}
    arrays["origin"] = np.asarray(origin)
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def _read_npz(path: str) -> tuple[dict, str]:
    try:
        with np.load(path) as z:
            origin = str(z["origin"]) if "origin" in z else "matconvnet"
            weights = {name: {"kernel": z[f"{name}/kernel"], "bias": z[f"{name}/bias"]}
                       for name, _, _ in CONV_LAYERS if f"{name}/kernel" in z}
    except Exception as e:
        raise VGGWeightsError(f"{path}: cannot read as a wespe VGG-19 .npz ({type(e).__name__}: {e})") from e
    return _validated(weights, path), origin


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("WESPE_CACHE_DIR") or Path.home() / ".cache" / "wespe")


def load_vgg19(source: str | os.PathLike | None, cache_dir: str | os.PathLike | None = None) -> tuple[dict, str]:
    """Load VGG-19 weights; returns ``(weights, origin)`` with origin ``matconvnet|torchvision|random``.

    ``source``: a ``.mat``, ``.pth``/``.pt`` or ``.npz`` path, or ``"random"``. ``None`` is an error that
    says which file is needed and where to get it.
    """
    if source is None or str(source) == "":
        raise VGGWeightsError(WEIGHTS_HELP)
    if str(source) == "random":
        return random_weights(), "random"
    path = str(source)
    if not os.path.isfile(path):
        raise VGGWeightsError(f"VGG-19 weights file {path} does not exist. {WEIGHTS_HELP}")
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        return _read_npz(path)
    if suffix not in (".mat", ".pth", ".pt"):
        raise VGGWeightsError(f"{path}: unknown VGG-19 weights format {suffix!r}; expected .mat, .pth/.pt or .npz")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / f"vgg19-{_sha256(path)[:20]}.npz"
    if cached.is_file():
        try:
            return _read_npz(str(cached))
        except VGGWeightsError as e:  # a cache that was cut short (disk full, a killed copy): convert again
            logging.warning("the cached VGG-19 conversion is unreadable (%s); converting %s again", e, path)
    if suffix == ".mat":
        weights, origin = _read_matconvnet(path), "matconvnet"
    else:
        weights, origin = _read_torchvision(path), "torchvision"
    try:
        save_npz(weights, cached, origin)
    except OSError as e:  # an unwritable cache only costs a re-parse next time: say so, carry on
        logging.warning("could not cache converted VGG-19 weights at %s: %s", cached, e)
    return weights, origin


def as_jax(weights: dict) -> dict:
    return jax.tree.map(jnp.asarray, weights)
