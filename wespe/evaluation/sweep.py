"""Sweeps as data: evaluate many models on the same photos, resumably, with a table and plots.

A sweep file (``experiments/sweeps/*.py``) has ``get_sweep()`` returning either a list of cells or a dict of
shared settings ("source", "reference", "weights_dir", "workdir", "tile", "limit") plus "cells". A cell is a dict
with "name" and one of: "pretrained" (an official DPED name; "weights_dir" from the cell or the shared settings),
"checkpoint" (exported generator or workdir: its latest checkpoint), "workdir" + "steps" ("all" or a list: one
cell per checkpoint step, named <name>_step<N>). A cell may override the shared settings; a cell with none of
pretrained/checkpoint/workdir takes the shared "workdir".

Each cell is one :func:`wespe.evaluation.evaluate.evaluate` run written to its own folder; finished cells are read back,
not recomputed. Before any model loads, :func:`check_cells` checks what every cell still to run needs (its
folders and model files, ``tile`` and ``limit``), so a mistake there is one error, not one failure per cell. The
output folder may lie inside the source or reference folder: what is under it is never scored as a photo.
``launch/sweep.py`` is the command line.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wespe.errors import PathNotFoundError, UserError, call_python_file
from wespe.evaluation import likeness_resampling, no_reference
from wespe.evaluation.evaluate import (AGGREGATE_FIELDS, AGGREGATE_LABELS, COUNT_FIELDS, check_inputs, evaluate,
                                       markdown_table, write_results)
from wespe.inference import pretrained
from wespe.inference.loading import checkpoint_steps, generator_for_flags, load_checkpoint_generator
from wespe.training.scan import check_folder

logger = logging.getLogger(__name__)
SWEEP_SHARED_KEYS = ("source", "reference", "weights_dir", "workdir", "tile", "limit")
# With a target model (launch/sweep.py --target), the no-reference numbers of each cell's outputs
# (wespe.evaluation.no_reference.Likeness; the "no_reference" section of the cell's results.json).
LIKENESS_FIELDS = no_reference.SUMMARY_COLUMNS
# The same numbers of the cell's inputs (its source photos), so the ranking can place them among the cells.
INPUT_LIKENESS_FIELDS = tuple(f"input_{k}" for k in LIKENESS_FIELDS)
SWEEP_FIELDS = (("cell", "kind", "model", "run", "step", "status", "source") + AGGREGATE_FIELDS + COUNT_FIELDS
                + LIKENESS_FIELDS + ("niqe_all_flat",) + INPUT_LIKENESS_FIELDS + ("error",))
# How the best cell is picked: by PSNR (pooled) when the cells have references; without, by the no-reference
# NIQE-style distance of the outputs to the target photos (lower is closer). Why NIQE and not the colour, noise
# or sharpness numbers: on the quality benchmark's real photos (experiments/results/evaluation.md) it is the one
# of the four that puts the clean photos themselves (the perfect output) clearly closest to the target photos,
# and its ranking of the methods agrees with the full-reference metrics' about as well as they agree with each
# other; the others mostly measure how the scenes differ. It is blind to colour (luma statistics), which PSNR
# weighs most: a guide to structure and texture, not a verdict.
BEST_BY = {"reference": ("psnr_pooled", "max"), "no_reference": ("niqe_set", "min")}
# Per cell with a target: its outputs' and inputs' patch moments (wespe.evaluation.likeness_resampling), so the
# ranking can resample the photos of finished cells without reading them again.
MOMENTS_FILE = "likeness_moments.npz"


def load_sweep(path: str | os.PathLike) -> dict:
    """Import a sweep file and return ``{"cells": [...], <shared settings>}``; a file that is missing, does not
    import or has no working ``get_sweep()`` is one :class:`UserError` naming it (and the line)."""
    sweep = call_python_file(path, "get_sweep", "--sweep", what="sweep",
                             example="experiments/sweeps/dped_pretrained.py")
    if not isinstance(sweep, (list, tuple, dict)):
        raise UserError(f"--sweep={path}: get_sweep() returned a {type(sweep).__name__}, not a list of cells or a "
                        "dict with \"cells\"")
    sweep = {"cells": list(sweep)} if isinstance(sweep, (list, tuple)) else dict(sweep)
    if not sweep.get("cells"):
        raise UserError(f"{path}: get_sweep() returned no cells")
    return sweep


def _cell_dirname(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def expand_cells(sweep: dict, overrides: dict | None = None) -> list[dict]:
    """Concrete cells: shared settings (``overrides`` win over the file's) merged into each cell, and every
    ``workdir`` cell expanded into one cell per checkpoint step."""
    shared = {k: sweep.get(k) for k in SWEEP_SHARED_KEYS}
    shared.update({k: v for k, v in (overrides or {}).items() if v is not None})
    cells = []
    for cell in sweep["cells"]:
        if "name" not in cell:
            raise UserError(f"sweep cell without a name: {cell}")
        c = {**shared, **{k: v for k, v in cell.items() if v is not None}}
        for k, v in (overrides or {}).items():  # flags beat the file's cells too
            if v is not None:
                c[k] = v
        if c.get("pretrained"):
            cells.append({**c, "kind": "pretrained", "model": c["pretrained"], "run": None, "step": None})
        elif c.get("checkpoint"):
            cells.append({**c, "kind": "checkpoint", "model": str(c["checkpoint"]), "run": None, "step": None})
        elif c.get("workdir"):
            steps = c.get("steps", "all")
            if steps == "all":
                steps = checkpoint_steps(c["workdir"])
                if not steps:
                    raise UserError(f"sweep cell {c['name']}: {c['workdir']} has no checkpoints")
            for step in steps:
                cells.append({**c, "name": f"{c['name']}_step{int(step)}", "kind": "step",
                              "model": str(c["workdir"]), "run": cell["name"], "step": int(step)})
        else:
            raise UserError(f"sweep cell {c['name']}: give pretrained, checkpoint or workdir (or --workdir)")
    names = [c["name"] for c in cells]
    if len(set(map(_cell_dirname, names))) != len(names):
        raise UserError(f"sweep cell names are not unique: {names}")
    return cells


def _cell_dir(output_dir: Path, cell: dict) -> Path:
    return output_dir / _cell_dirname(cell["name"])


def _is_finished(output_dir: Path, cell: dict) -> bool:
    return (_cell_dir(output_dir, cell) / "results.json").exists()


@contextlib.contextmanager
def _naming_cell(cell: dict):
    """A user error raised inside, with the cell's name put first (same type: a missing path stays one)."""
    try:
        yield
    except UserError as e:
        raise type(e)(f"sweep cell {cell['name']}: {e}") from e


def _check_model(cell: dict, steps_of: dict) -> None:
    if cell["kind"] == "pretrained":
        if cell["pretrained"] not in pretrained.PRETRAINED:
            raise UserError(f"unknown pretrained generator {cell['pretrained']!r}; expected one of "
                            f"{', '.join(sorted(pretrained.PRETRAINED))}")
        pretrained.checkpoint_prefix(cell["pretrained"], cell.get("weights_dir"))  # weights_dir and its files
    elif cell["kind"] == "checkpoint":
        path = str(cell["checkpoint"])
        if not (os.path.exists(path) or os.path.isfile(f"{path}.index")):  # a file, a folder or a TF prefix
            raise PathNotFoundError(f"checkpoint={path}: no such file or folder")
    else:
        workdir = str(check_folder(cell["workdir"], "workdir"))
        if workdir not in steps_of:
            steps_of[workdir] = checkpoint_steps(workdir)
        if cell["step"] not in steps_of[workdir]:
            raise UserError(f"workdir={workdir} has no checkpoint at step {cell['step']} (it has "
                            f"{', '.join(map(str, steps_of[workdir])) or 'none'})")


def _check_setting(cell: dict, key: str) -> None:
    value = cell.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"{key}={value!r}: expected a whole number >= 1 (or none)")


def check_cells(cells: Sequence[dict], output_dir: str | os.PathLike) -> None:
    """What every cell still to run (no ``results.json`` yet) needs, checked before any model loads: its source
    photos (given, and there) and reference (there, if given), not the output folder nor inside it
    (:func:`wespe.evaluation.evaluate.check_inputs`); its model's files (an official generator's in ``weights_dir``, a
    checkpoint file, a workdir holding the step); ``tile`` and ``limit`` whole numbers >= 1. Raises
    :class:`wespe.errors.UserError` naming the cell and the setting; a finished cell is read back, so it needs
    none of these."""
    output_dir = Path(output_dir)
    steps_of: dict[str, list[int]] = {}
    for cell in cells:
        if _is_finished(output_dir, cell):
            continue
        with _naming_cell(cell):
            if cell.get("source") is None:
                raise UserError("no source photos: give --source (or \"source\" in the sweep file)")
            check_inputs({"source": cell["source"], "reference": cell.get("reference")}, output_dir)
            _check_model(cell, steps_of)
            for key in ("tile", "limit"):
                _check_setting(cell, key)


def _cell_generator(cell: dict):
    if cell["kind"] == "pretrained":
        return generator_for_flags(pretrained_name=cell["pretrained"], weights_dir=cell.get("weights_dir"))[0]
    if cell["kind"] == "checkpoint":
        return generator_for_flags(checkpoint=cell["checkpoint"])[0]
    return load_checkpoint_generator(cell["workdir"], cell["step"])[0]


def run_sweep(cells: Sequence[dict], output_dir: str | os.PathLike, *, progress: bool = True,
              echo=print, target=None) -> list[dict]:
    """Evaluate every cell into ``output_dir/<cell>/`` (a cell whose results.json exists is not recomputed),
    then write sweep.csv, sweep.md and the plots. Returns one row per cell (``status`` ok or error). Raises
    :class:`wespe.errors.UserError` before any model loads for what :func:`check_cells` finds.

    ``target``: a :class:`wespe.evaluation.no_reference.TargetModel` (fitted once by the caller): every cell evaluated
    is also scored against it (:class:`wespe.evaluation.no_reference.Likeness`, the ``no_reference`` section of its
    results.json) and its outputs' :data:`LIKENESS_FIELDS` become columns; a finished cell gives them if its
    results.json has that section."""
    output_dir = Path(output_dir)
    check_cells(cells, output_dir)
    rows = []
    with tqdm(total=len(cells), unit="cell", desc="sweep", dynamic_ncols=True, disable=not progress) as bar:
        say = bar.write if progress else echo  # messages go above the bar when there is one
        for cell in cells:
            out = _cell_dir(output_dir, cell)
            row = dict.fromkeys(SWEEP_FIELDS)
            row.update(cell=cell["name"], kind=cell["kind"], model=cell["model"], run=cell["run"], step=cell["step"],
                       source=cell.get("source"))
            try:
                if (out / "results.json").exists():
                    say(f"skipped {cell['name']}: {out / 'results.json'} exists")
                    saved = json.loads((out / "results.json").read_text())
                else:
                    likeness = no_reference.Likeness(target) if target is not None else None
                    result = evaluate(_cell_generator(cell), cell.get("source"), cell.get("reference"),
                                      tile=cell.get("tile"), limit=cell.get("limit"), exclude=[output_dir],
                                      progress=progress, visit=likeness)
                    if likeness is not None:
                        result.no_reference = likeness.section()
                        out.mkdir(parents=True, exist_ok=True)  # before results.json, which marks the cell done
                        likeness_resampling.save_moments(out / MOMENTS_FILE, {
                            "outputs": likeness.outputs.moments(), "inputs": likeness.inputs.moments()})
                    write_results(result, out)
                    saved = result.to_json()
                row.update({k: saved["aggregates"].get(k) for k in AGGREGATE_FIELDS + COUNT_FIELDS},
                           status="ok")
                if target is not None:
                    section = saved.get("no_reference") or {}
                    for side, fields in (("outputs", LIKENESS_FIELDS), ("inputs", INPUT_LIKENESS_FIELDS)):
                        row.update({f: (section.get(side) or {}).get(k) for f, k in zip(fields, LIKENESS_FIELDS)})
                    row["niqe_all_flat"] = (section.get("outputs") or {}).get("niqe_all_flat")
            except Exception as e:  # noqa: BLE001 - one broken cell must not lose the others
                logger.debug("traceback for cell %s", cell["name"], exc_info=True)
                row.update(status="error", error=f"{type(e).__name__}: {e}")
                say(f"cell {cell['name']} failed: {row['error']}")
            rows.append(row)
            bar.update(1)
    resampled = resample_cells(rows, output_dir, target) if target is not None else None
    write_sweep_tables(rows, output_dir, resampled)
    plot_sweep(rows, output_dir)
    return rows


def resample_cells(rows: Sequence[dict], output_dir: str | os.PathLike, target) -> dict:
    """{("cell", name) or ("inputs", source): (resamples,) NIQE distances} for the finished cells whose folder has
    :data:`MOMENTS_FILE` and for their inputs (one per source folder), all against the same resamples of the
    target photos and with the same photo weights (:mod:`wespe.evaluation.likeness_resampling`): cells of one
    source are compared photo by photo. A cell whose every output is flat is infinitely far throughout."""
    if target is None or target.moments is None:
        return {}
    sets, flat = {}, []
    for r in rows:
        path = _cell_dir(Path(output_dir), {"name": r["cell"]}) / MOMENTS_FILE
        if r["status"] != "ok" or not path.exists():
            continue
        moments = likeness_resampling.load_moments(path)
        if r.get("niqe_all_flat"):
            flat.append(("cell", r["cell"]))
        elif len(moments["outputs"]):
            sets[("cell", r["cell"])] = moments["outputs"]
        if len(moments["inputs"]):
            sets.setdefault(("inputs", r.get("source")), moments["inputs"])
    return likeness_resampling.resample_distances(sets, target.moments, seed=target.seed, flat=flat)


def best_cell(rows: Sequence[dict], resampled: dict | None = None) -> tuple[dict | None, str]:
    """The best finished cell and a sentence saying how it was chosen (:data:`BEST_BY`): the highest pooled PSNR
    if some cell has one (references), else the lowest NIQE distance to the target (``--target``), else none.
    Picked by NIQE, with ``resampled`` (:func:`resample_cells`) holding it and the runner-up (the next cell by
    niqe_set, or a flat one), the sentence says how often it is the closer of the two over resamples of the
    photos."""
    ok = [r for r in rows if r["status"] == "ok"]
    for how, (key, sense) in BEST_BY.items():
        scored = [r for r in ok if r.get(key) is not None and math.isfinite(r[key])]
        if scored:
            best = (max if sense == "max" else min)(scored, key=lambda r: r[key])
            why = ("highest pooled PSNR against the references" if how == "reference" else
                   "no references: lowest NIQE-style distance of its outputs to the target photos (niqe_set; "
                   "no-reference, a weak guide: see wespe/evaluation/sweep.py BEST_BY)")
            if how == "no_reference" and resampled:
                why += _how_sure(best, ok, resampled)
            return best, f"best cell: {best['cell']} ({key} {best[key]:.4f}; {why})"
    return None, "best cell: none (no cell has a PSNR or, without references, a --target likeness to rank by)"


def _how_sure(best: dict, rows: Sequence[dict], resampled: dict) -> str:
    """"; closer ... than the runner-up X in N % of ..." for the cell picked by NIQE, "" without a runner-up."""
    others = sorted((r for r in rows if r is not best and no_reference.niqe_rank_key(r) is not None),
                    key=no_reference.niqe_rank_key)
    mine = resampled.get(("cell", best["cell"]))
    theirs = resampled.get(("cell", others[0]["cell"])) if others else None
    p = likeness_resampling.p_closer(mine, theirs) if mine is not None and theirs is not None else None
    if p is None:
        return ""
    verdict = "clearly" if p >= 0.95 else "not clearly"
    return (f"; closer to the target than the runner-up {others[0]['cell']} in {p:.0%} of the resamples of the "
            f"photos: {verdict} closer")


def likeness_ranking(rows: Sequence[dict], resampled: dict | None = None) -> str:
    """A Markdown table of the finished cells and their inputs (one row per source folder) ranked by the
    NIQE-style distance to the target photos, closest first (:func:`wespe.evaluation.no_reference.niqe_rank_key`:
    a cell whose every output is flat ranks last), with the other no-reference numbers; a cell without a NIQE
    number (photos under 96 px) is listed unranked. With ``resampled`` (:func:`resample_cells`), two more
    columns: each row's distance over the resamples of the photos, and how often it is closer than the row after
    it. "" when no cell was scored against a target (``--target``)."""
    ranked, unranked, inputs = [], [], {}
    for r in rows:
        if r["status"] != "ok" or all(r.get(k) is None for k in LIKENESS_FIELDS):
            continue  # failed, or not scored against a target
        key = no_reference.niqe_rank_key(r)
        entry = (key, ("cell", r["cell"]), r["cell"], *(r.get(k) for k in LIKENESS_FIELDS))
        (ranked if key is not None else unranked).append(entry)
        if r.get("input_niqe_set") is not None:  # every cell on the same photos scores the same inputs
            inputs.setdefault(r.get("source"), tuple(r.get(k) for k in INPUT_LIKENESS_FIELDS))
    if not ranked and not unranked:
        return ""
    ranked += [(values[0], ("inputs", source), f"inputs ({source})" if len(inputs) > 1 else "inputs", *values)
               for source, values in inputs.items()]
    ranked.sort(key=lambda row: row[0])
    header = ("rank", "what", *LIKENESS_FIELDS)
    table = [[i + 1, *row[2:]] for i, row in enumerate(ranked)] + [["-", *row[2:]] for row in unranked]
    note = ""
    if resampled:
        samples = [resampled.get(row[1]) for row in ranked] + [None] * len(unranked)
        for i, row in enumerate(table):
            after = samples[i + 1] if i + 1 < len(ranked) else None
            p = (likeness_resampling.p_closer(samples[i], after)
                 if samples[i] is not None and after is not None else None)
            row += [likeness_resampling.span(likeness_resampling.summary(samples[i]) if samples[i] is not None
                                             else None), "-" if p is None else f"{p:.0%}"]
        header += ("niqe_set resampled: median (95% range)", "closer than the next")
        note = (" The last two columns resample the photos (wespe/evaluation/likeness_resampling.py): a row "
                "closer than the next in fewer than 95 % of the resamples is not clearly closer (a one-sided 5 % "
                "bootstrap test); cells of one source are compared photo by photo.")
    return ("\n## Ranked by likeness to the target photos (no reference)\n\nNIQE-style distance to the target "
            "photos' model, closest first (0 = the target camera's own statistics); the inputs are the photos "
            "the cells enhanced. A cell whose every output is flat (a collapsed model) ranks last; one without "
            f"a NIQE number (photos under {no_reference.PATCH} px) is listed unranked. A guide, not a verdict: "
            f"see wespe/evaluation/sweep.py BEST_BY.{note}\n\n" + markdown_table(header, table))


def write_sweep_tables(rows: Sequence[dict], output_dir: str | os.PathLike, resampled: dict | None = None) -> None:
    """sweep.csv (every field) and sweep.md (the fields that have a value in some row; the likeness ranking, with
    ``resampled``'s columns when given)."""
    from wespe.atomic_write import atomic_write
    output_dir = Path(output_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SWEEP_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(output_dir / "sweep.csv") as f:
        f.write(buf.getvalue().encode())
    columns = [k for k in SWEEP_FIELDS if k in ("cell", "status") or any(r.get(k) is not None for r in rows)]
    columns = [k for k in columns if k not in ("kind", "model", "source", "niqe_all_flat", *INPUT_LIKENESS_FIELDS)]
    if not any(r.get("psnr_pooled") is not None for r in rows):  # no reference: no MS-SSIM count either
        columns = [k for k in columns if k != "num_ms_ssim"]
    table = markdown_table(columns, [[r.get(k) for k in columns] for r in rows])
    table += "\n" + best_cell(rows, resampled)[1] + "\n" + likeness_ranking(rows, resampled)
    with atomic_write(output_dir / "sweep.md") as f:
        f.write(table.encode())


def _plot_metrics(rows: Sequence[dict]) -> list[str]:
    wanted = ("psnr_pooled", "ssim_rgb_mean", "ms_ssim_mean", "entropy_mean", "bpp_mean")
    return [k for k in wanted if any(r.get(k) is not None and math.isfinite(r[k]) for r in rows)]


def plot_sweep(rows: Sequence[dict], output_dir: str | os.PathLike) -> list[Path]:
    """``metric_vs_step.png`` (one line per run; if the sweep has checkpoint steps) and ``models.png`` (bars per
    model: pretrained/checkpoint cells and the last step of each run, inputs' value as a dashed line)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    ok = [r for r in rows if r["status"] == "ok"]
    written = []
    step_rows = [r for r in ok if r["step"] is not None]
    metrics_ = _plot_metrics(step_rows)
    if step_rows and metrics_:
        fig, axes = plt.subplots(1, len(metrics_), figsize=(4 * len(metrics_), 3.2), squeeze=False)
        for ax, metric in zip(axes[0], metrics_):
            for run in dict.fromkeys(r["run"] for r in step_rows):
                points = sorted((r["step"], r[metric]) for r in step_rows if r["run"] == run
                                and r[metric] is not None)
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=run)
            ax.set_xlabel("step")
            ax.set_title(AGGREGATE_LABELS[metric], fontsize=9)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(output_dir / "metric_vs_step.png", dpi=80)
        plt.close(fig)
        written.append(output_dir / "metric_vs_step.png")
    last_steps = {}
    for r in step_rows:
        if r["run"] not in last_steps or r["step"] > last_steps[r["run"]]["step"]:
            last_steps[r["run"]] = r
    model_rows = [r for r in ok if r["step"] is None] + list(last_steps.values())
    metrics_ = _plot_metrics(model_rows)
    if model_rows and metrics_:
        fig, axes = plt.subplots(1, len(metrics_), figsize=(max(4, 1.2 * len(model_rows)) * len(metrics_) / 1.5,
                                                            3.6), squeeze=False)
        for ax, metric in zip(axes[0], metrics_):
            names = [r["cell"] for r in model_rows]
            values = [r[metric] if r[metric] is not None and math.isfinite(r[metric]) else 0.0 for r in model_rows]
            ax.bar(range(len(names)), values, color="tab:blue")
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
            inputs = [r.get(f"input_{metric}") for r in model_rows if r.get(f"input_{metric}") is not None]
            if inputs:
                ax.axhline(float(np.mean(inputs)), color="tab:red", linestyle="--", label="inputs")
                ax.legend(fontsize=8)
            ax.set_title(AGGREGATE_LABELS[metric], fontsize=9)
        fig.tight_layout()
        fig.savefig(output_dir / "models.png", dpi=80)
        plt.close(fig)
        written.append(output_dir / "models.png")
    return written
