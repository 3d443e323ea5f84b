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
    ("foo", "the keys are listed at the top of wespe/config.py"),
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
