"""Every entry point against a table of user mistakes: one ``error:`` line naming the flag, key or file and nothing
else on stderr, no traceback, exit status 2 (README: Exit statuses), and nothing written. The entry points with a
--config flag also get every mistake a config file and its overrides can hold (CONFIG_MISTAKES).

The commands run as they would from a shell, but forked from one process that imported the libraries once
(tests/script_server.py), so the whole table costs about as much as a few plain subprocesses.
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import script_server
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def run_cli(script: str, *args: str, env: dict | None = None) -> tuple[int, str, str]:
    """``python launch/<script>.py args`` (``env``: variables added for this command), forked from a warm server."""
    base = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = script_server.run([sys.executable, f"launch/{script}.py", *args], env={**base, **(env or {})}, cwd=REPO,
                             timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def cli():
    return run_cli


@pytest.fixture(scope="module")
def t(tmp_path_factory):
    """A folder of things to point the commands at."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    for side in ("photos", "refs"):
        (root / side).mkdir()
        for name in ("a", "b"):
            Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / side / f"{name}.png")
    (root / "empty").mkdir()
    (root / "no_images").mkdir()
    (root / "no_images" / "notes.txt").write_text("not a photo")
    (root / "afile").write_text("a file, not a folder")
    (root / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (root / "no_get_sweep.py").write_text("CELLS = []\n")
    (root / "no_model_cell.py").write_text("def get_sweep():\n    return {'cells': [{'name': 'x'}]}\n")
    (root / "syntax_error.py").write_text("from wespe.config import wespe_paper\n\n\ndef get_config()\n"
                                          "    return wespe_paper()\n")  # line 4: no colon
    (root / "raises.py").write_text("def get_config():\n    raise RuntimeError('no such preset')\n\n\n"
                                    "def get_sweep():\n    raise RuntimeError('no such preset')\n")
    (root / "no_get_config.py").write_text("from wespe.config import wespe_paper\nCONFIG = wespe_paper()\n")
    (root / "out_of_range.py").write_text("from wespe.config import wespe_paper\n\n\ndef get_config():\n"
                                          "    config = wespe_paper()\n    config.weights.tv = -1.0\n"
                                          "    return config\n")
    (root / "not_a_workdir").mkdir()
    (root / "bare_workdir" / "checkpoints").mkdir(parents=True)
    return root


# (script, arguments with {t} = the inputs folder and {o} = a fresh output path, words the error line must have)
CASES = {
    # launch/enhance.py
    "enhance: no input": ("enhance", ["--pretrained=dped_iphone", "--output={o}"], ["input photo or folder"]),
    "enhance: no generator": ("enhance", ["--output={o}", "{t}/photos"], ["--pretrained", "--checkpoint"]),
    "enhance: two generators": ("enhance", ["--pretrained=dped_iphone", "--checkpoint={t}/garbage.npz", "--output={o}",
                                            "{t}/photos"], ["exactly one"]),
    "enhance: no --output": ("enhance", ["--checkpoint={t}/garbage.npz", "{t}/photos"], ["--output"]),
    "enhance: output is a file": ("enhance", ["--checkpoint={t}/garbage.npz", "--output={t}/afile", "{t}/photos"],
                                  ["afile", "not a folder"]),
    "enhance: missing input": ("enhance", ["--checkpoint={t}/garbage.npz", "--output={o}", "{t}/nope.jpg"],
                               ["nope.jpg", "does not exist"]),
    "enhance: folder without photos": ("enhance", ["--checkpoint={t}/garbage.npz", "--output={o}", "{t}/no_images"],
                                       ["no_images", "no photo"]),
    "enhance: missing checkpoint": ("enhance", ["--checkpoint={t}/nope.npz", "--output={o}", "{t}/photos"],
                                    ["nope.npz", "does not exist"]),
    "enhance: checkpoint not a generator": ("enhance", ["--checkpoint={t}/garbage.npz", "--output={o}", "{t}/photos"],
                                            ["garbage.npz"]),
    "enhance: pretrained without weights": ("enhance", ["--pretrained=dped_iphone", "--output={o}", "{t}/photos"],
                                            ["weights_dir"]),
    "enhance: missing weights_dir": ("enhance", ["--pretrained=dped_iphone", "--weights_dir={t}/nope", "--output={o}",
                                                 "{t}/photos"], ["nope", "does not exist"]),
    "enhance: unknown pretrained": ("enhance", ["--pretrained=dped_nokia", "--output={o}", "{t}/photos"],
                                    ["--pretrained", "dped_iphone"]),
    "enhance: negative tile": ("enhance", ["--checkpoint={t}/garbage.npz", "--tile=-1", "--output={o}", "{t}/photos"],
                               ["--tile"]),
    "enhance: zero memory budget": ("enhance", ["--checkpoint={t}/garbage.npz", "--memory_budget_mb=0",
                                                "--output={o}", "{t}/photos"], ["memory_budget_mb"]),
    # launch/evaluate.py
    "evaluate: no model": ("evaluate", ["--source={t}/photos", "--output_dir={o}"], ["exactly one"]),
    "evaluate: no --output_dir": ("evaluate", ["--checkpoint={t}/garbage.npz", "--source={t}/photos"],
                                  ["--output_dir"]),
    "evaluate: no --source": ("evaluate", ["--checkpoint={t}/garbage.npz", "--output_dir={o}"], ["--source"]),
    "evaluate: missing source": ("evaluate", ["--outputs={t}/photos", "--source={t}/nope", "--output_dir={o}"],
                                 ["nope", "does not exist"]),
    "evaluate: missing reference": ("evaluate", ["--outputs={t}/photos", "--reference={t}/nope", "--output_dir={o}"],
                                    ["nope", "does not exist"]),
    "evaluate: workdir without checkpoints": ("evaluate", ["--checkpoint={t}/bare_workdir", "--source={t}/photos",
                                                           "--output_dir={o}"], ["bare_workdir", "checkpoint"]),
    "evaluate: missing checkpoint": ("evaluate", ["--checkpoint={t}/nope", "--source={t}/photos", "--output_dir={o}"],
                                     ["nope"]),
    "evaluate: output_dir is a file": ("evaluate", ["--outputs={t}/photos", "--reference={t}/refs",
                                                    "--output_dir={t}/afile"], ["afile"]),
    "evaluate: extra argument": ("evaluate", ["--outputs={t}/photos", "--reference={t}/refs", "--output_dir={o}",
                                              "stray"], ["unexpected", "stray"]),
    "evaluate: zero limit": ("evaluate", ["--outputs={t}/photos", "--reference={t}/refs", "--output_dir={o}",
                                          "--limit=0"], ["--limit"]),
    # launch/sweep.py
    "sweep: no --sweep": ("sweep", ["--output_dir={o}"], ["--sweep"]),
    "sweep: missing sweep file": ("sweep", ["--sweep={t}/nope.py", "--output_dir={o}"], ["nope.py"]),
    "sweep: no get_sweep": ("sweep", ["--sweep={t}/no_get_sweep.py", "--output_dir={o}"], ["get_sweep"]),
    "sweep: syntax error": ("sweep", ["--sweep={t}/syntax_error.py", "--output_dir={o}"],
                            ["--sweep={t}/syntax_error.py", "syntax error at line 4"]),
    "sweep: get_sweep raises": ("sweep", ["--sweep={t}/raises.py", "--output_dir={o}"],
                                ["--sweep={t}/raises.py", "get_sweep() raised RuntimeError: no such preset", "line 6"]),
    "sweep: cell without a model": ("sweep", ["--sweep={t}/no_model_cell.py", "--output_dir={o}",
                                              "--source={t}/photos"], ["cell x", "pretrained"]),
    "sweep: workdir without checkpoints": ("sweep", ["--sweep=experiments/sweeps/run_checkpoints.py",
                                                     "--workdir={t}/bare_workdir", "--source={t}/photos",
                                                     "--output_dir={o}"], ["bare_workdir", "checkpoints"]),
    # launch/benchmark.py
    "benchmark: unknown mode": ("benchmark", ["--mode=fastest"], ["--mode"]),
    "benchmark: unknown tiling": ("benchmark", ["--mode=enhance", "--tilings=diagonal"], ["--tilings", "diagonal"]),
    "benchmark: missing torch python": ("benchmark", ["--mode=torch_ratio", "--torch_python={t}/nope/python"],
                                        ["--torch_python", "no such file"]),
    # launch/compare_runs.py
    "compare_runs: one run": ("compare_runs", ["{t}/not_a_workdir"], ["two or more"]),
    "compare_runs: not workdirs": ("compare_runs", ["{t}/not_a_workdir", "{t}/empty"], ["not_a_workdir",
                                                                                     "metrics.jsonl"]),
    # launch/quality.py: every preset checked, its file and its config with the benchmark's overrides, before any
    # photo is prepared (more in tests/test_quality_benchmark.py)
    "quality: missing preset file": ("quality", ["--output_dir={o}", "--presets=a={t}/nope.py"],
                                     ["--presets=a={t}/nope.py: no such config file"]),
    "quality: preset get_config raises": ("quality", ["--output_dir={o}", "--presets=a={t}/raises.py"],
                                          ["--presets=a={t}/raises.py: get_config() raised RuntimeError: no such "
                                           "preset (at line 2)"]),
    "quality: preset syntax error": ("quality", ["--output_dir={o}", "--presets=a={t}/syntax_error.py"],
                                     ["--presets=a={t}/syntax_error.py: syntax error at line 4"]),
    "quality: preset without get_config": ("quality", ["--output_dir={o}", "--presets=a={t}/no_get_config.py"],
                                           ["--presets=a={t}/no_get_config.py has no get_config()"]),
    "quality: preset value out of range": ("quality", ["--output_dir={o}", "--presets=a={t}/out_of_range.py"],
                                           ["--presets=a={t}/out_of_range.py: config.weights.tv=-1.0: must be >= 0"]),
    "quality: the second preset is bad": ("quality", ["--output_dir={o}", "--presets=ok=experiments/quality/"
                                                      "wespe_plus.py,bad={t}/raises.py"], ["--presets=bad="]),
    "quality: negative seed": ("quality", ["--output_dir={o}", "--seeds=0,-1"], ["--seeds: -1 must be >= 0"]),
    "quality: preset named as a baseline": ("quality", ["--output_dir={o}", "--presets=unsharp={t}/out_of_range.py"],
                                            ["'unsharp'", "another method"]),
    # launch/train.py (more in tests/test_cli.py and tests/test_resilience.py)
    "train: no --workdir": ("train", ["--source={t}/photos", "--target={t}/refs"], ["--workdir"]),
    "train: extra argument": ("train", ["--workdir={o}", "stray"], ["unexpected", "stray"]),
    "train: missing config file": ("train", ["--config={t}/nope.py", "--workdir={o}"], ["nope.py"]),
    "train: unknown key with a config file": ("train", ["--config=experiments/demo.py", "--config.no_such_key=1",
                                                         "--workdir={o}"], ["--config.no_such_key", "unknown"]),
    "train: unknown nested key with a config file": (
        "train", ["--config=experiments/demo.py", "--config.generator.widht=8", "--workdir={o}"],
        ["--config.generator.widht: unknown config key; did you mean --config.generator.width?"]),
    "train: a learning rate < 0": ("train", ["--config=experiments/demo.py", "--config.optimizer.lr_generator=-0.5",
                                             "--workdir={o}"], ["--config.optimizer.lr_generator=-0.5: must be > 0"]),
    "train: only --source with the demo": ("train", ["--config=experiments/demo.py", "--source={t}/photos",
                                                     "--workdir={o}"], ["--source", "--target"]),
}

# Every entry point with a --config flag, against the mistakes a config file and its overrides can hold.
CONFIG_MISTAKES = {
    "typo in a leaf": (["--config=experiments/demo.py", "--config.optimizer.lr_generatr=1e-3"],
                       ["--config.optimizer.lr_generatr: unknown config key; did you mean "
                        "--config.optimizer.lr_generator?"]),
    "typo in a section": (["--config=experiments/demo.py", "--config.optimiser.lr_generator=1e-3"],
                          ["--config.optimiser.lr_generator: unknown config key; did you mean "
                           "--config.optimizer.lr_generator?"]),
    "wrong type": (["--config=experiments/demo.py", "--config.batch_size=abc"], ["--config.batch_size=abc"]),
    "out of range": (["--config=experiments/demo.py", "--config.weights.tv=-1"],
                     ["--config.weights.tv=-1: must be >= 0"]),
    "not a number": (["--config=experiments/demo.py", "--config.optimizer.lr_discriminator=nan"],
                     ["--config.optimizer.lr_discriminator=nan: must be finite and > 0"]),
    "a file that raises": (["--config={t}/raises.py"],
                           ["--config={t}/raises.py: get_config() raised RuntimeError: no such preset (at line 2)"]),
    "a syntax error": (["--config={t}/syntax_error.py"], ["--config={t}/syntax_error.py: syntax error at line 4"]),
    "no get_config": (["--config={t}/no_get_config.py"], ["--config={t}/no_get_config.py has no get_config()"]),
}
CONFIG_COMMANDS = {"train": ["--workdir={o}"], "benchmark": ["--out={o}/bench.json"]}
for command, other in CONFIG_COMMANDS.items():
    for mistake, (args, words) in CONFIG_MISTAKES.items():
        CASES[f"{command}: config {mistake}"] = (command, args + other, words)


@pytest.mark.parametrize("case", list(CASES))
def test_user_mistake_is_one_line_exit_2_and_writes_nothing(cli, t, tmp_path, case):
    script, args, words = CASES[case]
    out = tmp_path / "out"
    code, stdout, stderr = cli(script, *[a.format(t=t, o=out) for a in args])
    lines = stderr.strip().splitlines()
    assert code == 2, (case, code, stderr[-3000:])
    assert "Traceback" not in stderr, (case, stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, stderr[-3000:])  # nothing logged before it
    for word in words:
        assert word.format(t=t) in lines[-1], (case, word, lines[-1])
    assert not out.exists(), (case, "wrote its output although the input was wrong")


def test_traceback_on_request(cli, t, tmp_path):
    code, _, stderr = cli("enhance", f"--checkpoint={t}/nope.npz", f"--output={tmp_path}/o", f"{t}/photos",
                          env={"WESPE_TRACEBACK": "1"})
    assert code != 0 and "Traceback" in stderr and "ExportFormatError" in stderr
