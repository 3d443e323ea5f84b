"""Shared command-line pieces (wespe/cli.py): every mistake in --config (its file, a key, a value) is one error line
naming it, with a suggestion for an unknown key; a user error prints nothing before its line."""

import sys
import textwrap
from pathlib import Path

import pytest
import script_server

from wespe import cli, errors
from wespe import config as configs

REPO = Path(__file__).resolve().parent.parent


def test_config_keys_and_overrides():
    keys = cli.config_keys()
    assert {"batch_size", "generator.width", "optimizer.global_color_lr_scale", "data.source"} <= set(keys)
    assert "generator" not in keys  # sections are not leaves
    argv = ["train.py", "--workdir=x", "--config=exp.py", "--config.a.b=1", "--config.c", "2", "--source=s"]
    assert cli.config_overrides(argv) == ["a.b", "c"]


def test_config_override_values_as_typed():
    argv = ["train.py", "--config=exp.py", "--config.a.b=-0.5", "--config.c", "2", "--noconfig.d", "-config.e=x=y",
            "--config.a.b=1e-3", "--configs.f=1", "--config_g=1"]
    assert cli.config_override_values(argv) == {"c": None, "d": None, "e": "x=y", "a.b": "1e-3"}  # the last wins
    assert cli.config_overrides(argv) == ["c", "d", "e", "a.b"]


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
    result = script_server.run([sys.executable, script, f"--workdir={workdir}", "--config.generator.widht=8"],
                               cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --config.generator.widht: unknown config key; did you mean --config.generator.width?"]
    assert not workdir.exists()


# ------------------------------------------------------------------------------ --config files, checked in-process

def _config_file(folder: Path, body: str, name: str = "exp.py") -> str:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return str(path)


SMALL_CONFIG = """
    import ml_collections

    def get_config():
        return ml_collections.ConfigDict({"steps": 3, "model": {"width": 8}})
"""


def test_overrides_are_checked_against_the_keys_of_the_config_file(tmp_path):
    small = _config_file(tmp_path, SMALL_CONFIG)
    cli.check_config_arguments(["x", f"--config={small}", "--config.model.width=4", "--config.steps", "2"], "unused")
    with pytest.raises(errors.UserError, match=r"^--config.model.widht: unknown config key; did you mean "
                                               r"--config.model.width\?$"):
        cli.check_config_arguments(["x", f"--config={small}", "--config.model.widht=4"], "unused")
    with pytest.raises(errors.UserError, match=r"^--config.batch_size: unknown config key"):  # base_config's key
        cli.check_config_arguments(["x", f"--config={small}", "--config.batch_size=4"], "unused")
    default = str(REPO / "experiments" / "wespe_paper.py")  # no --config: the default file's keys
    cli.check_config_arguments(["x", "--config.optimizer.lr_generator=1e-3"], default)
    with pytest.raises(errors.UserError, match=r"^--config.optimiser.lr_generator: unknown config key; did you mean "
                                               r"--config.optimizer.lr_generator\?$"):
        cli.check_config_arguments(["x", "--config.optimiser.lr_generator=1e-3"], default)


@pytest.mark.parametrize("body, message", [
    ("def get_config()\n    return {}\n", "{path}: syntax error at line 1: expected ':'"),
    ("import no_such_module_anywhere\n", "{path}: importing it raised ModuleNotFoundError: No module named "
                                        "'no_such_module_anywhere' (at line 1)"),
    ("CONFIG = {}\n", "{path} has no get_config() (a config file defines it, e.g. experiments/demo.py)"),
    ("\ndef get_config():\n    return {'batch_size': 1}['batch']\n",
     "{path}: get_config() raised KeyError: 'batch' (at line 3)"),
    ("def get_config():\n    return {'batch_size': 1}\n",
     "{path}: get_config() returned a dict, not an ml_collections.ConfigDict"),
])
def test_a_broken_config_file_is_one_line_naming_it(tmp_path, body, message):
    path = _config_file(tmp_path, body)
    with pytest.raises(errors.UserError) as caught:
        cli.load_config_file(path)
    assert str(caught.value).startswith(message.format(path=f"--config={path}")), str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_config_file_and_get_config_arguments(tmp_path):
    with pytest.raises(errors.PathNotFoundError, match="no such config file"):
        cli.load_config_file(str(tmp_path / "nope.py"))
    path = _config_file(tmp_path, """
        from wespe.config import preset

        def get_config(name):
            return preset(name)
    """)
    assert cli.load_config_file(f"{path}:dped_code").mode == "dped"  # config_flags' file:argument form


def test_a_bad_value_is_named_as_the_command_line_gave_it():
    def error(key, value):
        config = configs.wespe_paper()
        node = config
        for part in key.split(".")[:-1]:
            node = node[part]
        node[key.split(".")[-1]] = value
        with pytest.raises(configs.ConfigError) as caught:
            configs.validate(config)
        return caught.value

    typed = ["train.py", "--config=exp.py", "--config.optimizer.lr_generator=-5e-1"]
    assert cli.config_value_message(error("optimizer.lr_generator", -0.5), typed) == \
        "--config.optimizer.lr_generator=-5e-1: must be > 0"  # as typed
    assert cli.config_value_message(error("weights.tv", -1.0), typed) == \
        "--config=exp.py: config.weights.tv=-1.0: must be >= 0 (0 turns the term off)"  # the file set it
    assert cli.config_value_message(error("weights.tv", -1.0), ["train.py"]) == \
        "config.weights.tv=-1.0: must be >= 0 (0 turns the term off)"


def test_a_user_error_prints_no_library_log_line_first(tmp_path):
    """absl's app.run turns INFO logging on once flags are parsed: JAX's "Unable to initialize backend 'tpu'"
    then printed before the error line. Without --verbosity, only the error line."""
    script = tmp_path / "entry.py"
    script.write_text(textwrap.dedent("""
        import logging
        from wespe import cli, errors

        def main(argv):
            logging.getLogger("jax._src.xla_bridge").info("Unable to initialize backend 'tpu'")
            raise errors.UserError("--source=x does not exist")

        cli.run(main)
    """))
    quiet = script_server.run([sys.executable, script], cwd=REPO, timeout=60)
    assert quiet.returncode == 2 and quiet.stderr.splitlines() == ["error: --source=x does not exist"], quiet.stderr
    asked = script_server.run([sys.executable, script, "--verbosity=0"], cwd=REPO, timeout=60)
    assert "Unable to initialize backend 'tpu'" in asked.stderr  # --verbosity still shows them


# ------------------------------------------------------------------------------------ launch/train.py user errors

def _train(tmp_path, *args, env=None):
    import os
    return script_server.run([sys.executable, "launch/train.py", *map(str, args)], cwd=REPO, timeout=120,
                             env={**os.environ, **(env or {})})


@pytest.fixture
def folders(tmp_path):
    import numpy as np
    from PIL import Image
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
     "--config.batch_size=0: must be >= 1"),
])
def test_train_user_errors_are_one_line_exit_2(folders, case, args, message):
    result = _train(folders, *[a.format(t=folders) for a in args])
    assert result.returncode == 2, (case, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, case
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, (case, lines)  # nothing logged before the error line (the data scan is first)
    assert lines[-1].startswith("error: ") and message.format(t=folders) in lines[-1], (case, lines)
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
