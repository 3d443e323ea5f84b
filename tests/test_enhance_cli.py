"""launch/enhance.py end to end (subprocesses), plus wespe.inference.file_enhancement behind it (generator loading
and the export format: tests/test_loading.py).

The CLI runs are few on purpose (each starts JAX, ~2-5 s): one run over a folder with good and bad files (then the
same command again, which skips what is done, and with --overwrite), the flag errors, one run where nothing
succeeds, and the official iPhone generator against the TensorFlow reference output (needs
``../shared/dped_pretrained`` next to the repository; skipped without it).
"""

import importlib.util
import os
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import script_server
from flax import nnx
from PIL import Image, ImageCms

from wespe import image_io
from wespe.image_io import read_image
from wespe.inference import export, file_enhancement, loading
from wespe.inference.enhance import enhance
from wespe.models import Generator

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "dped_pretrained"
ORIENTATION, MAKE = 0x0112, 0x010F


def run_cli(*args, timeout=180):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return script_server.run([sys.executable, "launch/enhance.py", *map(str, args)], cwd=REPO, env=env,
                             timeout=timeout)


def random_generator(seed=0, **kwargs):
    """A width-8, 1-block generator with random weights, built abstractly and filled from NumPy: skips the
    seconds of compiling JAX's random initialisers in a fresh process."""
    generator = nnx.eval_shape(lambda: Generator(width=8, num_blocks=1, rngs=nnx.Rngs(0), **kwargs))
    rng = np.random.default_rng(seed)
    for path, var in nnx.iter_graph(generator):
        if isinstance(var, nnx.Variable):
            shape = var.get_value().shape
            scale = 0.1 if len(shape) == 4 else 0.02
            base = 1.0 if path[-1] in ("scale", "var") else 0.0
            var.set_value(jnp.asarray(base + scale * rng.standard_normal(shape), jnp.float32))
    return generator


def pattern(height, width, seed):
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = np.random.default_rng(seed).uniform(0, 6, 3)
    return np.round(np.stack([127 + 100 * np.sin(x / 7 + y / (5 + k) + phase[k]) for k in range(3)], -1)
                    ).astype(np.uint8)


def test_enhance_files_refuses_clashing_raw_outputs(tmp_path):
    for ext in ("png", "jpg"):
        Image.fromarray(pattern(8, 8, 0)).save(tmp_path / f"same.{ext}")
    with pytest.raises(ValueError, match="save_raw.*clashes"):
        file_enhancement.enhance_files(None, [tmp_path], tmp_path / "out", save_raw=True, progress=False)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------- the CLI, end to end

@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    export.save_generator(random_generator(seed=1), root / "workdir")  # --checkpoint=<dir with generator.npz>
    folder = root / "photos"
    (folder / "sub").mkdir(parents=True)
    exif = Image.Exif()
    exif[ORIENTATION], exif[MAKE] = 6, "Canon"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(pattern(24, 40, 0)).save(folder / "portrait.jpg", quality=90, exif=exif, icc_profile=icc)
    Image.fromarray(pattern(20, 28, 1)).save(folder / "flat.png")
    Image.fromarray(pattern(16, 12, 2)).save(folder / "sub" / "small.webp", lossless=True)
    (folder / "broken.jpg").write_text("this is not a JPEG\n")
    (folder / "readme.txt").write_text("not a photo, ignored\n")
    return {"root": root, "folder": folder, "icc": icc}


def test_cli_folder_with_a_bad_file(photos):
    root, folder = photos["root"], photos["folder"]
    out = root / "out"
    result = run_cli(f"--checkpoint={root / 'workdir'}", f"--output={out}", "--save_raw", "--tile=0", folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "3 enhanced, 1 failed"
    assert "broken.jpg" in result.stderr and "not an image" in result.stderr  # reported with the reason
    if importlib.util.find_spec("tqdm") is not None:  # the progress bar (images, rate, ETA)
        assert "img/s" in result.stderr or "s/img" in result.stderr

    written = sorted(str(p.relative_to(out)).replace(os.sep, "/") for p in out.rglob("*") if p.is_file())
    assert written == ["flat.npy", "flat.png", "portrait.jpg", "portrait.npy", "sub/small.npy", "sub/small.webp"]

    portrait = Image.open(out / "portrait.jpg")
    assert portrait.format == "JPEG" and portrait.size == (24, 40)  # orientation 6 applied: rotated size
    assert portrait.getexif()[ORIENTATION] == 1 and portrait.getexif()[MAKE] == "Canon"
    assert portrait.info["icc_profile"] == photos["icc"]
    assert Image.open(out / "flat.png").format == "PNG" and Image.open(out / "flat.png").size == (28, 20)
    assert Image.open(out / "sub" / "small.webp").format == "WEBP"

    generator = loading.load_exported_generator(root / "workdir")
    for name, source in [("portrait", "portrait.jpg"), ("flat", "flat.png"), ("sub/small", "sub/small.webp")]:
        raw = np.load(out / f"{name}.npy")
        image, _ = read_image(folder / source)
        assert raw.dtype == np.float32 and raw.shape == image.shape
        np.testing.assert_allclose(raw, enhance(generator, image), atol=1e-5)  # the checkpoint was used
        if not source.endswith(".jpg"):  # lossless outputs hold exactly round(clip(y, 0, 1) * 255)
            output, _ = read_image(out / source)
            np.testing.assert_array_equal(output, image_io.to_uint8(raw))

    # The same command again resumes: nothing is replaced, each photo already done is named, status 0 (every good
    # photo has its output); --overwrite replaces them.
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = run_cli(f"--checkpoint={root / 'workdir'}", f"--output={out}", "--save_raw", folder)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == "0 enhanced, 3 skipped (output exists), 1 failed"
    for name in ("portrait.jpg", "flat.png", "sub/small.webp"):
        assert f"skipped {folder / name}: {out / name} exists" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes
    replaced = run_cli(f"--checkpoint={root / 'workdir'}", f"--output={out}", "--save_raw", "--overwrite", folder)
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stdout.strip().splitlines()[-1] == "3 enhanced, 1 failed"
    assert (out / "flat.png").stat().st_mtime_ns != mtimes[out / "flat.png"]


@pytest.mark.parametrize("flags", [[], ["--pretrained=dped_iphone", "--checkpoint=x.npz"]], ids=["neither", "both"])
def test_cli_needs_exactly_one_generator(tmp_path, flags):
    # The input does not exist: had anything been read before the flag check, the error would say so.
    result = run_cli(*flags, f"--output={tmp_path / 'out'}", tmp_path / "no_such_photo.jpg")
    assert result.returncode != 0
    assert "exactly one of --pretrained" in result.stderr and "no_such_photo" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_output_that_is_a_file_fails_before_the_model_loads(tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    # The checkpoint does not exist either: had the model been loaded first, the error would name it.
    for output in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        result = run_cli("--checkpoint=no_such.npz", f"--output={output}", tmp_path)
        assert result.returncode == 2
        assert f"output folder {output}" in result.stderr and "no_such.npz" not in result.stderr
    assert (tmp_path / "taken").read_text() == "a file, not a folder"


def test_cli_fails_when_nothing_succeeds(photos, tmp_path):
    result = run_cli(f"--checkpoint={photos['root'] / 'workdir' / 'generator.npz'}", f"--output={tmp_path / 'out'}",
                     photos["folder"] / "broken.jpg")
    assert result.returncode == 1
    assert result.stdout.strip().splitlines()[-1] == "0 enhanced, 1 failed"


@pytest.mark.skipif(not (SHARED / "reference" / "chelsea_input.png").exists(),
                    reason=f"official DPED checkpoints and reference output not found at {SHARED}")
def test_cli_official_iphone_generator_matches_tensorflow(tmp_path):
    result = run_cli("--pretrained=dped_iphone", f"--weights_dir={SHARED}", f"--output={tmp_path}", "--save_raw",
                     SHARED / "reference" / "chelsea_input.png")
    assert result.returncode == 0, result.stderr
    raw = np.load(tmp_path / "chelsea_input.npy")
    reference = np.load(SHARED / "reference" / "chelsea_iphone_orig_output.npy")
    assert raw.shape == reference.shape == (300, 450, 3)
    assert np.abs(raw - reference).max() <= 1e-4
    output, info = read_image(tmp_path / "chelsea_input.png")
    assert info.format == "PNG"
    np.testing.assert_array_equal(output, image_io.to_uint8(raw))


@pytest.mark.skipif(not (SHARED / "reference" / "chelsea_input.png").exists(),
                    reason=f"official DPED checkpoints and reference output not found at {SHARED}")
def test_bfloat16_inference_accuracy_against_tensorflow():
    """bfloat16 inference of the official iPhone model vs TensorFlow's float32 output (README: measured on CPU
    max 7.4e-3, 58.9 dB, at most 2 levels of 8 bits), whole and tiled."""
    generator = loading.load_dped_generator("dped_iphone", SHARED)
    x, _ = read_image(SHARED / "reference" / "chelsea_input.png")
    reference = np.load(SHARED / "reference" / "chelsea_iphone_orig_output.npy")
    for tile in (None, 128):
        y = np.asarray(enhance(generator, x, compute_dtype="bfloat16", tile=tile), np.float32)
        mse = np.mean(np.square(np.clip(y, 0, 1) - np.clip(reference, 0, 1)))
        assert 10 * np.log10(1 / mse) > 52, tile
        levels = np.abs(image_io.to_uint8(y).astype(int) - image_io.to_uint8(reference).astype(int))
        assert levels.max() <= 3 and levels.mean() < 0.4, (tile, levels.max(), levels.mean())
        assert np.abs(y - reference).max() > 1e-4  # it did compute in bfloat16
