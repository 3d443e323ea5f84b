"""launch/train.py end to end (subprocesses) and its --config.<key> overrides (in-process).

Three CLI runs in all, each with a tiny config given as flag overrides (width-4 one-block networks, 16x16
patches, batch 2, random VGG up to relu1_2) on a few random 40x40 PNGs:

* unpaired (experiments/wespe_paper.py), with a truncated file, a non-image and a too-small image in the source
  folder: SIGTERM once it is training (exit 0, a checkpoint at the step reached), then the same command with
  --config.num_steps=<saved + 4> resumes and finishes: every output of a run is checked on that work directory;
* paired (experiments/dped_paired.py): a short run from scratch.

The SIGTERM run is a real subprocess (the signal goes to its pid); the others run forked from a warm server
(tests/script_server.py). The runs share a persistent JAX compilation cache, so only the first run of each mode
compiles.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import script_server
from absl import flags
from ml_collections import config_flags
from PIL import Image

import wespe
from wespe.checkpoint import Checkpointer

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 180  # seconds; generous, but a hung run fails instead of hanging CI
TINY = ["--config.vgg_weights=random", "--config.content_layer=relu1_2", "--config.batch_size=2",
        "--config.patch_size=16", "--config.generator.width=4", "--config.generator.num_blocks=1",
        "--config.discriminator.head=global_pool", "--config.num_sample_crops=2", "--config.log_every=1"]
WESPE_LOSSES = {"loss/content", "loss/color", "loss/texture", "loss/tv", "loss/generator",
                "loss/color_discriminator", "loss/texture_discriminator"}
DPED_LOSSES = {"loss/content", "loss/color", "loss/texture", "loss/tv", "loss/generator",
               "loss/texture_discriminator"}


def write_pngs(folder, names, size=40, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def env():
    """The commands' environment: the suite's compilation cache and XLA settings (tests/conftest.py: programs
    compiled without most optimisation passes, shared with the other modules that run the same tiny configs,
    e.g. tests/test_resilience.py and the README's commands); these tests check the CLI's plumbing, not the
    numbers."""
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def train_command(experiment, *args):
    """--config=experiments/<experiment>.py must come before its overrides."""
    return [sys.executable, "launch/train.py", f"--config=experiments/{experiment}.py", *TINY, *map(str, args)]


def run_cli(env, experiment, *args):
    """As ``subprocess.run`` would, in a child of a warm server (tests/script_server.py)."""
    return script_server.run(train_command(experiment, *args), env=env, cwd=REPO, timeout=TIMEOUT)


def metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def metrics_or_empty(workdir):
    """The complete lines of metrics.jsonl so far (the run may be writing it)."""
    try:
        return [line for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.endswith("}")]
    except FileNotFoundError:
        return []


def checkpoint_steps(workdir):
    with Checkpointer(workdir / "checkpoints", read_only=True) as ckpt:
        return ckpt.all_steps()


def check_generator(workdir):
    generator = wespe.load_generator(workdir / "generator.npz")
    assert generator.width == 4 and generator.num_blocks == 1
    out = np.asarray(generator(jnp.zeros((1, 20, 28, 3), jnp.float32)))
    assert out.shape == (1, 20, 28, 3) and np.isfinite(out).all()


def check_outputs(workdir, final_step, loss_keys):
    """What every finished run leaves in its work directory."""
    lines = metrics(workdir)
    assert [m["step"] for m in lines] == list(range(1, final_step + 1))  # log_every=1: each step exactly once
    for m in lines:
        assert loss_keys <= set(m), loss_keys - set(m)
        assert all(np.isfinite(m[k]) for k in loss_keys)
    assert (workdir / "samples" / f"step_{final_step}.png").is_file()
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "checkpoints" / str(final_step)).is_dir()
    assert checkpoint_steps(workdir)[-1] == final_step
    assert (workdir / "data_report.json").is_file()
    check_generator(workdir)


# ------------------------------------------------------------------------------------------------- unpaired

@pytest.fixture(scope="module")
def unpaired(tmp_path_factory, env):
    """SIGTERM a long unpaired run once it trains, then resume it to saved + 4 steps."""
    root = tmp_path_factory.mktemp("unpaired")
    source = write_pngs(root / "phone", [f"p{i}.png" for i in range(6)], seed=1)
    target = write_pngs(root / "dslr", [f"d{i}.jpg" for i in range(6)], seed=2)
    good = (source / "p0.png").read_bytes()
    (source / "broken.png").write_bytes(good[: len(good) // 2])  # a valid header, cut-off pixel data
    (source / "garbage.jpg").write_bytes(b"this is not a JPEG file" * 10)
    write_pngs(source, ["tiny.png"], size=8)
    workdir = root / "run"
    common = ["wespe_paper", f"--source={source}", f"--target={target}", f"--workdir={workdir}"]

    log = root / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(train_command(*common, "--config.num_steps=100000", "--config.checkpoint_every=1000",
                                              "--config.sample_every=1000"),
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + TIMEOUT
            while not metrics_or_empty(workdir):
                assert proc.poll() is None, f"exited early ({proc.returncode}):\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"no training step within {TIMEOUT} s:\n{log.read_text()[-3000:]}"
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            first_rc = proc.wait(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    first = log.read_text()
    assert first_rc == 0, first[-3000:]
    match = re.search(r"preempted at step (\d+)", first)
    assert match, first[-3000:]
    saved = int(match.group(1))
    first_steps = checkpoint_steps(workdir)
    first_metrics = metrics(workdir)
    first_exported = (workdir / "generator.npz").exists()

    final = saved + 4
    second = run_cli(env, *common, f"--config.num_steps={final}", "--config.checkpoint_every=2",
                     "--config.sample_every=1000")
    return dict(workdir=workdir, source=source, saved=saved, final=final, first=first, first_rc=first_rc,
                first_steps=first_steps, first_metrics=first_metrics, first_exported=first_exported, second=second)


def test_sigterm_saves_exits_0_and_the_same_command_resumes(unpaired):
    saved, first = unpaired["saved"], unpaired["first"]
    assert unpaired["first_rc"] == 0
    assert f"SIGTERM received: saving a checkpoint at step {saved} and exiting" in first
    assert saved >= 1
    assert unpaired["first_steps"] == [saved]  # checkpoint_every=1000: the only checkpoint is the SIGTERM one
    assert [m["step"] for m in unpaired["first_metrics"]] == list(range(1, saved + 1))
    assert not unpaired["first_exported"]  # a preempted run does not export the generator

    second = unpaired["second"]
    assert second.returncode == 0, second.stderr[-3000:]
    assert re.search(rf"resumed .* at step {saved}\b", second.stderr), second.stderr[-3000:]
    assert f"finished at step {unpaired['final']}" in second.stdout
    lines = metrics(unpaired["workdir"])  # the resumed run carries on the same metrics.jsonl
    assert [m["step"] for m in lines] == list(range(1, unpaired["final"] + 1))
    assert lines[:saved] == unpaired["first_metrics"]


def test_cli_unpaired_end_to_end(unpaired):
    workdir, final = unpaired["workdir"], unpaired["final"]
    assert unpaired["second"].returncode == 0, unpaired["second"].stderr[-3000:]
    config = json.loads((workdir / "config.json").read_text())
    assert config["mode"] == "wespe"
    assert config["batch_size"] == 2 and config["patch_size"] == 16  # the flags' values, not the preset's 30/100
    assert config["generator"]["width"] == 4 and config["generator"]["num_blocks"] == 1
    assert config["vgg_weights"] == "random" and config["num_steps"] == final
    assert config["data"]["source"] == str(unpaired["source"])
    check_outputs(workdir, final, WESPE_LOSSES)
    # checkpoint_every=2 in the resumed run, keep_checkpoints=3
    assert checkpoint_steps(workdir) == sorted({s for s in range(2, final, 2) if s > unpaired["saved"]}
                                               | {unpaired["saved"], final})[-3:]


def test_cli_skips_and_reports_bad_source_files(unpaired):
    report = json.loads((unpaired["workdir"] / "data_report.json").read_text())
    source = report["source"]
    assert source["flag"] == "--source" and source["num_good"] == 6 and source["num_bad"] == 3
    bad = {Path(b["path"]).name: b for b in source["bad"]}
    assert set(bad) == {"broken.png", "garbage.jpg", "tiny.png"}
    assert bad["tiny.png"]["kind"] == "too small" and "8x8" in bad["tiny.png"]["reason"]
    assert bad["garbage.jpg"]["kind"] == "not an image"
    assert bad["broken.png"]["kind"] in ("truncated", "corrupt") and bad["broken.png"]["reason"]
    assert report["target"]["num_bad"] == 0 and report["paired"] is False
    assert "3 skipped" in report["summary"]


# --------------------------------------------------------------------------------------------------- paired

def test_cli_paired_end_to_end(tmp_path, env):
    names = [f"{i:04d}.png" for i in range(6)]
    source = write_pngs(tmp_path / "phone", names + ["only_here.png"], seed=3)
    target = write_pngs(tmp_path / "canon", names, seed=4)
    workdir = tmp_path / "run"
    result = run_cli(env, "dped_paired", f"--source={source}", f"--target={target}",
                     f"--workdir={workdir}", "--config.num_steps=3", "--config.checkpoint_every=2",
                     "--config.sample_every=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finished at step 3" in result.stdout
    config = json.loads((workdir / "config.json").read_text())
    assert config["mode"] == "dped" and config["data"]["paired"] is True
    assert config["batch_size"] == 2 and config["generator"]["width"] == 4
    assert {k: config["weights"][k] for k in ("content", "color", "texture", "tv")} == {
        "content": 10.0, "color": 0.5, "texture": 1.0, "tv": 2000.0}  # the preset's
    check_outputs(workdir, 3, DPED_LOSSES)
    assert "loss/color_discriminator" not in metrics(workdir)[0]
    assert (workdir / "samples" / "step_2.png").is_file()
    assert checkpoint_steps(workdir) == [2, 3]
    report = json.loads((workdir / "data_report.json").read_text())
    assert report["paired"] is True and report["pairs"]["num_usable"] == 6 and report["source"]["num_good"] == 7
    assert [Path(p).name for p in report["unmatched"]["source"]] == ["only_here.png"]


# --------------------------------------------------------------------------------- --config.<key> overrides

def parse_config(*args, config=REPO / "experiments" / "wespe_paper.py"):
    """The config launch/train.py's --config flag gives for ``args`` (the same definition, fresh flag values)."""
    argv = ["train.py", *args]
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", str(config), "Experiment config file.", flag_values=values,
                                             lock_config=True, sys_argv=argv)
    values(argv)
    return holder.value


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # ml_collections loading the file
def test_config_overrides_from_flags():
    c = parse_config("--config.batch_size=30", "--config.generator.width=8", "--config.vgg_weights=random",
                     "--config.weights.tv=2.5", "--config.data.paired=false", "--config.data.flips=true")
    assert c.batch_size == 30 and c.generator.width == 8 and c.vgg_weights == "random"
    assert c.weights.tv == 2.5 and c.data.paired is False and c.data.flips is True
    assert c.patch_size == 100 and c.mode == "wespe"  # untouched keys keep the preset's values
    paired = parse_config(f"--config={REPO / 'experiments' / 'dped_paired.py'}", "--config.batch_size=4")
    assert paired.mode == "dped" and paired.data.paired is True and paired.batch_size == 4

    with pytest.raises(AttributeError, match="no_such_key"):
        parse_config("--config.no_such_key=1")
    with pytest.raises(AttributeError, match="depth"):
        parse_config("--config.generator.depth=3")
    with pytest.raises(flags.IllegalFlagValueError, match="batch_size"):
        parse_config("--config.batch_size=thirty")
