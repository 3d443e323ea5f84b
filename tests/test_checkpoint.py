"""Training checkpoints: exact round trips, keep-N, async saves, crashed saves, corrupt files, other shardings."""

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wespe import config as configs
from wespe import train_step
from wespe.checkpoint import CHECKSUMS_FILE, Checkpointer, CheckpointError

# orbax reports failures of reads still in flight after a restore failed through sys.unraisablehook; none may occur.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def state_shapes():
    """The TrainState structure of a tiny WESPE config with batch norm (so batch_stats is not empty).

    ``jax.eval_shape`` of :func:`wespe.train_step.create_train_state` gives exactly its tree, dtypes and shapes in well
    under a second (building it eagerly compiles dozens of small initialisers on CPU).
    """
    c = configs.wespe_paper()
    c.vgg_weights = "random"
    c.batch_size, c.patch_size = 2, 32
    c.generator.width, c.generator.num_blocks, c.generator.norm = 8, 1, "batch"
    c.discriminator.head = "global_pool"
    c.content_layer = "relu2_2"
    return jax.eval_shape(lambda: train_step.create_train_state(c)[0])


def random_state(shapes, seed=0):
    """A TrainState with random contents (non-zero Adam moments and counts), every leaf a distinct array."""
    rng = np.random.default_rng(seed)

    def fill(s):
        if jnp.issubdtype(s.dtype, jnp.floating):
            return jnp.asarray(rng.standard_normal(s.shape).astype(s.dtype))
        return jnp.asarray(rng.integers(-1000, 1000, s.shape).astype(s.dtype))

    return jax.tree.map(fill, shapes)


METADATA = {"config": {"mode": "wespe", "lr": 1e-4, "patch_size": 32}, "data": {"epoch": 1, "index": 17},
            "rng_key_data": [0, 42, 4294967295], "wall_clock": {"elapsed_s": 12.5, "saved_at": "2025-01-01T00:00:00Z"},
            "nested": [None, True, "text"]}


def assert_same_state(expected, actual):
    assert jax.tree.structure(expected) == jax.tree.structure(actual)
    for (path, e), a in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(actual)):
        name = jax.tree_util.keystr(path)
        assert np.asarray(a).dtype == np.asarray(e).dtype, name
        assert np.asarray(a).shape == np.asarray(e).shape, name
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e), err_msg=name)


def test_round_trip_is_bit_exact(tmp_path, state_shapes):
    state = random_state(state_shapes)
    assert jax.tree.leaves(state.batch_stats), "the fixture should have batch-norm statistics"
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        assert ckpt.latest_step() is None and ckpt.all_steps() == []
        with pytest.raises(CheckpointError, match="no finished checkpoint"):
            ckpt.restore(like=state)
        with pytest.raises(CheckpointError, match="no finished checkpoint"):
            ckpt.metadata()
        ckpt.save(7, state, METADATA)
        assert ckpt.latest_step() == 7 and ckpt.all_steps() == [7]
        assert ckpt.metadata() == METADATA and ckpt.metadata(7) == METADATA
        restored, metadata = ckpt.restore(like=state)
    assert isinstance(restored, train_step.TrainState)
    assert_same_state(state, restored)
    assert restored.step.dtype == jnp.int32 and restored.step.shape == ()
    assert metadata == METADATA
    # A fresh Checkpointer (a restarted job) finds it too.
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 7
        restored, metadata = ckpt.restore(7, like=state)
    assert_same_state(state, restored)
    assert metadata == METADATA


def test_restore_onto_shape_dtype_structs(tmp_path, state_shapes):
    state = random_state(state_shapes)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    like = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), state_shapes)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, state, {"a": 1})
        restored, metadata = ckpt.restore(like=like)
    assert_same_state(state, restored)
    assert all(isinstance(x, jax.Array) and x.sharding == device for x in jax.tree.leaves(restored))
    assert metadata == {"a": 1}


def test_keep_last_n(tmp_path, state_shapes):
    state = random_state(state_shapes)
    with Checkpointer(tmp_path, keep=2) as ckpt:
        for step in range(1, 6):
            ckpt.save(step, state.replace(step=jnp.int32(step)), {"step": step})
        ckpt.wait()
        assert ckpt.all_steps() == [4, 5]
    assert sorted(p for p in os.listdir(tmp_path) if p.isdigit() or "tmp" in p) == ["4", "5"]
    with Checkpointer(tmp_path, keep=2) as ckpt:
        assert ckpt.all_steps() == [4, 5]
        restored, metadata = ckpt.restore(like=state)
    assert int(restored.step) == 5 and metadata == {"step": 5}


def test_async_save_then_wait_then_restore(tmp_path, state_shapes):
    state = random_state(state_shapes, seed=1)
    host_copy = jax.tree.map(np.array, state)
    with Checkpointer(tmp_path, async_save=True) as ckpt:
        ckpt.save(10, state, METADATA)
        # save() returns once the arrays are on the host: the caller may donate or delete them right away.
        for leaf in jax.tree.leaves(state):
            leaf.delete()
        ckpt.wait()
        assert ckpt.latest_step() == 10
        assert "10.orbax-checkpoint-tmp" not in os.listdir(tmp_path)
        restored, metadata = ckpt.restore(like=state_shapes)
    assert_same_state(host_copy, restored)
    assert metadata == METADATA


def test_save_still_running_is_not_latest(tmp_path, state_shapes, monkeypatch):
    state = random_state(state_shapes)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state, {})
        ckpt.wait()
        ckpt.save(2, state, {})
        monkeypatch.setattr(ckpt._manager, "is_saving_in_progress", lambda: True)  # as if still writing step 2
        assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
        monkeypatch.undo()
        ckpt.wait()
        assert ckpt.latest_step() == 2


def test_unfinished_save_is_ignored_and_cleaned_up(tmp_path, state_shapes):
    state = random_state(state_shapes)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state, {"step": 1})
        ckpt.save(2, state, {"step": 2})
    # A crash mid-save leaves orbax's temporary directory (this orbax names it "<step>.orbax-checkpoint-tmp";
    # older versions appended "-<timestamp>") holding part of the files, never renamed to "<step>".
    for name in ["3.orbax-checkpoint-tmp", "4.orbax-checkpoint-tmp-1700000000"]:
        partial = tmp_path / name / "state"
        partial.mkdir(parents=True)
        (partial / "_METADATA").write_text("{\"tree_metadata\": {")  # cut off mid-write
    # A reader (e.g. an export job) ignores them and must leave them alone: the writer may still be writing.
    with Checkpointer(tmp_path, read_only=True) as reader:
        assert reader.latest_step() == 2 and reader.all_steps() == [1, 2]
        _, metadata = reader.restore(like=state)
        assert metadata == {"step": 2}
        with pytest.raises(CheckpointError, match="read-only"):
            reader.save(5, state, {})
    assert (tmp_path / "3.orbax-checkpoint-tmp").exists()
    # The restarted training job ignores them too, deletes them, and can save step 3 again.
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 2
        ckpt.save(3, state, {"step": 3})
        ckpt.wait()
        assert ckpt.all_steps() == [1, 2, 3]
        _, metadata = ckpt.restore(like=state)
        assert metadata == {"step": 3}
    assert not [p for p in os.listdir(tmp_path) if "tmp" in p]


@pytest.mark.parametrize("checksums", [True, False], ids=["checksummed", "older_wespe"])
@pytest.mark.parametrize("damage", ["missing_array_files", "corrupt_array_files", "missing_metadata"])
def test_damaged_checkpoint_raises_naming_the_directory(tmp_path, damage, checksums):
    """With checksums the first damaged file is named before orbax reads anything; without (a checkpoint written
    before they existed) orbax's own read error is the reason, cut to one readable line."""
    # A one-array state: with many arrays, orbax 0.12.8 fails on the first bad read while the other reads are
    # still in flight, and those later print "Event loop is closed" tracebacks (harmless, but noisy in tests).
    state = {"w": jnp.arange(24.0).reshape(4, 6)}
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state, METADATA)
    step_dir = tmp_path / "1"
    if not checksums:
        (step_dir / CHECKSUMS_FILE).unlink()
    if damage == "missing_array_files":
        for p in sorted((step_dir / "state").rglob("*")):
            if p.is_file() and p.name not in ("_METADATA", "_sharding", "commit_success.txt"):
                p.unlink()
    elif damage == "corrupt_array_files":
        for p in sorted((step_dir / "state").rglob("*")):
            if p.is_file() and "ocdbt" in str(p.relative_to(step_dir)):
                p.write_bytes(b"\x00garbage" * 3)
    else:
        (step_dir / "metadata" / "metadata").unlink()
    reason = {"missing_array_files": "missing file state/", "corrupt_array_files": "checksum mismatch in state/",
              "missing_metadata": "missing file metadata/metadata"}[damage] if checksums else ""
    with Checkpointer(tmp_path) as ckpt:
        if damage == "missing_metadata":
            with pytest.raises(CheckpointError,
                               match=f"could not read the metadata of checkpoint {step_dir}: {reason}"):
                ckpt.metadata()
        assert ckpt.latest_step() == 1  # the directory looks finished: damage shows only on reading
        with pytest.raises(CheckpointError, match=f"could not restore checkpoint {step_dir}: {reason}") as info:
            ckpt.restore(like=state)
    assert isinstance(info.value, RuntimeError)
    assert (info.value.__cause__ is not None) != checksums  # orbax's error, when it is the one that found it
    assert len(str(info.value)) < 2000  # tensorstore's kilobytes of JSON spec are cut (kept in __cause__)


def flip_bytes(path, count=4):
    """Bit rot: ``count`` bytes in the middle of ``path`` inverted, its size unchanged."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def largest_array_file(step_dir):
    """The biggest OCDBT data file of a checkpoint (``state/ocdbt.process_<i>/d/<hash>``): raw array chunks."""
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)


def test_flipped_bytes_in_array_data_are_named_not_restored(tmp_path):
    """A few bytes flipped inside an array's data read back as other numbers, without any error from orbax;
    the checksums written at save time catch it and name the file."""
    weights = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)  # incompressible: stored raw
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, {"w": jnp.asarray(weights)}, {"a": 1})
    damaged = largest_array_file(tmp_path / "1")
    flip_bytes(damaged)
    name = damaged.relative_to(tmp_path / "1")
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.metadata(1) == {"a": 1}  # only the metadata's own files are checked for it
        with pytest.raises(CheckpointError, match=f"could not restore checkpoint {tmp_path / '1'}: checksum "
                                                  f"mismatch in {name}$"):
            ckpt.restore(like={"w": jnp.zeros_like(weights)})


def test_checksums_cover_every_item_file_and_are_written_before_the_rename(tmp_path, monkeypatch):
    from wespe import checkpoint
    written_in = []
    real = checkpoint._write_checksums
    monkeypatch.setattr(checkpoint, "_write_checksums", lambda folder: (written_in.append(folder.name),
                                                                       real(folder)))
    with Checkpointer(tmp_path) as ckpt:  # asynchronous: written by orbax's background thread
        ckpt.save(3, {"w": jnp.arange(1000.0), "b": jnp.ones(3)}, METADATA)
    assert written_in == ["3.orbax-checkpoint-tmp"]  # so a checkpoint is never final without them
    step_dir = tmp_path / "3"
    sums = json.loads((step_dir / CHECKSUMS_FILE).read_text())["sha256"]
    files = {str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file() and p.parent != step_dir}
    assert set(sums) == files and "metadata/metadata" in files
    assert any(f.startswith("state/ocdbt.process_0/d/") for f in files)


def test_checkpoint_written_before_checksums_restores_with_a_note(tmp_path, caplog):
    state = {"w": jnp.arange(6.0)}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state, {"a": 1})
    (tmp_path / "1" / CHECKSUMS_FILE).unlink()  # as an older wespe wrote it
    with caplog.at_level(logging.INFO, logger="wespe.checkpoint"), Checkpointer(tmp_path) as ckpt:
        assert ckpt.metadata() == {"a": 1}
        restored, _ = ckpt.restore(like=state)
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(6.0))
    notes = [r.getMessage() for r in caplog.records if CHECKSUMS_FILE in r.getMessage()]
    assert notes == [f"checkpoint {tmp_path / '1'} has no {CHECKSUMS_FILE} (written by an older wespe): reading it "
                     "unverified"]  # once per checkpoint


def test_failed_background_save_is_raised_once_naming_its_own_step(tmp_path, monkeypatch):
    """A save that fails in the background (the disk filled up) surfaces at the next save, named as itself
    (not as the step being saved then), once; the earlier checkpoints stay."""
    from wespe import checkpoint
    real = checkpoint._write_checksums

    def disk_full_at_step_2(folder):
        if folder.name.startswith("2."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / CHECKSUMS_FILE))
        real(folder)

    monkeypatch.setattr(checkpoint, "_write_checksums", disk_full_at_step_2)
    state = {"w": jnp.arange(6.0)}
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, state, {})
    ckpt.save(2, state, {})
    with pytest.raises(CheckpointError, match=f"^could not save checkpoint {tmp_path / '2'}: OSError: .*No space "
                                              "left on device"):
        ckpt.save(3, state, {})
    assert ckpt.all_steps() == [1]
    ckpt.wait()  # said once: not again
    ckpt.close()
    assert (tmp_path / "2.orbax-checkpoint-tmp").is_dir()  # never renamed into place
    monkeypatch.undo()  # space freed
    with Checkpointer(tmp_path) as again:  # the next run: removes the partial save, resumes from step 1
        assert again.all_steps() == [1]
        again.save(2, state, {})
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]


def test_state_that_does_not_match_raises_before_reading(tmp_path, state_shapes):
    """Resuming with another network width: a clear list of differences, no reads (and no orbax noise)."""
    state = random_state(state_shapes)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state, {})
        wider = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[:-1] + (2 * s.shape[-1],), s.dtype)
                             if s.ndim else s, state_shapes)
        with pytest.raises(CheckpointError, match=r"does not match `like` .*\n  shape of params/"):
            ckpt.restore(like=wider)
        with pytest.raises(CheckpointError, match=r"missing in the checkpoint: w"):
            ckpt.restore(like={"w": jnp.zeros(3)})


def test_errors_before_writing(tmp_path, state_shapes):
    state = random_state(state_shapes)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        with pytest.raises(TypeError, match="JSON"):
            ckpt.save(1, state, {"bad": object()})
        assert ckpt.all_steps() == [] and not [p for p in os.listdir(tmp_path) if p[0].isdigit()]
        ckpt.save(1, state, {})
        with pytest.raises(CheckpointError, match="already exists"):
            ckpt.save(1, state, {})
        with pytest.raises(CheckpointError, match=r"no finished checkpoint .*available steps: \[1\]"):
            ckpt.restore(2, like=state)
    with pytest.raises(CheckpointError, match="closed"):
        ckpt.latest_step()


RESHARD_SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from wespe.checkpoint import Checkpointer
    mesh = jax.make_mesh((2,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
    like = {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=NamedSharding(mesh, P("x"))),
            "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))}
    with Checkpointer(sys.argv[1], read_only=True) as ckpt:
        restored, metadata = ckpt.restore(like=like)
    assert metadata == {"ok": True}
    assert restored["w"].sharding == like["w"].sharding, restored["w"].sharding
    assert [s.data.shape for s in restored["w"].addressable_shards] == [(4, 4), (4, 4)]
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(32.0).reshape(8, 4))
    assert restored["step"].sharding == like["step"].sharding and int(restored["step"]) == 5
    print("OK", jax.device_count())
""")


def test_restore_onto_a_different_mesh(tmp_path):
    """Saved here on one device, restored in a process with two, the array split over them."""
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(5, {"w": jnp.arange(32.0).reshape(8, 4), "step": jnp.int32(5)}, {"ok": True})
    script = tmp_path / "reshard.py"
    script.write_text(RESHARD_SCRIPT)
    env = dict(os.environ, JAX_PLATFORMS="cpu",  # with the suite's XLA_FLAGS for subprocesses (tests/conftest.py)
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2")
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "ckpt")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK 2" in out.stdout


TWO_PROCESS_SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from wespe import parallel
    port, index, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    parallel.initialize_distributed(f"127.0.0.1:{port}", 2, index, num_cpu_devices=1, cpu_collectives="gloo",
                                    initialization_timeout_s=60, heartbeat_timeout_s=15)
    from wespe.checkpoint import Checkpointer
    full = np.random.default_rng(0).standard_normal((8, 512)).astype(np.float32)
    w = jax.make_array_from_callback(full.shape, NamedSharding(jax.make_mesh((2,), ("x",)), P("x")),
                                     lambda where: full[where])
    with Checkpointer(path) as ckpt:
        ckpt.save(1, {"w": w}, {"ok": True})  # each process writes its half
        restored, _ = ckpt.restore(like={"w": w})  # every process checks every checksum
    np.testing.assert_array_equal(np.asarray(restored["w"].addressable_shards[0].data), full[4 * index:4 * index + 4])
    print("OK", index)
""")


def test_checksums_of_a_two_process_save_cover_both_processes_shards(tmp_path):
    """Two processes (one CPU device each, gloo), each writing the half of an array it holds: process 0 writes
    checksums.json once both have written, so it lists the other process's files too."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i), str(tmp_path / "ckpt")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for i, (p, (out, err)) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0 and f"OK {i}" in out, err[-3000:]
    step_dir = tmp_path / "ckpt" / "1"
    sums = json.loads((step_dir / CHECKSUMS_FILE).read_text())["sha256"]
    assert {name.split("/")[1] for name in sums if name.startswith("state/ocdbt.process_") and "/d/" in name} == {
        "ocdbt.process_0", "ocdbt.process_1"}
    other = max((step_dir / "state" / "ocdbt.process_1" / "d").iterdir(), key=lambda p: p.stat().st_size)
    flip_bytes(other)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        with pytest.raises(CheckpointError, match=f"checksum mismatch in state/ocdbt.process_1/d/{other.name}$"):
            ckpt.restore(like={"w": jax.ShapeDtypeStruct((8, 512), jnp.float32, sharding=device)})


def test_orbax_read_aftermath_filters_drop_only_orbax_failures():
    """After a failed restore, the reads still in flight report themselves as unraisables and as asyncio's
    "Task exception was never retrieved"; the filters drop those and nothing else."""
    import logging
    from types import SimpleNamespace

    from wespe import checkpoint

    def raised_in(filename):
        try:
            exec(compile("raise Exception('read failed')", filename, "exec"))
        except Exception as e:  # noqa: BLE001
            return e

    orbax_error, other_error = raised_in("/site-packages/orbax/checkpoint/serialization.py"), raised_in("/mine.py")

    def record(e):
        return logging.LogRecord("asyncio", logging.ERROR, "", 0, "Task exception was never retrieved", None,
                                 (type(e), e, e.__traceback__))

    task_filter = checkpoint._OrbaxTaskAftermath()
    assert not task_filter.filter(record(orbax_error)) and task_filter.filter(record(other_error))
    assert not task_filter.filter(record(RuntimeError("Event loop is closed")))
    closed = SimpleNamespace(exc_value=RuntimeError("Event loop is closed"), object=None)
    coroutine = SimpleNamespace(exc_value=orbax_error, object=SimpleNamespace(
        cr_code=compile("pass", "/site-packages/orbax/checkpoint/serialization.py", "exec")))
    mine = SimpleNamespace(exc_value=other_error, object=None)
    assert checkpoint._is_orbax_aftermath(closed) and checkpoint._is_orbax_aftermath(coroutine)
    assert not checkpoint._is_orbax_aftermath(mine)
    # orbax's own ERROR logs with the traceback of a failure that a CheckpointError reports anyway
    failure_logs = checkpoint._OrbaxFailureLogs()

    def absl_record(pathname, level, error):
        return logging.LogRecord("absl", level, pathname, 1, "Save Finalize thread failed.", None,
                                 (type(error), error, error.__traceback__) if error else None)

    orbax_file = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
    assert not failure_logs.filter(absl_record(orbax_file, logging.ERROR, orbax_error))
    assert failure_logs.filter(absl_record(orbax_file, logging.WARNING, None))  # e.g. "directory is read only"
    assert failure_logs.filter(absl_record("/mine.py", logging.ERROR, other_error))
