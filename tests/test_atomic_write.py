"""wespe.atomic_write.atomic_write: all-or-nothing writes with the permissions a plain open() would give."""

import os
import stat

import pytest

from wespe.atomic_write import atomic_write, current_umask


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_honours_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        with atomic_write(tmp_path / "out.bin") as f:
            f.write(b"data")
        plain = tmp_path / "plain.bin"
        plain.write_bytes(b"data")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.bin").stat().st_mode) == mode == stat.S_IMODE(plain.stat().st_mode)


def test_atomic_write_leaves_the_old_file_on_error(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
