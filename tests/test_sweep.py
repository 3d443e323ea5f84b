"""Sweeps (wespe/evaluation/sweep.py) in-process: sweep files, cell expansion, the evaluation loop and its resume, the
tables and the plots.

Tiny data: three random 48x64 photos, their references the same photos brightened by 20 levels; two exported
width-8 one-block generators: the identity (residual output, zero-initialised last conv, so its scores are the
inputs', computed here in float64 NumPy) and the official output at its init (a near-grey image: far worse).
"""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from wespe.errors import PathNotFoundError, UserError
from wespe.evaluation import sweep
from wespe.inference.export import save_generator
from wespe.models import Generator

REPO = Path(__file__).resolve().parents[1]
NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """``{"source", "reference", "identity", "official", "mse"}``: the folders, the exports, and the float64 MSE
    of each source photo against its reference."""
    root = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    (root / "source").mkdir(), (root / "reference").mkdir()
    mse = {}
    for name in NAMES:
        source = rng.integers(0, 200, (48, 64, 3), np.uint8)
        reference = (source.astype(np.int16) + 20 + rng.integers(-5, 6, source.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(source).save(root / "source" / f"{name}.png")
        Image.fromarray(reference).save(root / "reference" / f"{name}.png")
        mse[name] = float(np.mean((source / 255.0 - reference / 255.0) ** 2))
    identity = save_generator(Generator(width=8, num_blocks=1, output="residual", rngs=nnx.Rngs(0)),
                              root / "identity.npz")
    official = save_generator(Generator(width=8, num_blocks=1, rngs=nnx.Rngs(0)), root / "official.npz")
    return {"source": str(root / "source"), "reference": str(root / "reference"), "identity": str(identity),
            "official": str(official), "mse": mse}


def _sweep_file(folder: Path, body: str) -> Path:
    path = folder / "my_sweep.py"
    path.write_text(f"def get_sweep():\n    return {body}\n")
    return path


def _row(**values) -> dict:
    row = dict.fromkeys(sweep.SWEEP_FIELDS)
    row.update(values)
    return row


# ---------------------------------------------------------------------------------------------- sweep files

def test_load_sweep_takes_a_list_or_a_dict_of_settings(tmp_path):
    cells = [{"name": "a", "checkpoint": "a.npz"}]
    assert sweep.load_sweep(_sweep_file(tmp_path, repr(cells))) == {"cells": cells}
    assert sweep.load_sweep(_sweep_file(tmp_path, repr(tuple(cells)))) == {"cells": cells}
    settings = {"source": "photos", "tile": 64, "cells": cells}
    assert sweep.load_sweep(_sweep_file(tmp_path, repr(settings))) == settings


def test_load_sweep_errors(tmp_path):
    with pytest.raises(PathNotFoundError, match="no such sweep file"):
        sweep.load_sweep(tmp_path / "nope.py")
    (tmp_path / "cells.txt").write_text("def get_sweep(): return []\n")
    with pytest.raises(UserError, match="not a Python file"):
        sweep.load_sweep(tmp_path / "cells.txt")
    (tmp_path / "no_function.py").write_text("CELLS = [{'name': 'a'}]\n")
    with pytest.raises(UserError, match="has no get_sweep"):
        sweep.load_sweep(tmp_path / "no_function.py")
    for empty in ("[]", "{'source': 'photos'}", "{'cells': []}"):
        with pytest.raises(UserError, match="returned no cells"):
            sweep.load_sweep(_sweep_file(tmp_path, empty))


def test_the_repository_sweeps(tmp_path):
    pretrained = sweep.load_sweep(REPO / "experiments" / "sweeps" / "dped_pretrained.py")
    cells = sweep.expand_cells(pretrained, {"weights_dir": "w", "source": None, "reference": None})
    assert [c["name"] for c in cells] == ["dped_iphone", "dped_blackberry", "dped_sony"]
    assert {(c["kind"], c["weights_dir"], c["source"]) for c in cells} == {
        ("pretrained", "w", "dped/iphone/test_data/full_size_test_images")}  # the flag wins; None keeps the file's
    assert [c["model"] for c in cells] == [c["name"] for c in cells]
    run = sweep.load_sweep(REPO / "experiments" / "sweeps" / "run_checkpoints.py")
    with pytest.raises(UserError, match="give pretrained, checkpoint or workdir"):  # its workdir is --workdir's
        sweep.expand_cells(run)
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match=r"sweep cell run: .*run has no checkpoints"):
        sweep.expand_cells(run, {"workdir": str(tmp_path / "run")})


# ------------------------------------------------------------------------------------------------ expansion

def test_expand_cells_merges_settings_file_then_cell_then_flags():
    spec = {"source": "photos", "tile": 64, "cells": [
        {"name": "a", "checkpoint": "a.npz", "tile": 32},
        {"name": "b", "pretrained": "dped_iphone", "weights_dir": "w", "source": None},
        {"name": "run", "workdir": "runs/x", "steps": [10, 20]},
    ]}
    a, b, step10, step20 = sweep.expand_cells(spec)
    assert (a["kind"], a["model"], a["tile"], a["source"], a["run"], a["step"]) == (
        "checkpoint", "a.npz", 32, "photos", None, None)  # the cell beats the file
    assert (b["kind"], b["model"], b["weights_dir"], b["source"]) == ("pretrained", "dped_iphone", "w", "photos")
    assert [(c["name"], c["kind"], c["model"], c["run"], c["step"]) for c in (step10, step20)] == [
        ("run_step10", "step", "runs/x", "run", 10), ("run_step20", "step", "runs/x", "run", 20)]
    assert spec["cells"][0]["tile"] == 32  # the file's cells are not changed
    flagged = sweep.expand_cells(spec, {"tile": 16, "source": None, "reference": "clean"})
    assert [(c["tile"], c["source"], c["reference"]) for c in flagged] == [(16, "photos", "clean")] * 4


def test_a_cell_without_a_model_takes_the_shared_workdir():
    cells = sweep.expand_cells({"cells": [{"name": "r", "steps": [5, 7]}]}, {"workdir": "runs/y"})
    assert [(c["name"], c["kind"], c["model"], c["step"]) for c in cells] == [
        ("r_step5", "step", "runs/y", 5), ("r_step7", "step", "runs/y", 7)]


def test_expand_cells_errors():
    with pytest.raises(UserError, match="sweep cell without a name"):
        sweep.expand_cells({"cells": [{"checkpoint": "a.npz"}]})
    with pytest.raises(UserError, match="sweep cell x: give pretrained, checkpoint or workdir"):
        sweep.expand_cells({"cells": [{"name": "x"}]})
    # Names that map to the same output folder ("a b" and "a_b" both write a_b/) are not unique either.
    for names in (["a", "a"], ["a b", "a_b"]):
        with pytest.raises(UserError, match="sweep cell names are not unique"):
            sweep.expand_cells({"cells": [{"name": n, "checkpoint": f"{i}.npz"} for i, n in enumerate(names)]})
    with pytest.raises(UserError, match="not unique"):  # an expanded step against a cell of the same name
        sweep.expand_cells({"cells": [{"name": "r", "workdir": "w", "steps": [1]},
                                      {"name": "r_step1", "checkpoint": "c.npz"}]})


# ---------------------------------------------------------------------------------------------- the sweep loop

def test_run_sweep_scores_every_cell_keeps_going_and_resumes(photos, tmp_path):
    cells = sweep.expand_cells({"source": photos["source"], "reference": photos["reference"], "cells": [
        {"name": "identity", "checkpoint": photos["identity"]},
        {"name": "official/init", "checkpoint": photos["official"]},
        {"name": "corrupt", "checkpoint": str(tmp_path / "corrupt.npz")},
    ]})
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip archive")  # there (the checks pass), but fails to load
    out = tmp_path / "out"
    said = []
    identity, official, corrupt = sweep.run_sweep(cells, out, progress=False, echo=said.append)

    mse = photos["mse"]
    assert identity["status"] == "ok" and identity["error"] is None
    assert (identity["num_evaluated"], identity["num_skipped"]) == (3, 0)
    assert identity["mse_pooled"] == pytest.approx(np.mean(list(mse.values())), rel=1e-12)
    assert identity["psnr_pooled"] == pytest.approx(10 * math.log10(1 / np.mean(list(mse.values()))), rel=1e-12)
    expected_mean = np.mean([10 * math.log10(1 / m) for m in mse.values()])
    assert identity["psnr_mean"] == pytest.approx(expected_mean, abs=1e-3)  # per image in float32
    assert identity["entropy_mean"] == pytest.approx(identity["input_entropy_mean"], abs=1e-6)  # G(x) = x
    assert official["status"] == "ok" and official["psnr_pooled"] < identity["psnr_pooled"] - 3
    assert corrupt["status"] == "error" and "corrupt.npz" in corrupt["error"]
    assert any(m.startswith("cell corrupt failed: ") for m in said)

    assert (out / "identity" / "results.json").is_file()
    assert (out / "official_init" / "results.json").is_file()  # the cell's name made a folder name
    assert not (out / "corrupt" / "results.json").exists()
    with open(out / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["cell"], r["status"]) for r in table] == [("identity", "ok"), ("official/init", "ok"),
                                                         ("corrupt", "error")]
    assert float(table[0]["psnr_pooled"]) == pytest.approx(identity["psnr_pooled"])
    assert (out / "models.png").is_file() and not (out / "metric_vs_step.png").exists()  # no checkpoint steps

    # A finished cell is read back, not recomputed: an edited results.json shows through.
    saved = json.loads((out / "identity" / "results.json").read_text())
    saved["aggregates"]["psnr_pooled"] = 123.0
    (out / "identity" / "results.json").write_text(json.dumps(saved))
    said.clear()
    again = sweep.run_sweep(cells, out, progress=False, echo=said.append)
    assert again[0]["psnr_pooled"] == 123.0 and again[1] == official
    assert said[0] == f"skipped identity: {out / 'identity' / 'results.json'} exists"
    assert again[2]["status"] == "error"  # a failed cell is tried again


def test_run_sweep_checks_every_cell_before_any_model_loads(photos, tmp_path, monkeypatch):
    """A missing --source used to load every model, fail every cell and exit 1; now each mistake below is one
    UserError naming the cell and the setting (launch/sweep.py: one error line, exit 2), with nothing loaded or
    written."""
    def no_model(cell):
        raise AssertionError(f"a model was loaded for {cell['name']}")
    monkeypatch.setattr(sweep, "_cell_generator", no_model)
    (tmp_path / "bare_workdir").mkdir()
    good = {"name": "c", "checkpoint": photos["identity"]}
    out = tmp_path / "out"
    cases = [
        ({"source": None}, good, r"sweep cell c: no source photos: give --source"),
        ({"source": str(tmp_path / "nope")}, good, r"sweep cell c: source=.*nope does not exist"),
        ({"reference": str(tmp_path / "nope")}, good, r"sweep cell c: reference=.*nope does not exist"),
        ({}, {"name": "p", "pretrained": "dped_iphone", "weights_dir": str(tmp_path / "no_weights")},
         r"sweep cell p: weights_dir .*no_weights does not exist"),
        ({}, {"name": "p", "pretrained": "dped_iphone"}, r"sweep cell p: .*no weights_dir was given"),
        ({}, {"name": "k", "checkpoint": str(tmp_path / "nope.npz")}, r"sweep cell k: checkpoint=.*nope.npz: no such"),
        ({}, {"name": "r", "workdir": str(tmp_path / "no_run"), "steps": [5]},
         r"sweep cell r_step5: workdir=.*no_run does not exist"),
        ({}, {"name": "r", "workdir": str(tmp_path / "bare_workdir"), "steps": [5]},
         r"sweep cell r_step5: workdir=.*bare_workdir has no checkpoint at step 5 \(it has none\)"),
        ({"limit": 0}, good, r"sweep cell c: limit=0: expected a whole number >= 1"),
        ({"tile": "64"}, good, r"sweep cell c: tile='64': expected a whole number >= 1"),
    ]
    for settings, cell, message in cases:
        spec = {"source": photos["source"], "reference": photos["reference"], **settings,
                "cells": [good] if cell is good else [good, cell]}  # a bad model after a good cell
        cells = sweep.expand_cells(spec)
        with pytest.raises(UserError, match=message):
            sweep.run_sweep(cells, out, progress=False)
    assert not out.exists()


def test_run_sweep_output_folder_inside_the_photos(photos, tmp_path):
    """A cell added to a sweep whose output folder lies inside --source: the earlier cells' best_worst.png are not
    scored as photos (before: one more row, skipped for having no reference); the output folder may not be the
    source folder itself."""
    source = Path(shutil.copytree(photos["source"], tmp_path / "source"))
    out = source / "sweep"
    identity = {"name": "identity", "checkpoint": photos["identity"]}
    official = {"name": "official", "checkpoint": photos["official"]}
    for cells in ([identity], [identity, official]):
        rows = sweep.run_sweep(sweep.expand_cells({"source": str(source), "reference": photos["reference"],
                                                   "cells": cells}), out, progress=False)
    assert (out / "identity" / "best_worst.png").is_file()
    assert [(r["cell"], r["num_evaluated"], r["num_skipped"]) for r in rows] == [("identity", 3, 0),
                                                                                  ("official", 3, 0)]
    with pytest.raises(UserError, match="--output_dir=.* is the source folder"):
        sweep.run_sweep(sweep.expand_cells({"source": str(source), "cells": [official]}), source, progress=False)


# ----------------------------------------------------------------------------------------- tables and plots

def test_write_sweep_tables(tmp_path):
    rows = [_row(cell="a", kind="checkpoint", model="a.npz", status="ok", psnr_pooled=25.5, entropy_mean=7.25,
                 num_ms_ssim=2),
            _row(cell="b", kind="pretrained", model="dped_sony", status="error", error="OSError: boom")]
    sweep.write_sweep_tables(rows, tmp_path)
    with open(tmp_path / "sweep.csv") as f:
        reader = csv.DictReader(f)
        table = list(reader)
    assert reader.fieldnames == list(sweep.SWEEP_FIELDS)  # every field, empty where None
    assert table[0]["psnr_pooled"] == "25.5" and table[0]["ssim_rgb_mean"] == ""
    assert table[1]["error"] == "OSError: boom"
    lines = (tmp_path / "sweep.md").read_text().splitlines()
    # Only the fields some row has (kind and model never: the cell names them), in SWEEP_FIELDS order.
    assert lines[0] == "| cell | status | psnr_pooled | entropy_mean | num_ms_ssim | error |"
    assert lines[2] == "| a | ok | 25.5000 | 7.2500 | 2 | - |"
    assert lines[3] == "| b | error | - | - | - | OSError: boom |"

    sweep.write_sweep_tables([_row(cell="a", status="ok", entropy_mean=7.0, num_ms_ssim=0)], tmp_path)
    header = (tmp_path / "sweep.md").read_text().splitlines()[0]
    assert header == "| cell | status | entropy_mean |"  # no reference: no MS-SSIM count


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_plot_sweep_writes_the_plots_its_rows_have(tmp_path):
    steps = [_row(cell=f"r_step{s}", run="r", step=s, status="ok", psnr_pooled=20.0 + s / 10, entropy_mean=7.0)
             for s in (10, 30, 20)]
    model = _row(cell="dped_iphone", status="ok", psnr_pooled=22.0, entropy_mean=6.5, input_entropy_mean=6.0)
    failed = _row(cell="broken", status="error", step=40, run="r", psnr_pooled=99.0)
    for folder in ("both", "models", "none"):
        (tmp_path / folder).mkdir()
    written = sweep.plot_sweep(steps + [model, failed], tmp_path / "both")
    assert written == [tmp_path / "both" / "metric_vs_step.png", tmp_path / "both" / "models.png"]
    width, height = _png_size(written[0])
    assert (width, height) == (640, 256)  # 4 x 3.2 inches a metric at 80 dpi: psnr_pooled, entropy_mean

    assert sweep.plot_sweep([model], tmp_path / "models") == [tmp_path / "models" / "models.png"]
    only_inf = _row(cell="same", status="ok", psnr_pooled=math.inf)  # identical images: nothing finite to draw
    assert sweep.plot_sweep([only_inf, failed], tmp_path / "none") == []
