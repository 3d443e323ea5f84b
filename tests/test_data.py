"""Training data pipeline: folder checks, patches, pairing, per-process slices, resume, streamed mode."""

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wespe import image_io
from wespe.image_io import read_image
from wespe.image_paths import list_images
from wespe.training import data, scan

PATCH = 32


def _noise(seed: int, h: int = 40, w: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _folder(path: Path, n: int, seed: int = 0, ext: str = ".png") -> Path:
    for i in range(n):
        _save(path / (f"sub/{i}{ext}" if i % 2 else f"{i}{ext}"), _noise(seed * 100 + i))
    return path


def _rotated_jpeg(path: Path) -> Path:
    """Stored 64 wide x 40 high with EXIF orientation 6: upright it is 40 wide x 64 high."""
    yy, xx = np.mgrid[0:40, 0:64]
    stored = np.stack([xx * 4, yy * 6, (xx * yy) % 256], -1).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    return path


@pytest.fixture
def mixed(tmp_path) -> Path:
    """Usable files in every odd mode and sub-folders, plus four unusable ones."""
    root = tmp_path / "mixed"
    _save(root / "rgb.png", _noise(1))
    _save(root / "sub" / "rgb.jpg", _noise(2), quality=90)
    _save(root / "sub" / "deeper" / "rgb2.png", _noise(3))
    _save(root / "gray.png", _noise(4)[..., 0])  # mode L
    _save(root / "rgba.png", np.random.default_rng(5).integers(0, 256, (40, 48, 4), dtype=np.uint8))
    (root / "palette.png").parent.mkdir(exist_ok=True)
    Image.fromarray(_noise(6)).convert("P").save(root / "palette.png")
    _save(root / "deep16.png", (np.random.default_rng(7).integers(0, 65536, (40, 48))).astype(np.uint16))
    Image.fromarray(_noise(8)).convert("CMYK").save(root / "cmyk.jpg")
    _rotated_jpeg(root / "rotated.jpg")
    (root / "corrupt.jpg").write_bytes(np.random.default_rng(9).bytes(3000))
    full = (root / "sub" / "rgb.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "text.png").write_text("not a picture\n")
    _save(root / "small.png", _noise(10, 20, 20))
    return root


GOOD = {"rgb.png", "rgb.jpg", "rgb2.png", "gray.png", "rgba.png", "palette.png", "deep16.png", "cmyk.jpg",
        "rotated.jpg"}


def _iterator(source, target, **kwargs):
    args = dict(paired=False, patch_size=PATCH, global_batch_size=4, seed=0, flips=True, rot90=True, num_threads=2)
    args.update(kwargs)
    return data.make_train_iterator(source, target, **args)


def _batches(iterator, n):
    return [next(iterator) for _ in range(n)]


# ------------------------------------------------------------------------------------------------- scanning

def test_scan_folder_full_decode_and_header_only(mixed):
    assert Image.open(mixed / "deep16.png").mode.startswith("I")
    assert Image.open(mixed / "cmyk.jpg").mode == "CMYK"
    full = scan.scan_folder(mixed, patch_size=PATCH, decode=True)
    assert {p.name for p in full.good} == GOOD
    assert full.good == sorted(full.good, key=str)
    kinds = {Path(b["path"]).name: b["kind"] for b in full.bad}
    assert kinds == {"corrupt.jpg": image_io.NOT_AN_IMAGE, "truncated.jpg": image_io.TRUNCATED,
                     "text.png": image_io.NOT_AN_IMAGE, "small.png": scan.TOO_SMALL}
    assert all(b["reason"] for b in full.bad)
    assert "20x20" in next(b["reason"] for b in full.bad if b["path"].endswith("small.png"))
    # EXIF orientation 6: scanned at the upright size (40 wide, 64 high), not the stored 64 x 40.
    assert full.sizes[mixed / "rotated.jpg"] == (40, 64)

    header = scan.scan_folder(mixed, patch_size=PATCH, decode=False)
    assert {p.name for p in header.good} == GOOD | {"truncated.jpg"}  # only a full decode finds truncation
    assert header.sizes[mixed / "rotated.jpg"] == (40, 64)
    # Too small only after orientation: 40 wide upright, so a 48 patch does not fit (stored width is 64).
    rotated_only = _rotated_jpeg(mixed.parent / "rot" / "r.jpg").parent
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_noise(11, 40, 64)).save(rotated_only / "r.png", exif=exif.tobytes())
    assert not scan.scan_folder(rotated_only, patch_size=48, decode=False).good
    for decode in (False, True):
        assert set(scan.scan_folder(rotated_only, patch_size=PATCH, decode=decode).sizes.values()) == {(40, 64)}


def test_folder_errors(tmp_path, mixed):
    target = _folder(tmp_path / "t", 2)
    with pytest.raises(scan.DataError, match=r"--source=.*missing.* does not exist"):
        _iterator(tmp_path / "missing", target)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(scan.DataError, match=r"--target=.*file\.png is not a folder"):
        _iterator(mixed, tmp_path / "file.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(scan.DataError, match=r"--target=.*empty: no image files found"):
        _iterator(mixed, tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"junk")
    _save(bad / "b.png", _noise(0, 10, 10))
    with pytest.raises(scan.DataError, match=r"--source=.*bad: no usable image .*2 files skipped: "
                                             r"1 not an image, 1 too small"):
        _iterator(bad, target)
    with pytest.raises(scan.DataError, match="same folder"):
        _iterator(target, tmp_path / "t" / "sub" / "..")
    with pytest.raises(scan.DataError, match="multiple of the process count 2"):
        _iterator(mixed, target, global_batch_size=3, process_count=2)
    with pytest.raises(scan.DataError, match="does not exist"):
        scan.scan_folder(tmp_path / "nope", patch_size=PATCH)


def test_a_symlink_loop_is_skipped_and_reported(tmp_path):
    """``a.jpg -> b.jpg -> a.jpg`` among the photos: both in the report's bad files as "symlink loop", the rest
    trained on (before: RuntimeError from Path.resolve() while listing)."""
    source, target = _folder(tmp_path / "s", 3), _folder(tmp_path / "t", 3, seed=1)
    os.symlink("a.jpg", source / "sub" / "b.jpg")
    os.symlink("b.jpg", source / "sub" / "a.jpg")
    iterator, report = _iterator(source, target)
    assert {Path(b["path"]).name: b["reason"] for b in report["source"]["bad"]} == {
        "a.jpg": "symlink loop", "b.jpg": "symlink loop"}
    assert report["source"]["num_good"] == 3 and next(iterator)


# ------------------------------------------------------------------------------------------------- batches

def test_batches_report_and_determinism(tmp_path, mixed):
    target = _folder(tmp_path / "t", 3, seed=1, ext=".jpg")
    iterator, report = _iterator(mixed, target, global_batch_size=6)
    batches = _batches(iterator, 3)
    for b in batches:
        assert set(b) == {"source", "target"}
        for v in b.values():
            assert v.shape == (6, PATCH, PATCH, 3) and v.dtype == np.float32
            assert 0.0 <= v.min() and v.max() <= 1.0
    assert report["storage"] == "cached"
    assert report["source"]["num_good"] == len(GOOD) and report["source"]["num_bad"] == 4
    assert report["target"]["num_good"] == 3 and report["target"]["num_bad"] == 0
    assert {Path(b["path"]).name for b in report["source"]["bad"]} == {
        "corrupt.jpg", "truncated.jpg", "text.png", "small.png"}
    assert {Path(p).name for p in report["source"]["used"]} == GOOD  # the files used, none of the bad ones
    assert report["target"]["used"] == [str(p) for p in list_images([target])]
    line = report.summary_line()
    assert line.startswith(f"data: source {len(GOOD)} usable (4 skipped: ") and "2 not an image" in line
    assert "target 3 usable, cached in memory (" in line and line == report["summary"]
    json.dumps(report)

    again = _batches(_iterator(mixed, target, global_batch_size=6)[0], 3)
    other = _batches(_iterator(mixed, target, global_batch_size=6, seed=1)[0], 3)
    for a, b, c in zip(batches, again, other):
        for k in ("source", "target"):
            np.testing.assert_array_equal(a[k], b[k])
            assert not np.array_equal(a[k], c[k])


def test_rotated_jpeg_is_cropped_upright(tmp_path):
    source = _rotated_jpeg(tmp_path / "s" / "r.jpg").parent
    target = _folder(tmp_path / "t", 1)
    upright, _ = read_image(source / "r.jpg")
    assert upright.shape == (64, 40, 3)
    iterator, _ = _iterator(source, target, patch_size=40, flips=False, rot90=False)
    windows = [upright[y:y + 40, :40] for y in range(64 - 40 + 1)]
    offsets = set()
    for b in _batches(iterator, 3):
        for patch in np.round(b["source"] * 255).astype(np.uint8):
            hits = [y for y, w in enumerate(windows) if np.array_equal(patch, w)]
            assert len(hits) == 1
            offsets.add(hits[0])
    assert len(offsets) > 1  # random crop offsets along the long (upright) side


def test_process_slices_partition_the_global_batch(tmp_path):
    source, target = _folder(tmp_path / "s", 5, seed=1), _folder(tmp_path / "t", 4, seed=2)
    whole = _batches(_iterator(source, target, global_batch_size=4)[0], 3)
    parts = [_batches(_iterator(source, target, global_batch_size=4, process_index=p, process_count=2)[0], 3)
             for p in (0, 1)]
    for k in range(3):
        for key in ("source", "target"):
            p0, p1 = parts[0][k][key], parts[1][k][key]
            assert p0.shape == p1.shape == (2, PATCH, PATCH, 3)
            # Process p holds the contiguous rows [2p, 2p + 2): in process order they are the global batch exactly
            # (the order jax.make_array_from_process_local_data places them in).
            np.testing.assert_array_equal(whole[k][key][:2], p0)
            np.testing.assert_array_equal(whole[k][key][2:], p1)
            assert not any(np.array_equal(a, b) for a in p0 for b in p1)


def test_paired_alignment_matching_and_report(tmp_path):
    source, target, workdir = tmp_path / "s", tmp_path / "t", tmp_path / "work"
    for i, name in enumerate(["a", "sub/b", "c"]):
        image = _noise(20 + i)
        _save(source / f"{name}.png", image)
        _save(target / f"{name}.png", 255 - image)  # the target is a known pixel-wise function of the source
    image = _noise(30)
    _save(source / "sub" / "x.png", image)
    _save(target / "other" / "x.png", 255 - image)  # matched by stem (relative paths differ)
    _save(source / "only_s.png", _noise(31))
    _save(target / "only_t.png", _noise(32))
    _save(source / "mis.png", _noise(33))
    _save(target / "mis.png", _noise(34, 48, 40))  # same name, different size: unusable
    iterator, report = _iterator(source, target, paired=True, global_batch_size=8, workdir=workdir)
    for b in _batches(iterator, 3):
        np.testing.assert_allclose(b["target"], 1.0 - b["source"], atol=1e-6)
    assert report["pairs"]["num_usable"] == 4
    assert report["unmatched"] == {"count": 2, "source": [str(source / "only_s.png")],
                                   "target": [str(target / "only_t.png")]}
    assert [(Path(u["source"]).name, "sizes differ" in u["reason"]) for u in report["pairs"]["unusable"]] == [
        ("mis.png", True)]
    assert "4 pairs (2 unmatched, 1 unusable)" in report.summary_line()
    saved = json.loads((workdir / scan.REPORT_FILE).read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["paired"] is True and saved["storage"] == "cached" and saved["source"]["num_good"] == 6

    other = tmp_path / "work1"
    _iterator(source, target, paired=True, global_batch_size=8, workdir=other, process_index=1, process_count=2)
    assert not (other / scan.REPORT_FILE).exists()  # only process 0 writes the report


def test_resume_from_state(tmp_path):
    source, target = _folder(tmp_path / "s", 3, seed=1), _folder(tmp_path / "t", 3, seed=2)
    iterator, _ = _iterator(source, target)
    _batches(iterator, 3)
    state = iterator.get_state()
    text = json.dumps(state)
    saved = data.iterator_state_to_json(state)
    expected = _batches(iterator, 3)
    fresh, _ = _iterator(source, target)
    fresh.set_state(data.iterator_state_from_json(json.loads(json.dumps(saved))))
    for a, b in zip(expected, _batches(fresh, 3)):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert data.iterator_state_from_json(text) == state


@pytest.mark.parametrize("damage", ["corrupted", "deleted"])
def test_streamed_mode_survives_a_file_damaged_after_the_scan(tmp_path, caplog, damage):
    source, target, workdir = tmp_path / "s", tmp_path / "t", tmp_path / "work"
    _save(source / "a.png", np.full((40, 48, 3), 10, np.uint8))
    _save(source / "b.png", np.full((40, 48, 3), 200, np.uint8))
    _folder(target, 2, seed=3)
    iterator, report = _iterator(source, target, global_batch_size=8, cache_max_bytes=0, workdir=workdir)
    twin, _ = _iterator(source, target, global_batch_size=8, cache_max_bytes=0)
    assert report["storage"] == "streamed" and "streamed from disk" in report.summary_line()
    if damage == "deleted":  # gone between the scan and the read
        (source / "b.png").unlink()
    else:  # broken after the scan
        (source / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    with caplog.at_level(logging.WARNING, logger="wespe.training.data"):
        batches = _batches(iterator, 3)
    for b in batches:
        np.testing.assert_array_equal(b["source"], np.float32(10 / 255))  # b.png replaced by a.png
    assert any("b.png" in r.getMessage() and "run time" in r.getMessage() for r in caplog.records)
    bad = report["source"]["bad"]
    assert [(Path(e["path"]).name, e["kind"]) for e in bad] == [("b.png", scan.RUNTIME_FAILURE)]
    assert report["source"]["num_good"] == 1 and report["runtime_failures"] == 1
    assert [Path(p).name for p in report["source"]["used"]] == ["a.png"]
    assert json.loads((workdir / scan.REPORT_FILE).read_text())["runtime_failures"] == 1
    for a, b in zip(batches, _batches(twin, 3)):  # the replacement is deterministic
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


# ------------------------------------------------------------------------------------------- other helpers

def test_dped_folders(tmp_path):
    root = tmp_path / "dped"
    (root / "iphone" / "training_data" / "iphone").mkdir(parents=True)
    with pytest.raises(scan.DataError, match="canon is missing"):
        scan.dped_folders(root, "iphone")
    (root / "iphone" / "training_data" / "canon").mkdir()
    assert scan.dped_folders(root, "iphone") == (root / "iphone" / "training_data" / "iphone",
                                                 root / "iphone" / "training_data" / "canon")
    with pytest.raises(scan.DataError, match=r"dped_phone=sony.*phones under .*: iphone"):
        scan.dped_folders(root, "sony")
    with pytest.raises(scan.DataError, match="dped_root=.*does not exist"):
        scan.dped_folders(tmp_path / "nowhere", "iphone")


def test_fixed_eval_crops(tmp_path, mixed):
    crops = data.fixed_eval_crops(mixed, 4, PATCH, seed=0)
    assert crops.shape == (4, PATCH, PATCH, 3) and crops.dtype == np.float32
    assert 0.0 <= crops.min() and crops.max() <= 1.0
    np.testing.assert_array_equal(crops, data.fixed_eval_crops(mixed, 4, PATCH, seed=0))
    assert not np.array_equal(crops, data.fixed_eval_crops(mixed, 4, PATCH, seed=1))
    centres = []
    for name in GOOD:
        image = read_image(next(mixed.rglob(name)))[0]
        y, x = (image.shape[0] - PATCH) // 2, (image.shape[1] - PATCH) // 2
        centres.append(image[y:y + PATCH, x:x + PATCH])
    for crop in np.round(crops * 255).astype(np.uint8):
        assert any(np.array_equal(crop, c) for c in centres)
    few = data.fixed_eval_crops([mixed / "rgb.png", mixed / "text.png"], 3, PATCH, seed=0)
    assert few.shape == (3, PATCH, PATCH, 3)  # rows beyond the usable files: other crops of them
    with pytest.raises(scan.DataError, match="no usable image"):
        data.fixed_eval_crops([mixed / "text.png"], 2, PATCH, seed=0)
