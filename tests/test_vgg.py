"""wespe.vgg: VGG-19 weights from the files users have (MatConvNet .mat, torchvision .pth), caching, errors,
and the feature extractor against an independent float64 NumPy VGG.

Every weights file here is full-size VGG-19 with distinct random values in every layer, so a layer that
lands in the wrong place, or a kernel with its axes mixed up, cannot go unnoticed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

from wespe import vgg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_torch_state_dict import save_state_dict, truncate_copy, write_foreign_global_pth  # noqa: E402

# VGG-19 written out independently of wespe.vgg: conv layers per block; a 2x2 pool after blocks 1-4.
BLOCKS = (2, 2, 4, 4, 4)
WIDTHS = (64, 128, 256, 512, 512)
FORMATS = ("zip", "legacy")


def _reference_layers():
    seq = []
    for b, n in enumerate(BLOCKS, 1):
        for i in range(1, n + 1):
            seq += [f"conv{b}_{i}", f"relu{b}_{i}"]
        if b < 5:
            seq.append(f"pool{b}")
    return tuple(seq)


def _reference_torchvision_indices():
    """Positions of the convs in torchvision's vgg19().features: conv, ReLU, ..., MaxPool after each block."""
    indices, i = [], 0
    for b, n in enumerate(BLOCKS, 1):
        for _ in range(n):
            indices.append(i)
            i += 2  # Conv2d, ReLU
        i += 1  # MaxPool2d
    return tuple(indices)


# ----------------------------------------------------------------------------- fixtures and file writers

@pytest.fixture(scope="module")
def weights():
    """Full-size VGG-19 weights (HWIO kernels), every layer's values distinct, float32."""
    rng = np.random.default_rng(20240607)
    out = {}
    for name, cin, cout in vgg.CONV_LAYERS:
        scale = np.float32(np.sqrt(2.0 / (9 * cin)))  # He scale: activations stay O(1) through 16 layers
        out[name] = {"kernel": rng.standard_normal((3, 3, cin, cout), dtype=np.float32) * scale,
                     "bias": rng.standard_normal(cout, dtype=np.float32) * np.float32(0.1)}
    return out


def _cell(*items):
    cell = np.empty((1, len(items)), dtype=object)
    for i, item in enumerate(items):
        cell[0, i] = item
    return cell


def write_matconvnet(path, weights, *, old_style=False, layers=vgg.LAYERS):
    """An imagenet-vgg-verydeep-19.mat as MatConvNet ships it (scipy.io.savemat, MATLAB v5).

    ``layers`` is a 1xN cell of structs in network order (conv/relu/pool, then fc/softmax); conv kernels are
    stored as the DPED code reads them, np.transpose(HWIO, (1, 0, 2, 3)), biases as 1xC. ``old_style``:
    the pre-beta-17 layout ('filters'/'biases' fields, top-level 'normalization'/'classes') instead of
    ('weights' cell, top-level 'meta').
    """
    structs = []
    for name in layers:
        if name.startswith("conv"):
            w = weights[name]
            kernel, bias = np.transpose(w["kernel"], (1, 0, 2, 3)), w["bias"].reshape(1, -1)
            s = {"name": name, "type": "conv", "stride": np.array([[1, 1]]), "pad": np.array([[1, 1, 1, 1]])}
            if old_style:
                s.update(filters=kernel, biases=bias)
            else:
                s.update(weights=_cell(kernel, bias), size=np.array([kernel.shape]), dilate=1, opts=_cell())
        elif name.startswith("relu"):
            s = {"name": name, "type": "relu", "leak": 0}
        else:
            s = {"name": name, "type": "pool", "method": "max", "pool": np.array([[2, 2]]),
                 "stride": np.array([[2, 2]]), "pad": np.array([[0, 1, 0, 1]])}
        structs.append(s)
    # The classifier (tiny here; 7x7x512x4096 in the real file) is also type 'conv': it must be skipped.
    fc = np.full((1, 1, 8, 5), 7.0, np.float32)
    if old_style:
        structs += [{"name": "fc8", "type": "conv", "filters": fc, "biases": np.ones((1, 5), np.float32)}]
    else:
        structs += [{"name": "fc8", "type": "conv", "weights": _cell(fc, np.ones((1, 5), np.float32))}]
    structs.append({"name": "prob", "type": "softmax"})
    classes = {"name": _cell("n01440764", "n01443537"), "description": _cell("tench", "goldfish")}
    normalization = {"imageSize": np.array([[224, 224, 3]]), "interpolation": "bilinear",
                     "averageImage": np.array([123.68, 116.779, 103.939]).reshape(1, 1, 3),
                     "keepAspect": 1, "border": np.array([[32, 32]])}
    if old_style:
        contents = {"layers": _cell(*structs), "normalization": normalization, "classes": classes}
    else:
        contents = {"layers": _cell(*structs),
                    "meta": {"inputs": {"name": "input", "size": np.array([[224, 224, 3, 10]])},
                             "classes": classes, "normalization": normalization}}
    scipy.io.savemat(str(path), contents, oned_as="row")
    return Path(path)


def torchvision_state_dict(weights):
    """torchvision vgg19().state_dict() of these weights: features.{i}.weight OIHW, plus classifier keys."""
    sd = {}
    for (name, _, _), idx in zip(vgg.CONV_LAYERS, vgg.TORCHVISION_INDICES):
        sd[f"features.{idx}.weight"] = np.transpose(weights[name]["kernel"], (3, 2, 0, 1))  # HWIO -> OIHW
        sd[f"features.{idx}.bias"] = weights[name]["bias"]
    sd["classifier.0.weight"] = np.full((16, 8), 3.0, np.float32)  # 4096x25088 in the real file
    sd["classifier.0.bias"] = np.zeros(16, np.float32)
    sd["classifier.6.weight"] = np.ones((10, 16), np.float32)
    return sd


@pytest.fixture(scope="module")
def files(tmp_path_factory, weights):
    """The weights as imagenet-vgg-verydeep-19.mat (new and old style) and vgg19.pth (zip and legacy)."""
    d, old = tmp_path_factory.mktemp("vgg_files"), tmp_path_factory.mktemp("vgg_files_old")
    sd = torchvision_state_dict(weights)
    return {
        "mat": write_matconvnet(d / "imagenet-vgg-verydeep-19.mat", weights),
        "mat_old": write_matconvnet(old / "imagenet-vgg-verydeep-19.mat", weights, old_style=True),
        "zip": save_state_dict(d / "vgg19-zip.pth", sd, legacy=False),
        "legacy": save_state_dict(d / "vgg19-dcbb9e9d.pth", sd, legacy=True),
    }


def assert_same_weights(got, expected):
    assert set(got) == {name for name, _, _ in vgg.CONV_LAYERS}
    for name, _, _ in vgg.CONV_LAYERS:
        for part in ("kernel", "bias"):
            assert got[name][part].dtype == np.float32, (name, part)
            np.testing.assert_array_equal(got[name][part], expected[name][part], err_msg=f"{name} {part}")


# ----------------------------------------------------------------------------- structure

def test_layer_tables_match_vgg19():
    """LAYERS, CONV_LAYERS and TORCHVISION_INDICES describe VGG-19 (checked against a separate derivation)."""
    assert vgg.LAYERS == _reference_layers()
    assert vgg.TORCHVISION_INDICES == _reference_torchvision_indices()
    convs = [n for n in _reference_layers() if n.startswith("conv")]
    assert [n for n, _, _ in vgg.CONV_LAYERS] == convs
    couts = [WIDTHS[int(n[4]) - 1] for n in convs]
    assert [(cin, cout) for _, cin, cout in vgg.CONV_LAYERS] == list(zip([3] + couts[:-1], couts))


# ----------------------------------------------------------------------------- every layer in its place

def test_matconvnet_mat_every_layer_in_place(files, weights, tmp_path):
    """A MatConvNet .mat ('weights' cells, 'meta', fc/relu/pool layers) loads every kernel/bias exactly."""
    got, origin = vgg.load_vgg19(files["mat"], cache_dir=tmp_path)
    assert origin == "matconvnet"
    assert_same_weights(got, weights)


def test_matconvnet_old_style_filters_biases(files, weights, tmp_path):
    """The pre-beta-17 .mat layout ('filters'/'biases' fields, top-level 'normalization') loads exactly."""
    got, origin = vgg.load_vgg19(files["mat_old"], cache_dir=tmp_path)
    assert origin == "matconvnet"
    assert_same_weights(got, weights)


@pytest.mark.parametrize("fmt", FORMATS)
def test_torchvision_pth_every_layer_in_place(files, weights, tmp_path, fmt):
    """A torchvision vgg19 state dict (OIHW, classifier keys ignored) loads every kernel/bias exactly."""
    got, origin = vgg.load_vgg19(files[fmt], cache_dir=tmp_path)
    assert origin == "torchvision"
    assert_same_weights(got, weights)
    again, origin = vgg.load_vgg19(files[fmt], cache_dir=tmp_path)  # now from the cache
    assert origin == "torchvision"
    assert_same_weights(again, weights)


# ----------------------------------------------------------------------------- features vs NumPy

def _np_conv3x3_same(x, kernel, bias):
    """float64 SAME 3x3 cross-correlation, NHWC x HWIO, zero padding of one pixel on every side."""
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[3]))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("nhwc,co->nhwo", xp[:, dy:dy + h, dx:dx + w], kernel[dy, dx])
    return out + bias


def _np_maxpool_same(x):
    """2x2/2 max pool, TF SAME: odd sizes are padded with -inf at the bottom/right only."""
    n, h, w, c = x.shape
    ho, wo = -(-h // 2), -(-w // 2)
    xp = np.full((n, 2 * ho, 2 * wo, c), -np.inf)
    xp[:, :h, :w] = x
    return xp.reshape(n, ho, 2, wo, 2, c).max(axis=(2, 4))


def _np_vgg(weights, images, layer, preprocessing):
    x = np.asarray(images, np.float64)
    if preprocessing == "dped":
        x = x * 255.0 - np.array([123.68, 116.779, 103.939])
    else:
        x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    for name in _reference_layers():
        if name.startswith("conv"):
            w = weights[name]
            x = _np_conv3x3_same(x, w["kernel"].astype(np.float64), w["bias"].astype(np.float64))
        elif name.startswith("relu"):
            x = np.maximum(x, 0.0)
        else:
            x = _np_maxpool_same(x)
        if name == layer:
            return x
    raise AssertionError(layer)


def test_numpy_reference_pool_pads_bottom_right():
    """Sanity check of the reference pool: on odd sizes the last row/column forms its own window."""
    x = np.arange(9.0).reshape(1, 3, 3, 1)
    np.testing.assert_array_equal(_np_maxpool_same(x)[0, :, :, 0], [[4.0, 5.0], [7.0, 8.0]])


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(5).uniform(0.0, 1.0, (2, 11, 13, 3)).astype(np.float32)


@pytest.mark.parametrize("preprocessing", vgg.PREPROCESSING)
@pytest.mark.parametrize("layer, shape", [("relu1_1", (11, 13, 64)), ("pool1", (6, 7, 64)),
                                          ("relu2_1", (6, 7, 128)), ("relu5_4", (1, 1, 512))])
def test_features_match_float64_numpy(weights, image, layer, shape, preprocessing):
    """features() at relu1_1/pool1/relu2_1/relu5_4 (odd 11x13 input) equals a float64 NumPy VGG-19."""
    got = np.asarray(vgg.features(weights, jnp.asarray(image), layer, preprocessing))
    want = _np_vgg(weights, image, layer, preprocessing)
    assert got.shape == (2, *shape) == want.shape
    assert got.dtype == np.float32
    scale = np.abs(want).max()
    assert scale > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)


def test_features_rejects_unknown_layer_and_preprocessing(weights, image):
    """Unknown layer or preprocessing names are ValueErrors naming the bad value."""
    with pytest.raises(ValueError, match="relu6_1"):
        vgg.features(weights, jnp.asarray(image), "relu6_1")
    with pytest.raises(ValueError, match="caffe"):
        vgg.features(weights, jnp.asarray(image), "relu1_1", "caffe")


# ----------------------------------------------------------------------------- cache and other sources

def test_cache_written_once_then_used(files, weights, tmp_path, monkeypatch):
    """The first .mat load writes vgg19-*.npz; the second reads it without parsing the .mat again."""
    cache = tmp_path / "cache"
    first, _ = vgg.load_vgg19(files["mat"], cache_dir=cache)
    cached = list(cache.iterdir())
    assert len(cached) == 1 and re.fullmatch(r"vgg19-[0-9a-f]{20}\.npz", cached[0].name), cached

    def no_parse(path):
        raise AssertionError(f"{path} parsed again although it is cached")

    monkeypatch.setattr(vgg, "_read_matconvnet", no_parse)
    second, origin = vgg.load_vgg19(files["mat"], cache_dir=cache)
    assert origin == "matconvnet"
    assert_same_weights(second, weights)
    assert_same_weights(first, weights)
    assert list(cache.iterdir()) == cached


@pytest.mark.parametrize("damage", ["truncated", "not an npz"])
def test_corrupt_cache_is_converted_again(files, weights, tmp_path, caplog, damage):
    """A cache file cut short (disk full, a killed copy) or overwritten is not an error: the source is converted
    again, with a warning, and the cache rewritten."""
    cache = tmp_path / "cache"
    vgg.load_vgg19(files["mat"], cache_dir=cache)
    (cached,) = cache.iterdir()
    good = cached.read_bytes()
    cached.write_bytes(good[: len(good) // 2] if damage == "truncated" else b"garbage")
    with caplog.at_level("WARNING"):
        got, origin = vgg.load_vgg19(files["mat"], cache_dir=cache)
    assert origin == "matconvnet"
    assert_same_weights(got, weights)
    assert any("unreadable" in r.getMessage() and str(cached) in r.getMessage() for r in caplog.records)
    assert cached.read_bytes() == good  # rewritten


def test_cache_keyed_by_content_not_name(files, weights, tmp_path):
    """Replacing the file at the same path with different weights is not answered from the stale cache."""
    cache, path = tmp_path / "cache", tmp_path / "imagenet-vgg-verydeep-19.mat"
    path.write_bytes(files["mat"].read_bytes())
    vgg.load_vgg19(path, cache_dir=cache)
    changed = {name: dict(layer) for name, layer in weights.items()}
    changed["conv5_4"]["bias"] = -weights["conv5_4"]["bias"]
    write_matconvnet(path, changed)
    got, _ = vgg.load_vgg19(path, cache_dir=cache)
    assert_same_weights(got, changed)
    assert len(list(cache.glob("vgg19-*.npz"))) == 2


def test_npz_source_loads_directly(files, weights, tmp_path):
    """A cached .npz can be given as the source itself, with its origin preserved."""
    vgg.load_vgg19(files["zip"], cache_dir=tmp_path)
    (npz,) = tmp_path.glob("vgg19-*.npz")
    got, origin = vgg.load_vgg19(npz)
    assert origin == "torchvision"
    assert_same_weights(got, weights)


def test_unwritable_cache_still_loads(files, weights, tmp_path):
    """If the cache cannot be written (cache_dir is a file), the weights are still returned."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    got, _ = vgg.load_vgg19(files["legacy"], cache_dir=blocker)
    assert_same_weights(got, weights)


def test_random_weights_deterministic_with_vgg19_shapes():
    """load_vgg19('random') gives the same full-shape float32 weights every time."""
    a, origin = vgg.load_vgg19("random")
    b, _ = vgg.load_vgg19("random")
    assert origin == "random"
    for name, cin, cout in vgg.CONV_LAYERS:
        assert a[name]["kernel"].shape == (3, 3, cin, cout) and a[name]["bias"].shape == (cout,)
        assert a[name]["kernel"].dtype == np.float32
        assert np.std(a[name]["kernel"]) > 0
    assert_same_weights(a, b)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("source", [None, ""])
def test_error_no_source_says_what_to_get(source):
    """No weights: the message names both files (.mat, vgg19 .pth) and the vgg_weights flag."""
    with pytest.raises(vgg.VGGWeightsError) as info:
        vgg.load_vgg19(source)
    assert isinstance(info.value, ValueError)
    for needle in ("imagenet-vgg-verydeep-19.mat", "vgg19", "vgg_weights"):
        assert needle in str(info.value)


def test_error_missing_path_names_it(tmp_path):
    """A path that does not exist is named in the message."""
    path = tmp_path / "nowhere" / "imagenet-vgg-verydeep-19.mat"
    with pytest.raises(vgg.VGGWeightsError, match=re.escape(str(path))):
        vgg.load_vgg19(path, cache_dir=tmp_path)


def test_error_unknown_suffix(tmp_path):
    """A file with an unsupported suffix is refused, naming the suffix."""
    path = tmp_path / "vgg19.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(vgg.VGGWeightsError, match=r"\.h5"):
        vgg.load_vgg19(path, cache_dir=tmp_path)


def test_error_vgg16_mat_names_missing_layer(weights, tmp_path):
    """A VGG-16 .mat (no conv3_4/conv4_4/conv5_4) is refused naming conv3_4; nothing is cached."""
    vgg16 = tuple(n for n in vgg.LAYERS if n[4:] not in ("3_4", "4_4", "5_4"))
    path = write_matconvnet(tmp_path / "imagenet-vgg-verydeep-16.mat", weights, layers=vgg16)
    cache = tmp_path / "cache"
    with pytest.raises(vgg.VGGWeightsError, match="conv3_4"):
        vgg.load_vgg19(path, cache_dir=cache)
    assert not list(cache.glob("*.npz"))


def test_error_mat_wrong_kernel_shape(weights, tmp_path):
    """A conv kernel of the wrong shape is refused, naming the layer and the expected shape."""
    bad = dict(weights)
    bad["conv1_2"] = {"kernel": np.zeros((3, 3, 64, 32), np.float32), "bias": np.zeros(32, np.float32)}
    path = write_matconvnet(tmp_path / "bad.mat", bad, layers=("conv1_1", "relu1_1", "conv1_2", "relu1_2"))
    with pytest.raises(vgg.VGGWeightsError, match=r"conv1_2.*\(3, 3, 64, 64\)"):
        vgg.load_vgg19(path, cache_dir=tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_error_truncated_pth(files, tmp_path, fmt):
    """A .pth cut in half (interrupted download) is a VGGWeightsError/ValueError, both formats."""
    path = truncate_copy(files[fmt], tmp_path / "vgg19.pth", files[fmt].stat().st_size // 2)
    with pytest.raises(vgg.VGGWeightsError) as info:
        vgg.load_vgg19(path, cache_dir=tmp_path)
    assert isinstance(info.value, ValueError) and str(path) in str(info.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_error_pth_with_foreign_global_refused(tmp_path, fmt):
    """A .pth whose pickle calls os.system is refused before anything runs."""
    marker = tmp_path / "pwned"
    path = write_foreign_global_pth(tmp_path / "vgg19.pth", legacy=fmt == "legacy", marker=marker)
    with pytest.raises(vgg.VGGWeightsError, match=r"os\.system"):
        vgg.load_vgg19(path, cache_dir=tmp_path)
    assert not marker.exists()
