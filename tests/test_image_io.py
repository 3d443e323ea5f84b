"""wespe.image_io: format round trips, the mode rule, EXIF orientation, ICC, quality hints, errors, listing."""

import os

import numpy as np
import pytest
from PIL import Image, ImageCms

from wespe import image_io, image_paths
from wespe.errors import UserError
from wespe.image_io import ImageInfo, ImageReadError, ImageWriteError, read_image, write_image

ORIENTATION, MAKE, MODEL, DATETIME = 0x0112, 0x010F, 0x0110, 0x0132
EXIF_IFD, DATETIME_ORIGINAL, PIXEL_X, PIXEL_Y = 0x8769, 0x9003, 0xA002, 0xA003


def smooth_image(height=24, width=40, seed=0):
    """A smooth, non-symmetric colour image (JPEG keeps it within a few levels)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 3)
    channels = [127.5 + 100 * np.sin(x / width * 3 + y / height * (k + 1) + phase[k]) for k in range(3)]
    return np.round(np.stack(channels, -1)).astype(np.uint8)


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_block(orientation=None) -> Image.Exif:
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    exif[MAKE], exif[MODEL], exif[DATETIME] = "Canon", "EOS 70D", "2024:05:06 07:08:09"
    exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] = "2024:05:06 07:08:09"
    return exif


def no_temp_files(folder):
    return not [name for name in os.listdir(folder) if name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("fmt, ext, lossless", [
    ("JPEG", "jpg", False), ("PNG", "png", True), ("WEBP", "webp", True), ("WEBP", "webp", False),
    ("TIFF", "tif", True), ("BMP", "bmp", True)])
def test_round_trip_each_format(tmp_path, fmt, ext, lossless):
    pixels = smooth_image()
    source = tmp_path / f"source.{ext}"
    options = {"lossless": True} if fmt == "WEBP" and lossless else {"quality": 90} if fmt in ("JPEG", "WEBP") else {}
    Image.fromarray(pixels).save(source, format=fmt, **options)

    image, info = read_image(source)
    assert image.dtype == np.uint8 and image.shape == (24, 40, 3)
    assert info.format == fmt and info.size == (40, 24)
    assert info.notes == ()
    if lossless:
        np.testing.assert_array_equal(image, pixels)
    else:
        assert np.abs(image.astype(int) - pixels).mean() < 3

    target = tmp_path / "out" / f"copy.{ext}"
    assert write_image(target, image, info) == target
    assert no_temp_files(target.parent)
    again, again_info = read_image(target)
    assert again_info.format == fmt and again.shape == image.shape
    if lossless:
        np.testing.assert_array_equal(again, image)
    else:
        assert np.abs(again.astype(int) - image).mean() < 3
    if fmt == "WEBP":
        assert info.lossless is lossless and again_info.lossless is lossless
    if fmt == "JPEG":
        assert info.quality == 90 and again_info.quality == 90  # the source's quality is kept
        assert again_info.subsampling == info.subsampling


def test_jpeg_quality_hints(tmp_path):
    pixels = smooth_image()
    for quality in (10, 50, 75, 95, 100):
        Image.fromarray(pixels).save(tmp_path / "q.jpg", quality=quality)
        assert read_image(tmp_path / "q.jpg")[1].quality == quality
    Image.fromarray(pixels).save(tmp_path / "p.jpg", quality=80, progressive=True, subsampling=0)
    _, info = read_image(tmp_path / "p.jpg")
    assert (info.quality, info.subsampling, info.progressive) == (80, 0, True)
    write_image(tmp_path / "p2.jpg", pixels, info)
    _, info2 = read_image(tmp_path / "p2.jpg")
    assert (info2.quality, info2.subsampling, info2.progressive) == (80, 0, True)
    # No hint: quality 95.
    write_image(tmp_path / "new.jpg", pixels)
    assert read_image(tmp_path / "new.jpg")[1].quality == image_io.DEFAULT_QUALITY == 95


def _quality_by_loop(quantization):
    """Reference: libjpeg's jpeg_quality_scaling for each quality in turn, closest tables, ties to the higher."""
    luma = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
            14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
            49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
    chroma = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
              47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32
    best, best_error = None, None
    for quality in range(1, 101):
        scale = 5000 // quality if quality < 50 else 200 - 2 * quality
        error = 0
        for base, table in zip((luma, chroma), (quantization[k] for k in sorted(quantization))):
            error += sum(abs(min(max((b * scale + 50) // 100, 1), 255) - int(t)) for b, t in zip(base, table))
        if best_error is None or error <= best_error:
            best, best_error = quality, error
    return best


def test_jpeg_quality_estimate_matches_a_per_quality_reference():
    """Camera-like tables (IJG tables perturbed), one or two tables, random tables: the vectorised estimate picks
    the same quality as the plain loop over libjpeg's scaling, including ties."""
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(150):
        quality = int(rng.integers(1, 101))
        scale = 5000 // quality if quality < 50 else 200 - 2 * quality
        ijg = np.clip((np.stack([image_io._IJG_LUMINANCE, image_io._IJG_CHROMINANCE]) * scale + 50) // 100, 1, 255)
        noisy = np.clip(ijg + rng.integers(-3, 4, ijg.shape), 1, 255)
        cases += [{0: list(noisy[0]), 1: list(noisy[1])}, {0: list(noisy[0])}, {0: list(ijg[0]), 1: list(ijg[1])}]
        cases.append({0: list(rng.integers(1, 256, 64)), 1: list(rng.integers(1, 256, 64))})
    for q in cases:
        assert image_io.estimate_jpeg_quality(q) == _quality_by_loop(q), q
    assert image_io.estimate_jpeg_quality({0: [1] * 64}) == 100  # all-ones tables: libjpeg's quality 100
    assert image_io.estimate_jpeg_quality({0: [1] * 10}) is None and image_io.estimate_jpeg_quality({}) is None


def test_multi_picture_jpeg_is_written_as_jpeg(tmp_path):
    pixels = smooth_image()
    Image.fromarray(pixels).save(tmp_path / "mpo.jpg", format="MPO", save_all=True,
                                 append_images=[Image.fromarray(pixels[::-1].copy())])
    image, info = read_image(tmp_path / "mpo.jpg")
    assert info.format == "JPEG" and image.shape == pixels.shape
    write_image(tmp_path / "out.jpg", image, info)
    assert Image.open(tmp_path / "out.jpg").format == "JPEG"


# ---------------------------------------------------------------------------------------------- the mode rule

def test_gray_replicated(tmp_path):
    gray = smooth_image()[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    image, info = read_image(tmp_path / "g.png")
    assert info.mode == "L"
    np.testing.assert_array_equal(image, np.repeat(gray[..., None], 3, -1))


def test_alpha_composited_over_white(tmp_path):
    rgb = smooth_image()
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[:, 10:20], alpha[:, 20:30], alpha[:, 30:] = 128, 255, 37
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    image, info = read_image(tmp_path / "rgba.png")
    a = alpha[..., None].astype(np.float64) / 255
    expected = np.round(rgb * a + 255 * (1 - a)).astype(np.uint8)
    assert info.mode == "RGBA" and "alpha composited over white" in info.notes
    np.testing.assert_array_equal(image, expected)
    assert (image[:, :10] == 255).all()  # fully transparent -> white

    gray = rgb[..., 0]
    Image.fromarray(np.dstack([gray, alpha]), mode="LA").save(tmp_path / "la.png")
    image, info = read_image(tmp_path / "la.png")
    assert info.mode == "LA"
    np.testing.assert_array_equal(image, np.round(gray[..., None] * a + 255 * (1 - a)).astype(np.uint8).repeat(3, -1))


def test_palette_with_and_without_transparency(tmp_path):
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    indices = np.tile(np.array([0, 1, 2, 1], np.uint8), (6, 10))
    im = Image.fromarray(indices, mode="P")
    im.putpalette(palette)
    im.save(tmp_path / "p.png")
    image, info = read_image(tmp_path / "p.png")
    assert info.mode == "P"
    np.testing.assert_array_equal(image, np.array(palette[:9], np.uint8).reshape(3, 3)[indices])

    im.save(tmp_path / "pt.png", transparency=1)  # palette index 1 (green) is transparent
    image, _ = read_image(tmp_path / "pt.png")
    expected = np.array(palette[:9], np.uint8).reshape(3, 3)[indices]
    expected[indices == 1] = 255
    np.testing.assert_array_equal(image, expected)


def test_cmyk_jpeg(tmp_path):
    pixels = smooth_image()
    cmyk = Image.fromarray(pixels).convert("CMYK")
    cmyk.save(tmp_path / "cmyk.jpg", quality=95)
    image, info = read_image(tmp_path / "cmyk.jpg")
    assert info.mode == "CMYK" and image.shape == pixels.shape and image.dtype == np.uint8
    reference = np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB"))
    np.testing.assert_array_equal(image, reference)
    assert np.abs(image.astype(int) - pixels).mean() < 4


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16_bit_gray_takes_the_high_byte(tmp_path, ext):
    values = (np.arange(24 * 40, dtype=np.uint32).reshape(24, 40) * 68).astype(np.uint16)
    values[0, :4] = [0, 255, 256, 65535]
    Image.fromarray(values).save(tmp_path / f"g16.{ext}")
    image, info = read_image(tmp_path / f"g16.{ext}")
    assert info.mode.startswith("I;16")
    np.testing.assert_array_equal(image, np.repeat((values >> 8).astype(np.uint8)[..., None], 3, -1))
    np.testing.assert_array_equal(image[0, :4, 0], [0, 0, 1, 255])
    assert any("8 bits" in note for note in info.notes)
    write_image(tmp_path / f"out.{ext}", image, info)  # the 16-bit layout tags must not leak into the output
    out, _ = read_image(tmp_path / f"out.{ext}")
    np.testing.assert_array_equal(out, image)


def test_float_and_int32_modes(tmp_path):
    floats = np.linspace(0, 1, 24 * 40, dtype=np.float32).reshape(24, 40)
    Image.fromarray(floats, mode="F").save(tmp_path / "f.tif")
    image, _ = read_image(tmp_path / "f.tif")
    np.testing.assert_array_equal(image[..., 0], np.round(floats.astype(np.float64) * 255).astype(np.uint8))
    ints = np.full((4, 6), 70000, np.int32)
    ints[0, 0], ints[0, 1] = -5, 512
    Image.fromarray(ints, mode="I").save(tmp_path / "i.tif")
    image, _ = read_image(tmp_path / "i.tif")
    assert (image[0, 0, 0], image[0, 1, 0], image[1, 1, 0]) == (0, 2, 255)  # clip to 0..65535, then >> 8


# ---------------------------------------------------------------------------------------------- orientation

@pytest.mark.parametrize("orientation, rotate", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_applied_exactly(tmp_path, orientation, rotate):
    pixels = smooth_image(24, 40)  # stored landscape
    Image.fromarray(pixels).save(tmp_path / "o.png", exif=exif_block(orientation))
    image, info = read_image(tmp_path / "o.png")
    np.testing.assert_array_equal(image, np.rot90(pixels, k=rotate))  # 6: 90 deg clockwise, 8: counter-clockwise
    assert info.orientation == orientation and info.size == (image.shape[1], image.shape[0])
    written = Image.open(write_image(tmp_path / "out.png", image, info))
    assert written.getexif()[ORIENTATION] == 1
    np.testing.assert_array_equal(read_image(tmp_path / "out.png")[0], image)


@pytest.mark.parametrize("orientation", [6, 8])
def test_jpeg_orientation_and_exif_kept(tmp_path, orientation):
    pixels = smooth_image(24, 40)
    exif = exif_block(orientation)
    exif.get_ifd(EXIF_IFD)[PIXEL_X], exif.get_ifd(EXIF_IFD)[PIXEL_Y] = 40, 24
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", exif=exif, quality=92)
    image, info = read_image(tmp_path / "photo.jpg")
    assert image.shape == (40, 24, 3)  # portrait now
    expected = np.rot90(pixels, k=-1 if orientation == 6 else 1)
    assert np.abs(image.astype(int) - expected).mean() < 3

    out = write_image(tmp_path / "out" / "photo.jpg", 255 - image, info)
    written = Image.open(out)
    assert written.format == "JPEG" and written.size == (24, 40)  # (width, height): rotated size
    exif_out = written.getexif()
    assert exif_out[ORIENTATION] == 1
    assert (exif_out[MAKE], exif_out[MODEL], exif_out[DATETIME]) == ("Canon", "EOS 70D", "2024:05:06 07:08:09")
    sub = exif_out.get_ifd(EXIF_IFD)
    assert sub[DATETIME_ORIGINAL] == "2024:05:06 07:08:09"
    assert (sub[PIXEL_X], sub[PIXEL_Y]) == (24, 40)
    assert read_image(out)[1].quality == 92
    # Re-reading the output needs no rotation.
    again, again_info = read_image(out)
    assert again_info.orientation == 1 and again.shape == image.shape


@pytest.mark.parametrize("fmt, ext", [("PNG", "png"), ("WEBP", "webp"), ("TIFF", "tif")])
def test_exif_kept_in_other_formats(tmp_path, fmt, ext):
    Image.fromarray(smooth_image()).save(tmp_path / f"x.{ext}", format=fmt, exif=exif_block(6))
    image, info = read_image(tmp_path / f"x.{ext}")
    assert image.shape == (40, 24, 3)
    exif_out = Image.open(write_image(tmp_path / f"y.{ext}", image, info)).getexif()
    assert exif_out[ORIENTATION] == 1 and exif_out[MAKE] == "Canon"


# ---------------------------------------------------------------------------------------------------- ICC

@pytest.mark.parametrize("fmt, ext", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("TIFF", "tif")])
def test_icc_profile_kept(tmp_path, fmt, ext):
    icc = srgb_profile()
    Image.fromarray(smooth_image()).save(tmp_path / f"icc.{ext}", format=fmt, icc_profile=icc)
    image, info = read_image(tmp_path / f"icc.{ext}")
    assert info.icc_profile == icc
    write_image(tmp_path / f"out.{ext}", image, info)
    assert Image.open(tmp_path / f"out.{ext}").info.get("icc_profile") == icc


def test_non_rgb_icc_profile_dropped(tmp_path):
    cmyk_icc = bytearray(srgb_profile())
    cmyk_icc[16:20] = b"CMYK"
    Image.fromarray(smooth_image()).convert("CMYK").save(tmp_path / "c.jpg", icc_profile=bytes(cmyk_icc))
    image, info = read_image(tmp_path / "c.jpg")
    assert info.icc_profile is None and any("ICC" in note for note in info.notes)
    write_image(tmp_path / "out.jpg", image, info)
    assert "icc_profile" not in Image.open(tmp_path / "out.jpg").info


# ------------------------------------------------------------------------------------------------- errors

@pytest.fixture
def good_files(tmp_path):
    pixels = smooth_image(64, 64)
    Image.fromarray(pixels).save(tmp_path / "good.jpg", quality=90)
    Image.fromarray(pixels).save(tmp_path / "good.png")
    return tmp_path


def test_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("these are notes, not a photo\n")
    with pytest.raises(ImageReadError, match=r"notes\.jpg.*not an image"):
        read_image(tmp_path / "notes.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png"):
        read_image(tmp_path / "empty.png")


@pytest.mark.parametrize("name", ["good.jpg", "good.png"])
def test_truncated(good_files, name):
    data = (good_files / name).read_bytes()
    (good_files / f"cut_{name}").write_bytes(data[:len(data) // 2])
    with pytest.raises(ImageReadError, match=rf"cut_{name}.*truncated"):
        read_image(good_files / f"cut_{name}")


def test_corrupt(good_files):
    data = bytearray((good_files / "good.png").read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 20:idat + 40] = bytes(20)  # breaks the chunk's CRC and the zlib stream
    (good_files / "corrupt.png").write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"corrupt\.png"):
        read_image(good_files / "corrupt.png")
    data = bytearray((good_files / "good.jpg").read_bytes())
    data[2:] = np.random.default_rng(0).integers(0, 256, len(data) - 2, dtype=np.uint8).tobytes()
    (good_files / "corrupt.jpg").write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"corrupt\.jpg"):
        read_image(good_files / "corrupt.jpg")


def test_missing_and_directory(tmp_path):
    with pytest.raises(ImageReadError, match=r"nothere\.jpg: no such file"):
        read_image(tmp_path / "nothere.jpg")
    with pytest.raises(ImageReadError, match="not a file"):
        read_image(tmp_path)
    assert issubclass(ImageReadError, ValueError)


def test_write_errors(tmp_path):
    with pytest.raises(ImageWriteError, match="uint8"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ImageWriteError, match="shape"):
        write_image(tmp_path / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageWriteError, match="GIF"):
        write_image(tmp_path / "x.gif", np.zeros((4, 4, 3), np.uint8), ImageInfo(format="GIF", mode="P", size=(4, 4)))
    with pytest.raises(ImageWriteError, match="extension"):
        write_image(tmp_path / "x.xyz", np.zeros((4, 4, 3), np.uint8))
    assert not list(tmp_path.iterdir())  # nothing half-written


# ------------------------------------------------------------------------------------------------ listing

def make_tree(root):
    for rel in ["b.JPG", "a.png", "sub/c.Tiff", "sub/deeper/d.webp", "sub/e.bmp", "sub/f.jpeg", "notes.txt",
                ".hidden.jpg", ".cache/x.png", "sub/._c.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")


def test_list_images(tmp_path):
    make_tree(tmp_path / "in")
    (tmp_path / "single.gif").write_bytes(b"x")
    found = image_paths.list_images([tmp_path / "in", tmp_path / "in" / "a.png", str(tmp_path / "single.gif")])
    rel = [str(p.relative_to(tmp_path)).replace(os.sep, "/") for p in found]
    assert rel == ["in/a.png", "in/b.JPG", "in/sub/c.Tiff", "in/sub/deeper/d.webp", "in/sub/e.bmp", "in/sub/f.jpeg",
                   "single.gif"]
    with pytest.raises(FileNotFoundError, match="missing"):
        image_paths.list_images([tmp_path / "missing"])


def test_plan_outputs(tmp_path):
    make_tree(tmp_path / "in")
    (tmp_path / "loose.png").write_bytes(b"x")
    out = tmp_path / "in" / "enhanced"  # inside an input folder: its files are not inputs
    (out / "old.jpg").parent.mkdir()
    (out / "old.jpg").write_bytes(b"x")
    pairs = image_paths.plan_outputs([tmp_path / "in", tmp_path / "loose.png"], out)
    mapping = {str(src.relative_to(tmp_path)).replace(os.sep, "/"): str(dst.relative_to(out)).replace(os.sep, "/")
               for src, dst in pairs}
    assert mapping == {"in/a.png": "a.png", "in/b.JPG": "b.JPG", "in/sub/c.Tiff": "sub/c.Tiff",
                       "in/sub/deeper/d.webp": "sub/deeper/d.webp", "in/sub/e.bmp": "sub/e.bmp",
                       "in/sub/f.jpeg": "sub/f.jpeg", "loose.png": "loose.png"}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="same|both"):
        image_paths.plan_outputs([tmp_path / "in", tmp_path / "other"], tmp_path / "out")
    with pytest.raises(ValueError, match="overwrite"):
        image_paths.plan_outputs([tmp_path / "loose.png"], tmp_path)


def symlink_loop(folder):
    """``a.jpg -> b.jpg -> a.jpg`` inside ``folder`` (``Path.resolve`` raises on either)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.symlink("a.jpg", folder / "b.jpg")
    os.symlink("b.jpg", folder / "a.jpg")


def test_a_symlink_loop_is_listed_and_read_as_one(tmp_path):
    """Listed like any file (not a RuntimeError from resolve() that stops the listing), so the reader reports it
    as a bad file and the others go on; its reason says what it is."""
    make_tree(tmp_path / "in")
    symlink_loop(tmp_path / "in" / "sub")
    found = [p.relative_to(tmp_path / "in").as_posix() for p in image_paths.list_images([tmp_path / "in"])]
    assert {"sub/a.jpg", "sub/b.jpg", "a.png"} <= set(found)
    pairs = image_paths.plan_outputs([tmp_path / "in"], tmp_path / "out")
    assert {"sub/a.jpg", "sub/b.jpg"} <= {o.relative_to(tmp_path / "out").as_posix() for _, o in pairs}
    for read in (read_image, image_io.upright_size):
        with pytest.raises(ImageReadError, match="sub/a.jpg: symlink loop") as e:
            read(tmp_path / "in" / "sub" / "a.jpg")
        assert e.value.kind == image_io.UNREADABLE


def test_output_folder_that_is_or_holds_an_input_folder_is_refused(tmp_path):
    """Written into, an input folder would have its photos replaced; above one, the whole input would be left out
    with the output folder (found nothing); both are refused, naming both. Inside one is fine (test above)."""
    make_tree(tmp_path / "in")
    for output, relation in ((tmp_path / "in", "is"), (tmp_path, "holds")):
        with pytest.raises(UserError, match=f"--output={output} {relation} the input folder {tmp_path / 'in'}: "):
            image_paths.plan_outputs([tmp_path / "in"], output)
    with pytest.raises(UserError, match="--output_dir=.* is the --source folder"):
        image_paths.check_output_apart(tmp_path / "in" / "sub" / "..", {"--source": [tmp_path / "in"]},
                                       "--output_dir")
    image_paths.check_output_apart(tmp_path / "in", {"--source": [tmp_path / "in" / "a.png", None]}, "--output")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_read_errors_say_their_kind(tmp_path):
    """ImageReadError.kind classifies the failure (the training data report counts unusable files by it)."""
    noise = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)  # pixel data dominates the file
    Image.fromarray(noise).save(tmp_path / "good.jpg", quality=90)
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_bytes(b"not an image at all" * 20)
    (tmp_path / "folder.jpg").mkdir()
    cases = {"cut.jpg": image_io.TRUNCATED, "text.png": image_io.NOT_AN_IMAGE, "folder.jpg": image_io.UNREADABLE,
             "missing.jpg": image_io.UNREADABLE}
    for name, kind in cases.items():
        with pytest.raises(image_io.ImageReadError) as e:
            read_image(tmp_path / name)
        assert e.value.kind == kind and str(tmp_path / name) in str(e.value), (name, e.value)
