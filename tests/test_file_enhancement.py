"""wespe.inference.file_enhancement in process: a folder of photos enhanced into mirrored paths, in their own formats,
the pixels those of ``wespe.enhance``; a bad file reported, the others done; the checks made before any work.
(The command line: tests/test_enhance_cli.py; the read-ahead / write-behind threads: tests/test_file_pipeline.py.)"""

import logging
import os

import numpy as np
import pytest
from PIL import Image
from test_enhance_cli import pattern, random_generator

from wespe import image_io
from wespe.errors import UserError
from wespe.inference import file_enhancement
from wespe.inference.enhance import enhance


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(pattern(24, 32, 0)).save(root / "a.png")
    Image.fromarray(pattern(30, 20, 1)).save(root / "sub" / "b.jpg", quality=90)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def test_enhances_a_folder_into_mirrored_paths(folder, tmp_path):
    generator = random_generator(seed=2)
    out = tmp_path / "out"
    report = file_enhancement.enhance_files(generator, [folder], out, save_raw=True, progress=False)
    assert sorted(p.relative_to(out).as_posix() for _, p in report.enhanced) == ["a.png", "sub/b.jpg"]
    assert [(p.name, "broken" in reason or "cannot" in reason) for p, reason in report.failed] == \
        [("broken.png", True)]
    assert report.summary() == "2 enhanced, 1 failed"
    for source, output in report.enhanced:
        image, source_info = image_io.read_image(source)
        raw = enhance(generator, image)
        np.testing.assert_array_equal(np.load(file_enhancement.raw_path(output)), raw)
        written, info = image_io.read_image(output)
        assert info.format == ("PNG" if output.suffix == ".png" else "JPEG")
        # the 8-bit output, encoded as the source was (the JPEG at its estimated quality)
        again = image_io.write_image(tmp_path / "again" / output.name, image_io.to_uint8(raw), source_info)
        np.testing.assert_array_equal(written, image_io.read_image(again)[0])
        if info.format == "PNG":  # lossless: exactly the 8-bit output
            np.testing.assert_array_equal(written, image_io.to_uint8(raw))


def test_problems_found_before_any_work(folder, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no photo found in"):
        file_enhancement.plan([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing.jpg does not exist"):
        file_enhancement.plan([tmp_path / "missing.jpg"], tmp_path / "out")
    with pytest.raises(ValueError, match="overwrite|same"):
        file_enhancement.plan([folder / "a.png"], folder)  # the output would be the input itself
    pairs = file_enhancement.plan([folder], tmp_path / "out")
    assert [(s.name, o.relative_to(tmp_path / "out").as_posix()) for s, o in pairs] == \
        [("a.png", "a.png"), ("broken.png", "broken.png"), ("b.jpg", "sub/b.jpg")]


def test_existing_outputs_are_skipped_and_named_unless_overwrite(folder, tmp_path, caplog):
    """Nothing in the output folder is replaced without ``overwrite``: a photo whose output (or, with
    ``save_raw``, its .npy) is there is skipped with a line naming that file and counted; the run still succeeds
    (a rerun resumes an interrupted folder). With ``overwrite`` both are replaced."""
    generator = random_generator(seed=2)
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "a.png").write_bytes(b"an earlier output")
    (out / "sub" / "b.npy").write_bytes(b"an earlier raw output")  # only the .npy of sub/b.jpg
    with caplog.at_level(logging.WARNING, logger="wespe"):
        report = file_enhancement.enhance_files(generator, [folder], out, save_raw=True, progress=False)
    assert report.skipped == [(folder / "a.png", out / "a.png"), (folder / "sub" / "b.jpg", out / "sub" / "b.npy")]
    assert not report.enhanced and [p.name for p, _ in report.failed] == ["broken.png"]
    assert report.summary() == "0 enhanced, 2 skipped (output exists), 1 failed" and report.ok
    skip_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped") and "exists" in
                  r.getMessage()]
    assert skip_lines == [f"skipped {folder / 'a.png'}: {out / 'a.png'} exists (--overwrite replaces it)",
                          f"skipped {folder / 'sub' / 'b.jpg'}: {out / 'sub' / 'b.npy'} exists (--overwrite "
                          "replaces it)"]
    assert (out / "a.png").read_bytes() == b"an earlier output" and not (out / "a.npy").exists()
    assert (out / "sub" / "b.npy").read_bytes() == b"an earlier raw output" and not (out / "sub" / "b.jpg").exists()

    report = file_enhancement.enhance_files(generator, [folder], out, save_raw=True, overwrite=True, progress=False)
    assert [o.relative_to(out).as_posix() for _, o in report.enhanced] == ["a.png", "sub/b.jpg"] and not report.skipped
    assert image_io.read_image(out / "a.png")[1].format == "PNG" and np.load(out / "sub" / "b.npy").ndim == 3


def test_a_symlink_loop_is_a_bad_file_the_others_are_enhanced(folder, tmp_path):
    os.symlink("x.jpg", folder / "y.jpg")
    os.symlink("y.jpg", folder / "x.jpg")
    report = file_enhancement.enhance_files(random_generator(seed=2), [folder], tmp_path / "out", progress=False)
    assert sorted(p.name for p, _ in report.enhanced) == ["a.png", "b.jpg"]
    reasons = {p.name: reason for p, reason in report.failed}
    assert sorted(reasons) == ["broken.png", "x.jpg", "y.jpg"]
    assert reasons["x.jpg"].endswith("x.jpg: symlink loop") and reasons["y.jpg"].endswith("y.jpg: symlink loop")


def test_output_folder_that_is_the_input_folder_is_refused(folder, tmp_path):
    """It would overwrite the photos (before: "no photo found", the whole folder being left out as the output);
    refused before any work, naming both. An output folder inside the input folder still works, left out."""
    with pytest.raises(UserError, match=f"--output={folder} is the input folder {folder}: .*choose an output "
                                        "folder outside the inputs"):
        file_enhancement.plan([folder], folder)
    (folder / "out").mkdir()
    Image.fromarray(pattern(8, 8, 3)).save(folder / "out" / "a.png")  # an earlier output
    pairs = file_enhancement.plan([folder], folder / "out")
    assert [s.relative_to(folder).as_posix() for s, _ in pairs] == ["a.png", "broken.png", "sub/b.jpg"]
