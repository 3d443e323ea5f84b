"""wespe.file_enhancement in process: a folder of photos enhanced into mirrored paths, in their own formats, the
pixels those of ``wespe.enhance``; a bad file reported, the others done; the checks made before any work.
(The command line: tests/test_enhance_cli.py; the read-ahead / write-behind threads: tests/test_file_pipeline.py.)"""

import numpy as np
import pytest
from PIL import Image

from wespe import file_enhancement, image_io
from wespe.inference import enhance

from test_enhance_cli import pattern, random_generator


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
