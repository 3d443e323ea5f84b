"""wespe/inference/file_pipeline.py: reads ahead and writes behind in order, bounded, with errors kept per item; and
file_enhancement.enhance_files through it (a photo that cannot be written is reported, the others written)."""

import threading
import time

import numpy as np
import pytest
from PIL import Image
from test_enhance_cli import pattern, random_generator

from wespe.inference import file_enhancement, file_pipeline


def test_read_ahead_keeps_order_and_errors_and_reads_at_most_one_ahead():
    started, lock = [], threading.Lock()

    def read(i):
        with lock:
            started.append(i)
        if i == 2:
            raise ValueError("item 2 is unreadable")
        time.sleep(0.01)
        return i * 10

    seen = []
    for i, value, error in file_pipeline.read_ahead(range(6), read, ahead=1):
        time.sleep(0.03)  # "compute": the next read has time to start, not the one after
        with lock:
            assert max(started) <= i + 1, (i, started)
        seen.append((i, value, None if error is None else str(error)))
    assert seen == [(0, 0, None), (1, 10, None), (2, None, "item 2 is unreadable"), (3, 30, None), (4, 40, None),
                    (5, 50, None)]


def test_background_writer_runs_in_order_bounded_and_reports_each_error():
    done, in_flight, lock = [], [0], threading.Lock()

    def write(i):
        with lock:
            in_flight[0] += 1
        time.sleep(0.02)
        done.append(i)
        if i == 1:
            raise OSError(28, "No space left on device")

    results = []
    with file_pipeline.BackgroundWriter(pending=2) as writer:
        for i in range(5):
            writer.submit(i, write, i)
            assert len(writer._jobs) <= 2  # a third waits: memory stays bounded
            results += writer.finished()
        results += writer.close()
    assert done == [0, 1, 2, 3, 4]
    assert [k for k, _ in results] == [0, 1, 2, 3, 4]
    assert [k for k, e in results if e is not None] == [1] and "No space" in str(dict(results)[1])


@pytest.mark.parametrize("depth", [0, 1], ids=["inline (CPU)", "overlapped (accelerators)"])
def test_enhance_files_reports_a_photo_it_cannot_write_and_writes_the_others(tmp_path, monkeypatch, depth):
    monkeypatch.setattr(file_pipeline, "overlap_depth", lambda: depth)
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        Image.fromarray(pattern(12, 16, i)).save(folder / name)
    (out / "b.png").mkdir(parents=True)  # a folder where b's output would go: its write fails
    report = file_enhancement.enhance_files(random_generator(), [folder], out, progress=False)
    assert [s.name for s, _ in report.enhanced] == ["a.png", "c.png"]
    assert [(s.name, "b.png" in reason) for s, reason in report.failed] == [("b.png", True)]
    for name in ("a.png", "c.png"):
        assert np.asarray(Image.open(out / name)).shape == (12, 16, 3)


def test_inline_mode_same_results_in_the_callers_thread():
    caller = threading.get_ident()

    def read(i):
        assert threading.get_ident() == caller
        if i == 1:
            raise ValueError("bad")
        return i

    assert [(i, v, e is not None) for i, v, e in file_pipeline.read_ahead(range(3), read, ahead=0)] == [
        (0, 0, False), (1, None, True), (2, 2, False)]
    with file_pipeline.BackgroundWriter(pending=0) as writer:
        writer.submit("a", lambda: None)
        writer.submit("b", read, 1)
        assert [(k, e is not None) for k, e in writer.finished()] == [("a", False), ("b", True)]


def test_throughput_counts_megapixels_per_second():
    rate = file_pipeline.Throughput()
    rate.start -= 2.0  # two seconds ago
    assert float(rate.add(1000, 1000)) == pytest.approx(0.5, rel=0.05)
