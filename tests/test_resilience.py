"""Training runs that a broken disk or a second process must not break (launch/train.py, subprocesses).

One short run (checkpoints at steps 2, 4, 6) is copied for each case:

* the newest checkpoint damaged (a data file cut short, or its metadata cut short): the run resumes from the
  previous intact one, moves the damaged one to ``unreadable_checkpoints/`` and logs each step exactly once;
* every checkpoint damaged: one ``error:`` line naming the folder, exit 2, nothing moved;
* a second process on a busy workdir: refused with the holder's pid and host before anything is read or compiled;
  a lock left by a dead process is taken over;
* the disk fills up while a checkpoint is being saved: one ``error:`` line, exit 1, the earlier checkpoints
  intact, and the same command then resumes from the newest of them.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from test_train_cli import REPO, TIMEOUT, checkpoint_steps, env, metrics, train_command, write_pngs  # noqa: F401

from wespe.workdir_lock import LOCK_FILE, WorkdirLock

pytestmark = pytest.mark.slow  # several short training runs: start them first under pytest -n


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env):
    root = tmp_path_factory.mktemp("resilience")
    source = write_pngs(root / "phone", [f"p{i}.png" for i in range(3)], seed=1)
    target = write_pngs(root / "dslr", [f"d{i}.png" for i in range(3)], seed=2)
    workdir = root / "run"
    result = run(env, source, target, workdir, steps=6)
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoint_steps(workdir) == [2, 4, 6]
    return dict(source=source, target=target, workdir=workdir)


def args(source, target, workdir, steps):
    return ["wespe_paper", f"--source={source}", f"--target={target}", f"--workdir={workdir}",
            f"--config.num_steps={steps}", "--config.checkpoint_every=2", "--config.sample_every=1000"]


def run(env, source, target, workdir, steps, prelude=None):
    command = train_command(*args(source, target, workdir, steps))
    if prelude:  # run launch/train.py under a patch (python -c: the prelude, then the script as __main__)
        command = [sys.executable, "-c", f"{prelude}\nimport runpy, sys\nsys.argv = {command[1:]!r}\n"
                   "runpy.run_path('launch/train.py', run_name='__main__')"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def copy_run(trained, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained["workdir"], workdir)
    return workdir


def damage(step_dir, what):
    if what == "data file":  # the largest array file of the state cut to 100 bytes
        files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
        biggest = max(files, key=lambda p: p.stat().st_size)
        biggest.write_bytes(biggest.read_bytes()[:100])
    else:  # the JSON metadata (config, data iterator state) cut in half
        meta = step_dir / "metadata" / "metadata"
        meta.write_bytes(meta.read_bytes()[: meta.stat().st_size // 2])


@pytest.mark.parametrize("what", ["data file", "metadata"])
def test_damaged_newest_checkpoint_resumes_from_the_previous_one(trained, tmp_path, env, what):
    workdir = copy_run(trained, tmp_path)
    damage(workdir / "checkpoints" / "6", what)
    result = run(env, trained["source"], trained["target"], workdir, steps=8)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "cannot be read back" in line]
    assert len(warnings) == 1, result.stderr[-3000:]
    assert "checkpoint step 6" in warnings[0] and "resuming from step 4" in warnings[0], warnings
    assert str(workdir / "unreadable_checkpoints" / "6") in warnings[0] and len(warnings[0]) < 600, warnings
    assert (workdir / "unreadable_checkpoints" / "6").is_dir()  # kept to inspect
    assert checkpoint_steps(workdir) == [4, 6, 8]  # step 6 saved again, from the resumed run
    assert [m["step"] for m in metrics(workdir)] == list(range(1, 9))  # steps 5 and 6 logged once
    assert "taking over the lock" in result.stderr  # the copied run's lock file names a process that is gone


def test_every_checkpoint_damaged_is_one_line_and_moves_nothing(trained, tmp_path, env):
    workdir = copy_run(trained, tmp_path)
    for step in (2, 4, 6):
        damage(workdir / "checkpoints" / str(step), "metadata")
    result = run(env, trained["source"], trained["target"], workdir, steps=8)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no checkpoint in {workdir / 'checkpoints'} can be read back"), last
    assert "move that folder away" in last and "Traceback" not in result.stderr
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]
    assert not (workdir / "unreadable_checkpoints").exists()


def test_second_process_on_a_busy_workdir_is_refused_before_any_work(trained, tmp_path, env):
    workdir = copy_run(trained, tmp_path)
    (workdir / "data_report.json").unlink()  # written by a run once it has scanned the data
    before = (workdir / "metrics.jsonl").read_bytes()
    with WorkdirLock(workdir):  # this test process is the "other" training process
        result = run(env, trained["source"], trained["target"], workdir, steps=8)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --workdir {workdir} is in use by another training process: pid {os.getpid()} "
                           f"on host {socket.gethostname()}"), last
    assert "Traceback" not in result.stderr
    assert not (workdir / "data_report.json").exists()  # refused before the data scan (and any compile)
    assert (workdir / "metrics.jsonl").read_bytes() == before
    holder = json.loads((workdir / LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()


DISK_FULL = """
import errno, os
import orbax.checkpoint as ocp
_save = ocp.CheckpointManager.save
def save(self, step, *args, **kwargs):
    if step == 8:  # the disk fills up half-way through this save: a partial temporary folder is left behind
        os.makedirs(os.path.join(str(self.directory), f"{step}.orbax-checkpoint-tmp-1", "state"), exist_ok=True)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _save(self, step, *args, **kwargs)
ocp.CheckpointManager.save = save
"""


def test_disk_full_while_saving_keeps_the_earlier_checkpoints_and_resumes(trained, tmp_path, env):
    workdir = copy_run(trained, tmp_path)
    result = run(env, trained["source"], trained["target"], workdir, steps=10, prelude=DISK_FULL)
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: could not save checkpoint {workdir / 'checkpoints' / '8'}"), last
    assert "No space left on device" in last and "Traceback" not in result.stderr
    assert checkpoint_steps(workdir) == [2, 4, 6]  # intact

    again = run(env, trained["source"], trained["target"], workdir, steps=10)  # space freed: the same command
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed" in again.stderr and "at step 6" in again.stderr
    assert checkpoint_steps(workdir) == [6, 8, 10]
    assert not [p for p in os.listdir(workdir / "checkpoints") if "tmp" in p]  # the partial save was cleaned up
    assert [m["step"] for m in metrics(workdir)] == list(range(1, 11))
