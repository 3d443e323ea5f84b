"""Shared command-line pieces (wespe/cli.py): an unknown --config key is one error line with a suggestion."""

import subprocess
import sys
from pathlib import Path

import pytest

from wespe import cli

REPO = Path(__file__).resolve().parent.parent


def test_config_keys_and_overrides():
    keys = cli.config_keys()
    assert {"batch_size", "generator.width", "optimizer.global_color_lr_scale", "data.source"} <= set(keys)
    assert "generator" not in keys  # sections are not leaves
    argv = ["train.py", "--workdir=x", "--config=exp.py", "--config.a.b=1", "--config.c", "2", "--source=s"]
    assert cli.config_overrides(argv) == ["a.b", "c"]


@pytest.mark.parametrize("key, suggestion", [
    ("generator.widht", "--config.generator.width?"),  # a misspelt leaf
    ("generatr.width", "--config.generator.width?"),  # a misspelt section
    ("width", "--config.generator.width?"),  # a leaf without its section
    ("batchsize", "--config.batch_size or --config.patch_size?"),
    ("foo", "every key is documented where base_config() in wespe/config.py sets it"),
])
def test_unknown_key_message(key, suggestion):
    message = cli.unknown_key_message(key, cli.config_keys())
    assert message.startswith(f"--config.{key}: unknown config key") and message.endswith(suggestion)


@pytest.mark.parametrize("script", ["launch/train.py", "launch/benchmark.py"])
def test_cli_unknown_config_key_is_one_line_and_exit_2(tmp_path, script):
    workdir = tmp_path / "run"
    result = subprocess.run([sys.executable, script, f"--workdir={workdir}", "--config.generator.widht=8"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --config.generator.widht: unknown config key; did you mean --config.generator.width?"]
    assert not workdir.exists()


def _train(tmp_path, *args, env=None):
    import os
    return subprocess.run([sys.executable, "launch/train.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.fixture
def folders(tmp_path):
    from PIL import Image
    import numpy as np
    for side in ("src", "tgt"):
        (tmp_path / side).mkdir()
        Image.fromarray(np.zeros((120, 120, 3), np.uint8)).save(tmp_path / side / "a.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    return tmp_path


@pytest.mark.parametrize("case, args, message", [
    ("workdir is a file", ["--workdir={t}/afile/run"], "afile is a file, not a folder"),
    ("missing source", ["--workdir={t}/run", "--source={t}/nope", "--target={t}/tgt"],
     "--source={t}/nope does not exist"),
    ("empty source", ["--workdir={t}/run", "--source={t}/empty", "--target={t}/tgt"], "--source"),
    ("source is target", ["--workdir={t}/run", "--source={t}/src", "--target={t}/src"], "are the same folder"),
    ("bad config value", ["--workdir={t}/run", "--source={t}/src", "--target={t}/tgt", "--config.batch_size=0"],
     "config.batch_size must be >= 1, got 0"),
])
def test_train_user_errors_are_one_line_exit_2(folders, case, args, message):
    result = _train(folders, *[a.format(t=folders) for a in args])
    assert result.returncode == 2, (case, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, case
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message.format(t=folders) in last, (case, last)
    assert not (folders / "run" / "checkpoints").exists()


def test_train_user_error_traceback_on_request(folders):
    result = _train(folders, f"--workdir={folders}/run", f"--source={folders}/nope", f"--target={folders}/tgt",
                    env={"WESPE_TRACEBACK": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr and "DataError" in result.stderr


@pytest.mark.parametrize("error, status, line", [
    (lambda: __import__("wespe.errors").errors.UserError("--source=x does not exist"), 2,
     "error: --source=x does not exist"),
    (lambda: __import__("wespe.errors").errors.Diverged("step 7: non-finite loss/tv"), 3,
     "error: step 7: non-finite loss/tv"),
    (lambda: __import__("wespe.checkpoint").checkpoint.CheckpointError("could not save checkpoint c/8: disk full"), 1,
     "error: could not save checkpoint c/8: disk full"),
    (lambda: OSError(28, "No space left on device", "out/a.png"), 1,
     "error: [Errno 28] No space left on device: 'out/a.png'"),
])
def test_cli_errors_statuses(capsys, monkeypatch, error, status, line):
    from wespe import errors
    monkeypatch.delenv(errors.TRACEBACK_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        with errors.cli_errors():
            raise error()
    assert exit_info.value.code == status
    assert capsys.readouterr().err.strip().splitlines() == [line]


def test_cli_errors_lets_bugs_through():
    from wespe import errors
    with pytest.raises(KeyError):
        with errors.cli_errors():
            raise KeyError("a bug keeps its traceback")
