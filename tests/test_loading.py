"""wespe.inference.loading (a generator from anything) and the export format it reads (wespe.inference.export), in
process.

Training checkpoints as a source are covered with a real run's workdir in tests/test_evaluate_cli.py (here: a
workdir whose newest checkpoint is damaged), official DPED checkpoints with synthetic and official bundles in
tests/test_pretrained.py.
"""

import json
import logging
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from test_checkpoint import flip_bytes, largest_array_file
from test_enhance_cli import random_generator

import wespe
from wespe import config as configs
from wespe import train_step
from wespe.checkpoint import Checkpointer, CheckpointError
from wespe.evaluation import sweep
from wespe.inference import export, loading

X = np.random.default_rng(0).uniform(size=(1, 12, 10, 3)).astype(np.float32)


def test_export_round_trip(tmp_path):
    for norm in ("instance", "batch"):
        g = random_generator(seed=3, norm=norm)
        path = export.save_generator(g, tmp_path / f"{norm}.npz")
        loaded = loading.load_exported_generator(path)
        assert (loaded.width, loaded.num_blocks, loaded.norm) == (8, 1, norm)
        view = (lambda m: nnx.view(m, use_running_average=True)) if norm == "batch" else (lambda m: m)
        np.testing.assert_array_equal(np.asarray(view(loaded)(X)), np.asarray(view(g)(X)))
    # The format is plain NumPy: metadata JSON plus named arrays.
    with np.load(tmp_path / "instance.npz", allow_pickle=False) as npz:
        meta = json.loads(npz[export.METADATA_KEY].tobytes())
        assert meta["config"] == {"width": 8, "num_blocks": 1, "norm": "instance", "channels": 3, "output": "dped",
                                  "global_color": "none"}
        assert npz["conv_in.kernel"].shape == (9, 9, 3, 8) and "blocks.0.norm1.scale" in npz.files
    # A directory stands for <dir>/generator.npz.
    assert export.save_generator(g, tmp_path / "workdir") == tmp_path / "workdir" / "generator.npz"
    assert loading.load_exported_generator(tmp_path / "workdir").norm == "batch"
    # wespe_plus's generator: residual output and the global colour path travel with the file.
    plus = random_generator(seed=4, output="residual", global_color="affine")
    loaded = loading.load_exported_generator(export.save_generator(plus, tmp_path / "plus.npz"))
    assert (loaded.output, loaded.global_color) == ("residual", "affine")
    np.testing.assert_array_equal(np.asarray(loaded(X)), np.asarray(plus(X)))
    # Files written before these keys existed load as the official generator.
    with np.load(tmp_path / "instance.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta["config"] = {"width": 8, "num_blocks": 1, "norm": "instance", "channels": 3}
    arrays[export.METADATA_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "old.npz", **arrays)
    assert loading.load_exported_generator(tmp_path / "old.npz").output == "dped"


def test_export_errors(tmp_path):
    good = export.save_generator(random_generator(), tmp_path / "good.npz")
    with pytest.raises(export.ExportFormatError, match="missing.npz does not exist"):
        loading.load_exported_generator(tmp_path / "missing.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(export.ExportFormatError, match="without an exported generator"):
        loading.load_exported_generator(tmp_path / "empty")
    (tmp_path / "garbage.npz").write_bytes(b"definitely not a zip archive")
    with pytest.raises(export.ExportFormatError, match="garbage.npz.*corrupt"):
        loading.load_exported_generator(tmp_path / "garbage.npz")
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:-3000])
    with pytest.raises(export.ExportFormatError, match="cut.npz"):
        loading.load_exported_generator(tmp_path / "cut.npz")
    np.savez(tmp_path / "plain.npz", w=np.zeros(3))
    with pytest.raises(export.ExportFormatError, match="plain.npz.*__wespe_generator__"):
        loading.load_exported_generator(tmp_path / "plain.npz")

    def rewrite(name, edit):
        with np.load(good, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(arrays[export.METADATA_KEY].tobytes())
        edit(meta, arrays)
        arrays[export.METADATA_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    wider = rewrite("wider.npz", lambda m, a: m["config"].update(width=16))
    with pytest.raises(export.ExportFormatError, match=r"wider.npz: variable .* has shape .* needs"):
        loading.load_exported_generator(wider)
    dropped = rewrite("dropped.npz", lambda m, a: a.pop("conv_out.bias"))
    with pytest.raises(export.ExportFormatError, match="missing conv_out.bias"):
        loading.load_exported_generator(dropped)
    newer = rewrite("newer.npz", lambda m, a: m.update(version=99))
    with pytest.raises(export.ExportFormatError, match="version 99"):
        loading.load_exported_generator(newer)
    assert zipfile.is_zipfile(good)


def test_generator_for_flags_needs_exactly_one(tmp_path):
    with pytest.raises(ValueError, match="exactly one.*not neither"):
        loading.generator_for_flags()
    with pytest.raises(ValueError, match="exactly one.*not both"):
        loading.generator_for_flags(pretrained_name="dped_iphone", checkpoint=tmp_path)
    with pytest.raises(ValueError, match="unknown pretrained"):
        loading.generator_for_flags(pretrained_name="dped_nokia")
    with pytest.raises(ValueError, match="names its generator itself"):
        loading.generator_for_flags(checkpoint=tmp_path, weights_dir=tmp_path)


def test_load_generator_tells_sources_apart(tmp_path):
    """``wespe.load_generator`` on a file, on a folder holding generator.npz, and its errors for what holds none."""
    g = random_generator(seed=5)
    file = export.save_generator(g, tmp_path / "g.npz")
    export.save_generator(g, tmp_path / "run")
    for source in (file, str(file), tmp_path / "run"):
        np.testing.assert_array_equal(np.asarray(wespe.load_generator(source)(X)), np.asarray(g(X)))
    assert loading.generator_for_flags(checkpoint=tmp_path / "run")[1] == str(tmp_path / "run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(wespe.errors.UserError, match="empty: the folder holds neither a finished training checkpoint"):
        wespe.load_generator(tmp_path / "empty")
    with pytest.raises(wespe.errors.UserError, match="nowhere: no such file or folder, and not one of the official"):
        wespe.load_generator(tmp_path / "nowhere")
    with pytest.raises(export.ExportFormatError, match="nowhere.npz does not exist"):
        wespe.load_generator(tmp_path / "nowhere.npz")
    with pytest.raises(wespe.errors.UserError, match="names its generator itself.*without --weights_dir"):
        wespe.load_generator(file, weights_dir=tmp_path)
    with pytest.raises(wespe.errors.UserError, match="iphone_orig.index does not exist"):
        wespe.load_generator("dped_iphone", weights_dir=tmp_path)


@pytest.fixture
def run_with_damaged_newest(tmp_path):
    """A training workdir (tiny config, random weights) with checkpoints 1 and 2, a few bytes of step 2's array
    data flipped (bit rot)."""
    config = configs.wespe_paper()
    config.vgg_weights, config.content_layer, config.batch_size, config.patch_size = "random", "relu1_2", 2, 16
    config.generator.width, config.generator.num_blocks, config.discriminator.head = 4, 1, "global_pool"
    abstract, _ = train_step.abstract_train_state(config)
    rng = np.random.default_rng(0)
    metadata = {"config": json.loads(config.to_json_best_effort())}
    with Checkpointer(tmp_path / "run" / "checkpoints") as ckpt:
        for step in (1, 2):
            ckpt.save(step, jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape).astype(s.dtype)),
                                         abstract), metadata)
    flip_bytes(largest_array_file(tmp_path / "run" / "checkpoints" / "2"))
    return tmp_path / "run"


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_workdir_with_a_damaged_newest_checkpoint_gives_the_previous_one(run_with_damaged_newest, caplog):
    """enhance/evaluate --checkpoint=<workdir> and wespe.load_generator: the newest intact checkpoint, a warning
    naming the damaged one and why; nothing moved (reading a workdir never changes it)."""
    workdir = run_with_damaged_newest
    before = listing(workdir)
    with caplog.at_level(logging.WARNING, logger="wespe.inference.loading"):
        generator, description = loading.generator_for_flags(checkpoint=workdir)
    assert description == f"{workdir} checkpoint step 1"
    warnings = [r.getMessage() for r in caplog.records if r.name == "wespe.inference.loading"]
    assert len(warnings) == 1 and warnings[0].startswith(f"checkpoint step 2 of {workdir} cannot be read back ("
                                                         f"could not restore checkpoint {workdir}/checkpoints/2: "
                                                         "checksum mismatch in state/"), warnings
    assert warnings[0].endswith("using step 1, the newest intact one")
    step1, _ = loading.load_checkpoint_generator(workdir, 1)
    np.testing.assert_array_equal(np.asarray(generator(X)), np.asarray(step1(X)))
    with pytest.raises(CheckpointError, match="checkpoint .*/2: checksum mismatch in state/"):
        loading.load_checkpoint_generator(workdir, 2)  # a step asked for by number: that one or an error
    assert listing(workdir) == before


def test_workdir_with_no_intact_checkpoint_is_one_error(run_with_damaged_newest):
    workdir = run_with_damaged_newest
    flip_bytes(largest_array_file(workdir / "checkpoints" / "1"))
    with pytest.raises(CheckpointError, match=rf"^no checkpoint in {workdir}/checkpoints can be read back \(step 2: "
                                              r".*checksum mismatch .*; step 1: .*checksum mismatch in state/.*\)$"):
        wespe.load_generator(workdir)


def test_sweep_over_checkpoints_gives_a_damaged_one_a_row_with_its_reason(run_with_damaged_newest, tmp_path):
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 20, 3), np.uint8)).save(tmp_path / "photos" /
                                                                                         "a.png")
    cells = sweep.expand_cells({"cells": [{"name": "run", "steps": "all"}]},
                               {"workdir": str(run_with_damaged_newest), "source": str(tmp_path / "photos")})
    rows = sweep.run_sweep(cells, tmp_path / "sweep", progress=False, echo=lambda *_: None)
    assert [(r["step"], r["status"]) for r in rows] == [(1, "ok"), (2, "error")]
    assert "checksum mismatch in state/" in rows[1]["error"], rows[1]["error"]
    assert "checksum mismatch in state/" in (tmp_path / "sweep" / "sweep.csv").read_text()
