"""wespe.evaluation.curves / launch/compare_runs.py on metrics.jsonl files the test writes."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import script_server

from wespe.evaluation import curves

ROOT = Path(__file__).resolve().parent.parent


def _run(workdir: Path, losses, extra=None):
    workdir.mkdir(parents=True)
    with open(workdir / "metrics.jsonl", "w") as f:
        for step, value in enumerate(losses, start=1):
            f.write(json.dumps({"step": step * 10, "time": 1.0, "loss/generator": value, "lr": 1e-4,
                                **(extra or {})}) + "\n")
        f.write('{"step": 99')  # a torn last line (a killed run) is skipped


def test_compare_tail_means_and_gap(tmp_path):
    _run(tmp_path / "a", [4.0, 3.0, 2.0, 1.0, 1.0], {"loss/only_a": 1.0})
    _run(tmp_path / "b", [4.0, 3.1, 2.1, 1.2, 1.1])
    steps, values = curves.read_metrics(tmp_path / "a")["loss/generator"]
    np.testing.assert_array_equal(steps, [10, 20, 30, 40, 50])
    summary = curves.compare([tmp_path / "a", tmp_path / "b"], tail_fraction=0.25)
    assert list(summary) == ["loss/generator"]  # shared losses only; lr is not a loss
    entry = summary["loss/generator"]
    assert entry["steps"] == [40, 50] and entry["tail_means"] == [1.0, 1.15]
    assert entry["max_relative_gap"] == 0.15 and entry["finite"]


def test_compare_runs_cli_plot_and_errors(tmp_path):
    _run(tmp_path / "a", [2.0, 1.0])
    _run(tmp_path / "b", [2.0, float("nan")])
    out = tmp_path / "plots" / "curves.png"
    proc = script_server.run([sys.executable, str(ROOT / "launch" / "compare_runs.py"), f"--out={out}",
                              str(tmp_path / "a"), str(tmp_path / "b")], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["loss/generator"]["finite"] is False  # a diverged run is flagged
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = script_server.run([sys.executable, str(ROOT / "launch" / "compare_runs.py"), str(tmp_path / "a"),
                              str(tmp_path / "nope")], timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "nope" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(ValueError, match="share no metric"):
        curves.plot([tmp_path / "a", tmp_path / "a"], tmp_path / "x.png", prefix="nothing/")
