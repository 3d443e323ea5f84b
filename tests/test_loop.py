"""wespe.training.loop.run_training in-process: bit-exact resume, config changes on resume, NaN stops, early input
errors.

Every run uses a tiny unpaired config (four width-4 one-block networks, 16x16 patches, batch 2, random VGG up to
relu1_2, the rng-driven ``dped_softmax`` adversarial form, 6 random 40x40 PNGs per side). Each ``run_training``
builds a new jitted step, which would recompile the same program (~10 s on a busy 2-core CPU); here the jitted
step of a config is made once per session and reused by later runs (``_reuse_compiled_steps``), as a
persistent compilation cache would. jit still compiles per input signature: a run resumed from a checkpoint
(committed arrays) gets its own executable, as a resumed process does.
"""

import json
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from wespe import config as configs
from wespe import train_step
from wespe.checkpoint import Checkpointer
from wespe.training import color_pool, data, heldout, loop, metrics_log, scan
from wespe.training import folders as folder_flags
from wespe.vgg import VGGWeightsError

LOSS_KEYS = {"loss/content", "loss/color", "loss/texture", "loss/tv", "loss/generator",
             "loss/color_discriminator", "loss/texture_discriminator"}


# ------------------------------------------------------------------------------------------------- helpers

def write_pngs(folder, n=6, size=40, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    return write_pngs(root / "phone", seed=1), write_pngs(root / "dslr", seed=2)


def tiny_config(folders, **overrides):
    c = configs.wespe_paper()
    c.vgg_weights = "random"
    c.content_layer = "relu1_2"
    c.batch_size, c.patch_size = 2, 16
    c.generator.width, c.generator.num_blocks = 4, 1
    c.discriminator.head = "global_pool"
    c.adversarial_form = "dped_softmax"  # the one form whose step uses its rng (real/fake swaps): resume must match it
    c.num_steps, c.log_every, c.sample_every, c.checkpoint_every = 6, 1, 1000, 3
    c.num_sample_crops = 2
    c.data.source, c.data.target = str(folders[0]), str(folders[1])
    for key, value in overrides.items():
        configs.set_key(c, key, value)
    return c


_COMPILED = {}  # step-relevant config -> jitted step, shared by the tests of this module


def _step_key(config, preprocessing):
    d = json.loads(config.to_json_best_effort())
    for k in configs.RESUME_SAFE_KEYS + ("data",):
        d.pop(k, None)
    return json.dumps(d, sort_keys=True), preprocessing


@pytest.fixture(autouse=True)
def _reuse_compiled_steps(monkeypatch):
    real = train_step.make_train_step

    def make_train_step(config, graphdefs, vgg_weights, preprocessing, layout=None, color_pools=None, *,
                        degradation=None):
        key = _step_key(config, preprocessing), layout, degradation
        if key not in _COMPILED:
            real_step = real(config, graphdefs, vgg_weights, preprocessing, layout, color_pools,
                             degradation=degradation)
            _COMPILED[key] = real_step.jitted, real_step.vgg_weights
        jitted, placed_vgg = _COMPILED[key]
        pools = None if color_pools is None else {k: jnp.asarray(v) for k, v in color_pools.items()}
        return lambda state, batch, rng: jitted(state, placed_vgg, batch, rng, pools)

    monkeypatch.setattr(train_step, "make_train_step", make_train_step)


def restore(workdir, config, step=None):
    with Checkpointer(workdir / "checkpoints", read_only=True) as ckpt:
        like = train_step.create_train_state(config)[0]
        return ckpt.restore(step, like=like)


def checkpoint_steps(workdir):
    with Checkpointer(workdir / "checkpoints", read_only=True) as ckpt:
        return ckpt.all_steps()


def metrics_lines(workdir):
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("time")
    return lines


def assert_trees_bit_identical(a, b):
    flat_a, tree_a = jax.tree.flatten_with_path(a)
    flat_b, tree_b = jax.tree.flatten_with_path(b)
    assert tree_a == tree_b
    for (path, x), (_, y) in zip(flat_a, flat_b):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
        assert np.array_equal(x, y), f"{jax.tree_util.keystr(path)} differs"


# ------------------------------------------------------------------------------------------ bit-exact resume

def test_rewind_metrics_drops_what_an_interrupted_run_logged_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": s / 10}) for s in (10, 20, 30, 40)]
    path.write_text("\n".join(lines) + "\n" + '{"step": 5')  # a line torn by a kill
    assert metrics_log.rewind_metrics(path, 20) == 3
    assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"
    assert metrics_log.rewind_metrics(path, 20) == 0  # nothing more to drop: the file is left as it is
    assert metrics_log.rewind_metrics(path, 0) == 2 and path.read_text() == ""  # restarting from scratch
    assert metrics_log.rewind_metrics(tmp_path / "absent.jsonl", 3) == 0 and not (tmp_path / "absent.jsonl").exists()


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(folders, tmp_path):
    config = tiny_config(folders, num_steps=6, checkpoint_every=3)
    a = loop.run_training(config, tmp_path / "a")
    assert (a.status, a.step) == ("finished", 6)

    b1 = loop.run_training(tiny_config(folders, num_steps=3, checkpoint_every=3), tmp_path / "b")
    assert (b1.status, b1.step) == ("finished", 3)
    assert checkpoint_steps(tmp_path / "b") == [3]
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:  # as if killed at step 5, after its checkpoint at 3
        f.write('{"step": 4, "loss/generator": 1.0}\n{"step": 5, "loss/generator": 1.0}\n{"step": 6, "loss')
    b2 = loop.run_training(tiny_config(folders, num_steps=6, checkpoint_every=3), tmp_path / "b")  # resume-safe
    assert (b2.status, b2.step) == ("finished", 6)

    assert checkpoint_steps(tmp_path / "a") == checkpoint_steps(tmp_path / "b") == [3, 6]
    for step in (3, 6):
        state_a, meta_a = restore(tmp_path / "a", config, step)
        state_b, meta_b = restore(tmp_path / "b", config, step)
        assert int(state_a.step) == step
        assert set(state_a.params) == {"generator", "inverse_generator", "color_discriminator",
                                       "texture_discriminator"}
        assert len(jax.tree.leaves(state_a)) > 50
        for part in ("step", "params", "batch_stats", "opt_state"):
            assert_trees_bit_identical(getattr(state_a, part), getattr(state_b, part))
        assert meta_a["data_state"] == meta_b["data_state"]  # the data stream is at the same place too

    lines_a, lines_b = metrics_lines(tmp_path / "a"), metrics_lines(tmp_path / "b")
    assert [m["step"] for m in lines_a] == [m["step"] for m in lines_b] == [1, 2, 3, 4, 5, 6]
    assert lines_a == lines_b  # every loss, accuracy and gradient norm of every step, exactly
    assert all(LOSS_KEYS <= set(m) for m in lines_a)
    assert a.metrics == b2.metrics
    with np.load(tmp_path / "a" / "generator.npz") as ga, np.load(tmp_path / "b" / "generator.npz") as gb:
        assert sorted(ga.files) == sorted(gb.files)
        assert all(np.array_equal(ga[k], gb[k]) for k in ga.files)


# -------------------------------------------------------------------------------- resuming, config changed

def test_resume_accepts_a_config_saved_before_newer_keys_and_a_new_mesh(folders, tmp_path, monkeypatch):
    """Keys added to the config since a checkpoint was written take their defaults (no spurious config change);
    the mesh may change between resumes."""
    workdir = tmp_path / "run"
    loop.run_training(tiny_config(folders, num_steps=2), workdir)
    real = Checkpointer.metadata

    def metadata_of_an_older_version(self, step=None):
        meta = real(self, step)
        del meta["config"]["compute_dtype"], meta["config"]["mesh"]
        return meta

    monkeypatch.setattr(Checkpointer, "metadata", metadata_of_an_older_version)
    result = loop.run_training(tiny_config(folders, num_steps=3, **{"mesh.data": 1}), workdir)
    assert (result.status, result.step) == ("finished", 3)
    with pytest.raises(loop.ConfigChangedError, match="compute_dtype: 'float32' -> 'bfloat16'"):
        loop.run_training(tiny_config(folders, num_steps=4, compute_dtype="bfloat16"), workdir)


def test_resume_with_a_changed_config(folders, tmp_path, monkeypatch, caplog):
    workdir = tmp_path / "run"
    loop.run_training(tiny_config(folders, num_steps=2), workdir)
    assert checkpoint_steps(workdir) == [2]

    def no_state(*args):
        raise AssertionError("the networks were built before the saved config was checked")

    with monkeypatch.context() as m:
        m.setattr(train_step, "create_train_state", no_state)
        for overrides, names in [({"generator.width": 8}, ["generator.width: 4 -> 8"]),
                                 ({"weights.tv": 1e6}, ["weights.tv: 10.0 -> 1000000.0"]),
                                 ({"weights.tv": 1e6, "batch_size": 4, "num_steps": 9},
                                  ["weights.tv", "batch_size: 2 -> 4"])]:
            with pytest.raises(loop.ConfigChangedError) as e:
                loop.run_training(tiny_config(folders, **overrides), workdir)
            for name in names:
                assert name in str(e.value)
            assert "num_steps" not in str(e.value)  # resume-safe keys are not reported
            assert "allow_config_change" in str(e.value)
    assert checkpoint_steps(workdir) == [2]
    assert json.loads((workdir / "config.json").read_text())["weights"]["tv"] == 10.0

    # Same shapes, allowed: it resumes from step 2 and trains on with the new weight.
    caplog.set_level(logging.INFO, logger="wespe")
    changed = tiny_config(folders, num_steps=3, allow_config_change=True, **{"weights.tv": 1e6})
    result = loop.run_training(changed, workdir)
    assert (result.status, result.step) == ("finished", 3)
    assert any("resumed" in r.getMessage() and "step 2" in r.getMessage() for r in caplog.records)
    assert checkpoint_steps(workdir) == [2, 3]
    assert json.loads((workdir / "config.json").read_text())["weights"]["tv"] == 1e6
    lines = metrics_lines(workdir)
    assert [m["step"] for m in lines] == [1, 2, 3]

    def weighted(m, weights):
        return sum(w * m[f"loss/{k}"] for k, w in weights.items() if f"loss/{k}" in m)

    new_total, old_total = weighted(lines[-1], changed.weights), weighted(lines[-1], tiny_config(folders).weights)
    assert lines[-1]["loss/generator"] == pytest.approx(new_total, rel=1e-5)  # step 3 used the new TV weight
    assert new_total != pytest.approx(old_total, rel=1e-5)


# ---------------------------------------------------------------------------------------------- NaN stops

def _poison(monkeypatch, at_step, how):
    """Wraps the step: on step ``at_step`` either the batch is NaN (inside the compiled step: every loss and the
    state become NaN) or only the reported TV loss is."""
    real = train_step.make_train_step

    def make_train_step(*args, **kwargs):
        step_fn = real(*args, **kwargs)

        def step(state, batch, rng):
            n = int(state.step) + 1
            if how == "batch" and n == at_step:
                batch = {**batch, "source": jnp.full_like(batch["source"], jnp.nan)}
            state, metrics = step_fn(state, batch, rng)
            if how == "tv" and n == at_step:
                metrics = {**metrics, "loss/tv": jnp.float32(jnp.inf)}
            return state, metrics

        return step

    monkeypatch.setattr(train_step, "make_train_step", make_train_step)


@pytest.mark.parametrize("how", ["batch", "tv"])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(folders, tmp_path, monkeypatch, how):
    config = tiny_config(folders, num_steps=6, checkpoint_every=2)
    _poison(monkeypatch, 3, how)
    with pytest.raises(loop.TrainingDiverged) as e:
        loop.run_training(config, tmp_path)
    message = str(e.value)
    assert "step 3" in message and "last good checkpoint" in message
    assert "loss/tv" in message
    if how == "tv":
        assert "inf" in message and "loss/content" not in message  # only the bad term is named
    else:
        assert "loss/content" in message and "loss/generator" in message
    assert checkpoint_steps(tmp_path) == [2]  # nothing saved from the bad step
    state, _ = restore(tmp_path, config)
    assert int(state.step) == 2
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
    assert [m["step"] for m in metrics_lines(tmp_path)] == [1, 2]  # the NaN step is not logged
    assert not (tmp_path / "generator.npz").exists()


# ------------------------------------------------------------------------- user errors before any compile

@pytest.fixture
def nothing_compiles(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("got as far as building/compiling the networks")

    monkeypatch.setattr(train_step, "create_train_state", fail)
    monkeypatch.setattr(train_step, "make_train_step", fail)


def test_bad_inputs_fail_before_anything_compiles(folders, tmp_path, nothing_compiles):
    source, target = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.jpg").write_bytes(b"not a jpeg at all")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bad / "tiny.png")
    missing = tmp_path / "missing"
    cases = [
        ({"data.source": str(missing)}, scan.DataError, ["--source", str(missing), "does not exist"]),
        ({"data.target": str(missing)}, scan.DataError, ["--target", str(missing), "does not exist"]),
        ({"data.source": str(empty)}, scan.DataError, ["--source", str(empty), "no image files"]),
        ({"data.target": str(source)}, scan.DataError, ["--source", "--target", "same folder"]),
        ({"data.target": str(bad)}, scan.DataError, ["--target", str(bad), "no usable image", "too small"]),
        ({"data.source": None}, scan.DataError, ["--source", "--target"]),
        ({"data.heldout": str(missing)}, scan.DataError,
         ["--config.data.heldout", str(missing), "does not exist"]),
        ({"data.dped_root": str(tmp_path)}, scan.DataError, ["--source", "--config.data.dped_root", "not both"]),
        ({"vgg_weights": None}, VGGWeightsError, ["--config.vgg_weights"]),
        ({"vgg_weights": str(missing / "vgg19.mat")}, VGGWeightsError, [str(missing / "vgg19.mat"), "does not exist",
                                                                      "--config.vgg_weights"]),
        ({"generator.norm": "group"}, ValueError, ["generator.norm", "group"]),
        ({"batch_size": 0}, ValueError, ["batch_size"]),
    ]
    for i, (overrides, error, needles) in enumerate(cases):
        start = time.perf_counter()
        with pytest.raises(error) as e:
            loop.run_training(tiny_config(folders, **overrides), tmp_path / f"run{i}")
        assert time.perf_counter() - start < 15, overrides
        for needle in needles:
            assert needle in str(e.value), (overrides, needle, str(e.value))
    assert not (tmp_path / "run0" / "checkpoints").exists()



def test_resume_warns_when_the_data_folders_changed(tmp_path, caplog):
    """The data stream resumes by position: a changed file list is said, not silently accepted."""
    import shutil
    source = write_pngs(tmp_path / "phone", seed=3)
    target = write_pngs(tmp_path / "dslr", seed=4)
    config = tiny_config((source, target), num_steps=2, checkpoint_every=2)
    loop.run_training(config, tmp_path / "run")
    shutil.copy(source / "00.png", source / "extra.png")
    caplog.set_level(logging.WARNING, logger="wespe")
    loop.run_training(tiny_config((source, target), num_steps=3, checkpoint_every=2), tmp_path / "run")
    assert any("data folders changed" in r.getMessage() for r in caplog.records)


def test_sample_grids_come_from_the_heldout_folder(folders, tmp_path):
    """data.heldout: the grid's input column holds crops of those photos (kept out of training), not the source's."""
    heldout = tmp_path / "heldout"
    heldout.mkdir()
    Image.fromarray(np.full((24, 24, 3), (40, 150, 230), np.uint8)).save(heldout / "only.png")
    workdir = tmp_path / "run"
    loop.run_training(tiny_config(folders, num_steps=1, **{"data.heldout": str(heldout)}), workdir)
    grid = np.asarray(Image.open(workdir / "samples" / "step_1.png").convert("RGB"))
    for row in range(2):  # num_sample_crops=2 rows of 16 px patches, 2 px gaps; column 0 is the input
        crop = grid[row * 18:row * 18 + 16, 0:16].reshape(-1, 3)
        assert (crop == (40, 150, 230)).all(), row  # the held-out photo, not the noise photos of --source


# ------------------------------------------------------------------------------- one check, one listing

def test_the_folder_flags_are_checked_once_and_a_missing_source_stops_before_the_workdir(tmp_path, monkeypatch):
    checks = []
    real_check = folder_flags.check_folders
    monkeypatch.setattr(folder_flags, "check_folders", lambda c: (checks.append(c), real_check(c))[1])

    def no_scan(*args, **kwargs):
        raise AssertionError("scanned the folders after a folder flag failed its check")

    with monkeypatch.context() as patched:
        patched.setattr(scan, "scan_training_folders", no_scan)
        config = tiny_config((tmp_path / "missing", tmp_path))
        with pytest.raises(scan.DataError) as e:
            loop.run_training(config, tmp_path / "new" / "run")
    assert str(e.value) == f"--source={tmp_path / 'missing'} does not exist"
    assert len(checks) == 1 and not (tmp_path / "new").exists()
    # Resolving the folders checks nothing again: check_folders did, once.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.setattr(scan, "check_folder", lambda *a: pytest.fail("a folder flag was checked twice"))
    assert folder_flags.resolve_folders(tiny_config((tmp_path / "a", tmp_path / "b")), tmp_path / "w") == (
        str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "a"), None)


def test_after_the_scan_only_its_usable_files_are_read(tmp_path, monkeypatch):
    """A file the data scan skips is never read again: the colour pools, the sample and held-out crops and the
    batches all draw from the scan's list of usable files (the held-out folder defaults to the source one)."""
    source = write_pngs(tmp_path / "phone", seed=1)
    target = write_pngs(tmp_path / "dslr", seed=2)
    (source / "broken.png").write_bytes(b"not a png at all")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(target / "tiny.png")  # under the patch size: skipped
    skipped = {source / "broken.png", target / "tiny.png"}
    read = []
    for module in (color_pool, heldout, data):
        def spy(path, *args, _real=module.read_image, **kwargs):
            read.append(Path(path))
            return _real(path, *args, **kwargs)
        monkeypatch.setattr(module, "read_image", spy)
    config = tiny_config((source, target), num_steps=1, **{"generator.output": "residual",
                                                            "generator.global_color": "affine",
                                                            "color_init": "moments"})
    loop.run_training(config, tmp_path / "run")
    report = json.loads((tmp_path / "run" / scan.REPORT_FILE).read_text())
    assert {Path(b["path"]) for side in ("source", "target") for b in report[side]["bad"]} == skipped
    assert {p.parent for p in read} == {source, target}  # the pools, crops and batches did read photos
    assert not skipped & set(read)
