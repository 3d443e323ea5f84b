"""Training runs that a broken disk or a second process must not break (launch/train.py, subprocesses).

One short run (checkpoints at steps 2, 4, 6) is copied for each case:

* the newest checkpoint damaged (a data file cut short, a few bytes of its array data flipped, or its metadata
  cut short): the run resumes from the previous intact one, moves the damaged one to ``unreadable_checkpoints/``
  and logs each step exactly once;
* every checkpoint damaged (metadata cut short, or the only checkpoint's array data flipped): one ``error:`` line
  naming the folder, exit 2, nothing moved;
* a second process on a busy workdir: refused with the holder's pid and host before anything is read or compiled;
  a lock left by a dead process is taken over;
* the disk fills up while a checkpoint is being saved (orbax's save patched to fail, and a real small
  filesystem): one ``error:`` line naming that checkpoint, exit 1, the earlier checkpoints intact, and the same
  command then resumes from the newest of them;
* a user error before training in a new workdir (in process): nothing is left there, not even the folder.
"""

import json
import os
import shutil
import socket
import subprocess

import pytest
import script_server
from test_checkpoint import flip_bytes, largest_array_file
from test_train_cli import REPO, TIMEOUT, checkpoint_steps, env, metrics, train_command, write_pngs  # noqa: F401

from wespe import config as configs
from wespe.errors import UserError
from wespe.training import loop
from wespe.training.lock import LOCK_FILE, WorkdirLock

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
    """launch/train.py, forked from a warm server (tests/script_server.py); ``prelude``: a patch applied first."""
    return script_server.run(train_command(*args(source, target, workdir, steps)), env=env, cwd=REPO,
                             timeout=TIMEOUT, prelude=prelude)


def copy_run(trained, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained["workdir"], workdir)
    return workdir


def damage(step_dir, what):
    if what == "data file":  # the largest array file of the state cut to 100 bytes
        biggest = largest_array_file(step_dir)
        biggest.write_bytes(biggest.read_bytes()[:100])
    elif what == "flipped bytes":  # bit rot: orbax reads it back as other numbers without any error
        flip_bytes(largest_array_file(step_dir))
    else:  # the JSON metadata (config, data iterator state) cut in half
        meta = step_dir / "metadata" / "metadata"
        meta.write_bytes(meta.read_bytes()[: meta.stat().st_size // 2])


@pytest.mark.parametrize("what", ["data file", "flipped bytes", "metadata"])
def test_damaged_newest_checkpoint_resumes_from_the_previous_one(trained, tmp_path, env, what):
    workdir = copy_run(trained, tmp_path)
    damage(workdir / "checkpoints" / "6", what)
    result = run(env, trained["source"], trained["target"], workdir, steps=8)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "cannot be read back" in line]
    assert len(warnings) == 1, result.stderr[-3000:]
    assert "checkpoint step 6" in warnings[0] and "resuming from step 4" in warnings[0], warnings
    if what == "flipped bytes":
        assert "checksum mismatch in state/" in warnings[0], warnings
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


def test_only_checkpoint_with_flipped_bytes_is_one_line_and_moves_nothing(trained, tmp_path, env):
    workdir = copy_run(trained, tmp_path)
    for step in (2, 4):
        shutil.rmtree(workdir / "checkpoints" / str(step))
    damage(workdir / "checkpoints" / "6", "flipped bytes")
    result = run(env, trained["source"], trained["target"], workdir, steps=8)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no checkpoint in {workdir / 'checkpoints'} can be read back (step 6: could not "
                           f"restore checkpoint {workdir / 'checkpoints' / '6'}: checksum mismatch in state/"), last
    assert "move that folder away" in last and "Traceback" not in result.stderr
    assert sorted(os.listdir(workdir / "checkpoints")) == ["6"]
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


def mount_small_tmpfs(folder, size):
    """A tmpfs of ``size`` at ``folder`` (root only), or the reason there cannot be one."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    return None if done.returncode == 0 else f"mount -t tmpfs failed: {done.stderr.strip()}"


# Where no tmpfs can be mounted: the process may write no file larger than 1 MB from the save of step 4 on
# (RLIMIT_FSIZE, SIGXFSZ ignored: writes fail with EFBIG), a real failure inside tensorstore's writes.
FILE_SIZE_LIMIT_FROM_STEP_4 = """
import resource, signal
from wespe.checkpoint import Checkpointer
_save = Checkpointer.save
def save(self, step, *args, **kwargs):
    if step == 4:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return _save(self, step, *args, **kwargs)
Checkpointer.save = save
"""


@pytest.fixture
def disk_full_at_step_4(tmp_path):
    """``(folder, prelude)``: a run with its workdir in ``folder`` (and ``prelude``) finds the disk full while
    saving checkpoint 4 of the tiny run (each checkpoint ~10 MB): a 15 MB tmpfs, else a file size limit."""
    why_not = mount_small_tmpfs(tmp_path / "small", "15m")
    if why_not is None:
        yield tmp_path / "small", None
        subprocess.run(["umount", "-l", str(tmp_path / "small")], check=False)
    else:
        if not hasattr(__import__("resource"), "RLIMIT_FSIZE"):
            pytest.skip(f"no way to fill a disk here: {why_not}, and no RLIMIT_FSIZE")
        yield tmp_path, FILE_SIZE_LIMIT_FROM_STEP_4


def test_real_disk_full_while_saving_is_one_line_naming_the_step(disk_full_at_step_4, tmp_path, env):
    """Checkpoint 4's background save fails inside tensorstore (a full tmpfs); the save of step 6 reports it."""
    folder, prelude = disk_full_at_step_4
    source = write_pngs(tmp_path / "phone", [f"p{i}.png" for i in range(3)], seed=1)
    target = write_pngs(tmp_path / "dslr", [f"d{i}.png" for i in range(3)], seed=2)
    workdir = folder / "run"
    result = run(env, source, target, workdir, steps=6, prelude=prelude)
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [lines[-1]], result.stderr[-3000:]
    assert errors[0].startswith(f"error: could not save checkpoint {workdir / 'checkpoints' / '4'}: "), errors
    assert ("No space left on device" if prelude is None else "File too large") in errors[0], errors
    assert len(errors[0]) < 2000 and "Traceback" not in result.stderr, result.stderr[-3000:]
    said = [line for line in lines if "%|" not in line]  # not the progress bar's updates
    assert len(said) <= 4, result.stderr[-3000:]  # mesh and data INFO lines, the error
    assert checkpoint_steps(workdir) == [2]  # intact

    if prelude is None:  # space freed: the same command resumes
        subprocess.run(["mount", "-o", "remount,size=64m", str(folder)], check=True)
    again = run(env, source, target, workdir, steps=6)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed {workdir} at step 2" in again.stderr
    assert checkpoint_steps(workdir) == [2, 4, 6]
    assert [m["step"] for m in metrics(workdir)] == list(range(1, 7))


def tiny_config(source, target, **changes):
    config = configs.wespe_paper()
    config.vgg_weights, config.content_layer, config.batch_size, config.patch_size = "random", "relu1_2", 2, 16
    config.generator.width, config.generator.num_blocks, config.discriminator.head = 4, 1, "global_pool"
    config.data.source, config.data.target = str(source), str(target)
    for key, value in changes.items():
        configs.set_key(config, key, value)
    return config


USER_ERRORS_BEFORE_TRAINING = {  # config change -> what the error says
    "missing --source": ({"data.source": "nowhere"}, "nowhere does not exist"),
    "config value out of range": ({"batch_size": 0}, "batch_size.*must be >= 1"),
    "mesh larger than the devices": ({"mesh.data": 3}, "needs 3 devices"),
    "photos smaller than the patches": ({"patch_size": 64}, "no usable image for 64x64 patches"),
    "missing VGG weights file": ({"vgg_weights": "missing.mat"}, "missing.mat does not exist"),  # after the scan
}


@pytest.mark.parametrize("case", list(USER_ERRORS_BEFORE_TRAINING))
def test_user_error_before_training_leaves_a_new_workdir_as_it_was(tmp_path, case):
    """No train.lock, no data_report.json, no folder: the corrected command starts on a fresh workdir."""
    changes, message = USER_ERRORS_BEFORE_TRAINING[case]
    source = write_pngs(tmp_path / "phone", ["p.png"], seed=1)
    target = write_pngs(tmp_path / "dslr", ["d.png"], seed=2)
    with pytest.raises(UserError, match=message):
        loop.run_training(tiny_config(source, target, **changes), tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()  # the run made new/ and new/run: both gone again
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=message):
        loop.run_training(tiny_config(source, target, **changes), tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []  # a folder that existed stays


def test_user_error_in_a_workdir_with_a_run_leaves_its_files(tmp_path):
    source = write_pngs(tmp_path / "phone", ["p.png"], seed=1)
    target = write_pngs(tmp_path / "dslr", ["d.png"], seed=2)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text("")
    with WorkdirLock(workdir):
        pass  # an earlier run's lock file: who last trained here
    with pytest.raises(UserError, match="needs 3 devices"):
        loop.run_training(tiny_config(source, target, **{"mesh.data": 3}), workdir)
    assert sorted(os.listdir(workdir)) == sorted([LOCK_FILE, "metrics.jsonl"])
