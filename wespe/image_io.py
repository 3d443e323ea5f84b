"""Reading and writing photos for inference: any Pillow mode in, upright 8-bit RGB out, metadata carried through.

:func:`read_image` returns ``(uint8 H x W x 3 array, ImageInfo)``; :func:`write_image` writes an array back in the
same file format with the metadata of the original. Pillow does the decoding; NumPy does the conversions.

**Orientation.** The EXIF orientation is applied to the pixels (``ImageOps.exif_transpose``), so the array is
the photo as a viewer shows it; the kept EXIF has its orientation tag reset to 1 (and its PixelXDimension /
PixelYDimension set to the written size), so the output shows upright everywhere.

**Mode rule** (every mode becomes 8-bit RGB):

* ``RGB``: as is. ``1`` and ``L`` (grayscale): the gray value in all three channels.
* Alpha (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``, and ``P`` with a transparent colour): composited over
  **white**, ``round(c * a/255 + 255 * (1 - a/255))``. The output has no alpha channel. White rather than
  "drop alpha" because the colour under fully transparent pixels is arbitrary (often black), and white is what
  most viewers and documents show behind a transparent photo.
* ``P`` (palette) without transparency: the palette colours.
* 16-bit and 32-bit integer gray (``I;16``, ``I;16B``, ``I;16L``, ``I``): values clipped to [0, 65535] and
  shifted right by 8 bits (the high byte; 65535 -> 255, 256 -> 1), i.e. full-range 16-bit samples, which is how
  16-bit PNG and TIFF store them. (16-bit RGB PNGs are already reduced to their high bytes by Pillow.)
* 32-bit float gray (``F``): taken as [0, 1] data if its maximum is <= 1, else as [0, 255] data; clipped to that
  range and scaled to 0..255 with rounding.
* ``CMYK``: Pillow's ``convert("RGB")`` (no colour management; Adobe inverted CMYK JPEGs are handled by Pillow).
* Anything else (``YCbCr``, ``RGBX``, ...): Pillow's ``convert("RGB")``, or :class:`ImageReadError` if Pillow
  cannot convert it. Multi-frame files (TIFF pages, animated WebP) give their first frame.

**Metadata kept:** the file format (``MPO``, the multi-picture JPEG of many phones, is written as ``JPEG``),
EXIF (orientation reset to 1, TIFF layout tags dropped, the thumbnail IFD dropped), the ICC profile when it
describes RGB data (a CMYK or gray profile is dropped, since the pixels are now RGB), DPI, and format hints:
JPEG quality (estimated from the quantisation tables against the IJG tables; exact for files written by
libjpeg/Pillow), chroma subsampling and progressive mode; WebP lossless vs lossy; TIFF compression.
:class:`ImageInfo.notes` lists every lossy step taken (alpha composited, bit depth reduced, profile dropped).

**Writing:** ``JPEG`` (the source's estimated quality, else 95; the source's subsampling), ``PNG``, ``WEBP``
(lossless if the source was, else quality 95), ``TIFF`` (the source's lossless compression, else LZW), ``BMP``
(no metadata). Files are written to a temporary name and renamed, so a failed write leaves no partial file.

Unreadable input (missing, not an image, corrupt, truncated, too large for Pillow's decompression-bomb limit)
raises :class:`ImageReadError`, a ``ValueError`` whose message names the file and the reason.
:func:`upright_size` gives a photo's upright size from its header alone (for scanning many files quickly).

Which files the inputs name and where outputs go: :mod:`wespe.image_paths`.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

from wespe.atomic_write import atomic_write
from wespe.errors import UserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"})
WRITABLE_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF", "BMP"})
DEFAULT_QUALITY = 95

_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
_PIXEL_X_DIMENSION, _PIXEL_Y_DIMENSION = 0xA002, 0xA003
# TIFF layout tags: they describe the source file's pixel storage, not the photo, and would contradict the output.
_LAYOUT_TAGS = frozenset({
    254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 284, 317, 320, 322, 323, 324, 325,
    330, 338, 339, 340, 341, 347, 513, 514, 529, 530, 531, 532, 34675})
_ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # orientations that swap width and height
_LOSSLESS_TIFF = frozenset({"raw", "tiff_lzw", "tiff_deflate", "tiff_adobe_deflate", "packbits"})
_FORMAT_BY_EXTENSION = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF",
                        ".tiff": "TIFF", ".bmp": "BMP"}

# The IJG (libjpeg) base quantisation tables in natural (row-major) order, from the JPEG standard, Annex K.
_IJG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
_IJG_CHROMINANCE = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32)


# Why a file cannot be read (ImageReadError.kind; the training data report counts unusable files by kind).
NOT_AN_IMAGE, CORRUPT, TRUNCATED, TOO_LARGE, UNREADABLE = (
    "not an image", "corrupt", "truncated", "too large", "unreadable")


class ImageReadError(UserError):
    """A file that cannot be read as a photo: missing, not an image, corrupt, truncated or unsupported.

    ``kind`` says which (one of NOT_AN_IMAGE, CORRUPT, TRUNCATED, TOO_LARGE, UNREADABLE, or a caller's own).
    """

    def __init__(self, message: str, kind: str = CORRUPT):
        super().__init__(message)
        self.kind = kind


class ImageWriteError(UserError):
    """A photo that cannot be written: unsupported format or a bad array."""


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What :func:`write_image` needs to write a photo back like the original (see the module docstring)."""

    format: str  # Pillow format name to write: JPEG, PNG, WEBP, TIFF, BMP (or another Pillow format, read-only)
    mode: str  # the file's own Pillow mode, before conversion to RGB
    size: tuple[int, int]  # (width, height) of the returned array (after orientation)
    orientation: int = 1  # the file's EXIF orientation (1 if none); already applied to the pixels
    exif: bytes | None = None  # EXIF with orientation 1, as Pillow's Exif.tobytes() writes it
    icc_profile: bytes | None = None  # an RGB ICC profile, or None
    quality: int | None = None  # JPEG: estimated IJG quality (1..100)
    subsampling: int | None = None  # JPEG chroma subsampling: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0
    progressive: bool = False  # JPEG
    lossless: bool | None = None  # WebP: True for VP8L, False for VP8, None if unknown
    compression: str | None = None  # TIFF compression name, as Pillow reports it
    dpi: tuple[float, float] | None = None
    notes: tuple[str, ...] = ()  # lossy steps taken while reading


# ------------------------------------------------------------------------------------------------- reading

def read_image(path: str | os.PathLike, *, draft_side: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Read a photo as an upright ``uint8`` array of shape (H, W, 3) plus the metadata to write it back.

    ``draft_side``: the caller only needs the photo at about this many pixels a side, so a JPEG may be decoded
    at 1/2, 1/4 or 1/8 scale (Pillow's draft mode, still at least ``draft_side`` on each side; much faster for a
    large photo): the array and ``info.size`` are then the reduced ones. Other formats decode in full."""
    path = Path(path)
    if not path.exists():
        raise missing_file_error(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: not a file", UNREADABLE)
    try:
        with Image.open(path) as im:
            if im.format == "PNG":  # Pillow skips the CRCs of pixel data while decoding: check every chunk first
                with Image.open(path) as check:
                    check.verify()
            try:  # before load(): Pillow's TIFF loader applies the orientation itself and deletes the tag
                file_orientation = int(im.getexif().get(_ORIENTATION, 1) or 1)
            except Exception:
                file_orientation = None
            if draft_side and im.format in ("JPEG", "MPO"):
                im.draft(im.mode, (draft_side, draft_side))
            im.load()
            return _decode(path, im, file_orientation)
    except ImageReadError:
        raise
    except Exception as e:  # Pillow reports corrupt data as OSError, SyntaxError, ValueError, struct.error, ...
        raise pillow_error(path, e, "cannot decode image") from e


def upright_size(path: str | os.PathLike) -> tuple[int, int]:
    """The photo's upright (width, height), like :attr:`ImageInfo.size`, from the header alone (no pixel decode):
    EXIF orientations 5-8 swap the stored sides. A PNG's EXIF after its pixel data is not seen (reading it would
    decode the image), so :func:`read_image` can still rotate such a file. Raises :class:`ImageReadError`."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            width, height = im.size
            try:
                # The base-class getexif: PNG's own one decodes the whole image to look for a late eXIf chunk.
                orientation = int(Image.Image.getexif(im).get(_ORIENTATION, 1) or 1)
            except Exception:  # noqa: BLE001 - a malformed EXIF block leaves the size as stored
                orientation = 1
    except Exception as e:  # Pillow reports bad headers with many exception types
        raise pillow_error(path, e, "cannot read image header") from e
    return (height, width) if orientation in _ROTATING_ORIENTATIONS else (width, height)


def missing_file_error(path: Path) -> ImageReadError:
    """The ImageReadError for a listed file that does not open as a file: a symlink loop (``a.jpg -> b.jpg ->
    a.jpg``, which ``exists()`` reports as missing) is named as such, anything else is "no such file"."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return ImageReadError(f"{path}: symlink loop", UNREADABLE)
    return ImageReadError(f"{path}: no such file", UNREADABLE)


def pillow_error(path: Path, e: BaseException, doing: str) -> ImageReadError:
    """The ImageReadError (message naming ``path``, and its kind) for an exception Pillow raised while ``doing``."""
    if isinstance(e, Image.DecompressionBombError):
        return ImageReadError(f"{path}: image too large for Pillow's decompression-bomb limit ({e})", TOO_LARGE)
    if isinstance(e, Image.UnidentifiedImageError):
        return ImageReadError(f"{path}: not an image file (Pillow cannot identify it)", NOT_AN_IMAGE)
    if isinstance(e, FileNotFoundError) or not path.exists():
        return missing_file_error(path)
    if isinstance(e, PermissionError):
        return ImageReadError(f"{path}: cannot open: {e}", UNREADABLE)
    reason = str(e) or type(e).__name__
    if "truncated" in reason.lower():
        return ImageReadError(f"{path}: {doing}: truncated file ({reason})", TRUNCATED)
    return ImageReadError(f"{path}: {doing}: {reason}", CORRUPT)


def _decode(path: Path, im: Image.Image, file_orientation: int | None) -> tuple[np.ndarray, ImageInfo]:
    fmt = "JPEG" if im.format == "MPO" else (im.format or _FORMAT_BY_EXTENSION.get(path.suffix.lower(), ""))
    notes: list[str] = []
    try:
        exif = im.getexif()
        pending = int(exif.get(_ORIENTATION, 1) or 1)  # still to apply (TIFF: already applied by Pillow)
    except Exception as e:  # a malformed EXIF block does not make the photo unreadable
        exif, pending = Image.Exif(), 1
        notes.append(f"EXIF unreadable, dropped ({e})")
    orientation = pending if file_orientation is None else file_orientation
    if orientation not in range(1, 9):
        notes.append(f"invalid EXIF orientation {orientation} ignored")
        orientation = pending = 1
    source_mode = im.mode
    upright = ImageOps.exif_transpose(im) if pending in range(2, 9) else im
    rgb = _to_rgb8(upright, notes)
    height, width = rgb.shape[:2]

    exif_bytes = _upright_exif(im, exif, orientation, notes)
    icc = im.info.get("icc_profile") or None
    if icc is not None and _icc_colour_space(icc) != b"RGB ":
        notes.append(f"ICC profile for {_icc_colour_space(icc)!r} data dropped (the pixels are now RGB)")
        icc = None
    dpi = im.info.get("dpi")
    if dpi is not None:
        try:
            dpi = (float(dpi[0]), float(dpi[1]))
            if orientation in _ROTATING_ORIENTATIONS:
                dpi = (dpi[1], dpi[0])
        except (TypeError, ValueError, IndexError):
            dpi = None
    info = ImageInfo(format=fmt, mode=source_mode, size=(width, height), orientation=orientation,
                     exif=exif_bytes, icc_profile=icc, dpi=dpi, notes=tuple(notes))
    if fmt == "JPEG":
        info = dataclasses.replace(
            info, quality=estimate_jpeg_quality(getattr(im, "quantization", None)),
            subsampling=_jpeg_subsampling(im), progressive=bool(im.info.get("progressive")))
    elif fmt == "WEBP":
        info = dataclasses.replace(info, lossless=_webp_lossless(path))
    elif fmt == "TIFF":
        info = dataclasses.replace(info, compression=im.info.get("compression"))
    return rgb, info


def _to_rgb8(im: Image.Image, notes: list[str]) -> np.ndarray:
    """Pixels of any mode as uint8 RGB, by the rule in the module docstring."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode in ("1", "L"):
        return _gray_to_rgb(np.asarray(im.convert("L"), dtype=np.uint8))
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I (int32)
        values = np.asarray(im).astype(np.int64)
        notes.append(f"{mode} samples reduced to 8 bits (clip to 0..65535, >> 8)")
        return _gray_to_rgb((np.clip(values, 0, 65535) >> 8).astype(np.uint8))
    if mode == "F":
        values = np.asarray(im, dtype=np.float64)
        top = 1.0 if np.nanmax(values, initial=0.0) <= 1.0 else 255.0
        notes.append(f"float samples taken as 0..{top:g} and scaled to 8 bits")
        values = np.nan_to_num(values, nan=0.0)
        return _gray_to_rgb(np.round(np.clip(values, 0.0, top) * (255.0 / top)).astype(np.uint8))
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
        if mode == "RGB":
            return np.asarray(im, dtype=np.uint8).copy()
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[..., 3:]
        if (alpha < 255).any():
            notes.append("alpha composited over white")
        out = (rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
        return out.astype(np.uint8)
    try:
        converted = im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageReadError(f"{getattr(im, 'filename', '') or 'image'}: mode {mode} cannot be converted "
                             f"to RGB ({e})") from e
    if mode == "CMYK":
        notes.append("CMYK converted to RGB without colour management")
    return np.asarray(converted, dtype=np.uint8).copy()


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def _upright_exif(im: Image.Image, exif: Image.Exif, orientation: int, notes: list[str]) -> bytes | None:
    if not len(exif):
        return None
    try:
        out = Image.Exif()
        out.load(exif.tobytes())  # a copy, with the Exif and GPS sub-IFDs expanded
        for tag in _LAYOUT_TAGS & set(out.keys()):
            del out[tag]
        if _ORIENTATION in out or orientation != 1:
            out[_ORIENTATION] = 1
        return out.tobytes()
    except Exception as e:  # Pillow cannot re-serialise some unusual EXIF blocks
        raw = im.info.get("exif")
        if orientation == 1 and isinstance(raw, bytes) and im.format in ("JPEG", "MPO", "PNG", "WEBP"):
            return raw  # nothing to fix: keep the block byte for byte
        notes.append(f"EXIF dropped: it could not be rewritten with orientation 1 ({e})")
        return None


def _icc_colour_space(icc: bytes) -> bytes:
    """The data colour space signature of an ICC profile (header bytes 16..20), e.g. b'RGB ', b'CMYK', b'GRAY'."""
    return bytes(icc[16:20]) if len(icc) >= 20 else b""


def _ijg_tables_by_quality() -> np.ndarray:
    """The IJG tables scaled for every quality 1..100 as libjpeg does: (100, 2, 64), luminance then chrominance."""
    qualities = np.arange(1, 101)
    scales = np.where(qualities < 50, 5000 // qualities, 200 - 2 * qualities)[:, None, None]
    bases = np.stack([_IJG_LUMINANCE, _IJG_CHROMINANCE]).astype(np.int64)[None]
    return np.clip((bases * scales + 50) // 100, 1, 255)


_IJG_BY_QUALITY = _ijg_tables_by_quality()


def estimate_jpeg_quality(quantization: dict[int, Sequence[int]] | None) -> int | None:
    """The IJG quality (1..100) whose scaled standard tables are closest to the file's quantisation tables.

    Exact for files written by libjpeg, Pillow, OpenCV and most software; an approximation for cameras with
    their own tables. None if there are no tables. Ties go to the higher quality.
    """
    if not quantization or 0 not in quantization:
        return None
    tables = [np.asarray(quantization[0], dtype=np.int64)]
    if 1 in quantization:
        tables.append(np.asarray(quantization[1], dtype=np.int64))
    if any(t.size != 64 for t in tables):
        return None
    scaled = _IJG_BY_QUALITY[:, :len(tables)]  # all 100 qualities at once: ~1000x cheaper than a loop
    errors = np.abs(scaled - np.stack(tables)[None]).sum(axis=(1, 2))
    return int(100 - np.argmin(errors[::-1]))  # the last minimum = the highest quality among ties


def _jpeg_subsampling(im: Image.Image) -> int | None:
    try:
        sampling = JpegImagePlugin.get_sampling(im)
    except Exception:
        return None
    return sampling if sampling in (0, 1, 2) else None


def _webp_lossless(path: Path) -> bool | None:
    """Whether a WebP file holds a lossless (VP8L) or lossy (VP8) bitstream, from its RIFF chunk list."""
    try:
        with open(path, "rb") as f:
            header = f.read(12)
            if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WEBP":
                return None
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                fourcc, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if fourcc == b"VP8L":
                    return True
                if fourcc == b"VP8 ":
                    return False
                f.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------- writing

def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float pixels (a generator's output, unclipped) to 8 bits: ``round(clip(y, 0, 1) * 255)``."""
    return np.round(np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def format_for_path(path: str | os.PathLike) -> str:
    """The Pillow format name for a file name's extension (JPEG, PNG, WEBP, TIFF, BMP)."""
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMAT_BY_EXTENSION:
        raise ImageWriteError(f"{path}: cannot tell the image format from the extension {suffix!r}; "
                              f"use one of {', '.join(sorted(IMAGE_EXTENSIONS))}")
    return _FORMAT_BY_EXTENSION[suffix]


def write_image(path: str | os.PathLike, image: np.ndarray, info: ImageInfo | None = None, *,
                format: str | None = None) -> Path:  # noqa: A002 - Pillow's own name for it
    """Write a ``uint8`` (H, W, 3) array to ``path`` in ``format`` (default: ``info.format``, else from the
    extension), keeping the EXIF, ICC profile, DPI and format hints of ``info``. Returns ``path``."""
    path = Path(path)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ImageWriteError(f"{path}: write_image needs a uint8 array of shape (H, W, 3), got {image.dtype} "
                              f"{image.shape}")
    fmt = (format or (info.format if info is not None else None) or format_for_path(path)).upper()
    fmt = "JPEG" if fmt in ("MPO", "JPG") else fmt
    if fmt not in WRITABLE_FORMATS:
        raise ImageWriteError(f"{path}: cannot write format {fmt}; supported: {', '.join(sorted(WRITABLE_FORMATS))}")
    options = _save_options(fmt, info, width=image.shape[1], height=image.shape[0])
    pil = Image.fromarray(np.ascontiguousarray(image))  # uint8 (H, W, 3) is RGB
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        pil.save(f, format=fmt, **options)
    return path


def _save_options(fmt: str, info: ImageInfo | None, *, width: int, height: int) -> dict:
    info = info or ImageInfo(format=fmt, mode="RGB", size=(width, height))
    options: dict = {}
    if fmt != "BMP":
        exif = _exif_for_output(info.exif, width, height)
        if exif:
            options["exif"] = exif
        if info.icc_profile:
            options["icc_profile"] = info.icc_profile
    if info.dpi and fmt in ("JPEG", "PNG", "TIFF"):
        options["dpi"] = tuple(int(round(d)) for d in info.dpi) if fmt == "JPEG" else info.dpi
    if fmt == "JPEG":
        options["quality"] = info.quality if info.quality is not None else DEFAULT_QUALITY
        if info.subsampling is not None:
            options["subsampling"] = info.subsampling
        if info.progressive:
            options["progressive"] = True
    elif fmt == "WEBP":
        if info.lossless:
            options["lossless"] = True
        else:
            options["quality"] = info.quality if info.quality is not None else DEFAULT_QUALITY
    elif fmt == "TIFF":
        options["compression"] = info.compression if info.compression in _LOSSLESS_TIFF else "tiff_lzw"
    return options


def _exif_for_output(exif: bytes | None, width: int, height: int) -> bytes | None:
    """The EXIF block with PixelXDimension/PixelYDimension set to the written size (they swap on rotation)."""
    if not exif:
        return None
    try:
        block = Image.Exif()
        block.load(exif)
        sub = block.get_ifd(_EXIF_IFD)
        if _PIXEL_X_DIMENSION in sub or _PIXEL_Y_DIMENSION in sub:
            sub[_PIXEL_X_DIMENSION], sub[_PIXEL_Y_DIMENSION] = width, height
            return block.tobytes()
    except Exception:
        pass
    return exif
