"""Issue 28, second slice: the sweep's no-reference columns and best cell (wespe/evaluation/sweep.py, launch/sweep.py
--target), and the quality benchmark's no-reference columns and PSNR rank agreement
(wespe/evaluation/quality_benchmark.py).

Tiny data: two random textured 96x128 source photos (one NIQE patch row each), a target folder of two 192x192
textured photos, and tests/test_sweep.py's two exported width-8 generators (the identity and the official output
at its init, near grey)."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import script_server
from flax import nnx
from PIL import Image
from scipy.stats import spearmanr

from wespe.evaluation import no_reference, quality_benchmark, sweep
from wespe.inference.export import save_generator
from wespe.models import Generator

REPO = Path(__file__).resolve().parents[1]


def _textured(rng, h, w):
    base = rng.integers(40, 200, (h // 8, w // 8, 3)).repeat(8, 0).repeat(8, 1)
    return (base + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("nr_sweep")
    rng = np.random.default_rng(0)
    for folder, n, (h, w) in (("source", 2, (96, 128)), ("target", 2, (192, 192))):
        (root / folder).mkdir()
        for i in range(n):
            Image.fromarray(_textured(rng, h, w)).save(root / folder / f"{i}.png")
    identity = save_generator(Generator(width=8, num_blocks=1, output="residual", rngs=nnx.Rngs(0)),
                              root / "identity.npz")
    official = save_generator(Generator(width=8, num_blocks=1, rngs=nnx.Rngs(0)), root / "official.npz")
    return {"root": root, "source": str(root / "source"), "target": str(root / "target"),
            "identity": str(identity), "official": str(official)}


def test_sweep_with_a_target_adds_the_likeness_columns_and_picks_by_niqe(made, tmp_path):
    model = no_reference.fit_target_model(made["target"])
    cells = sweep.expand_cells({"source": made["source"], "cells": [
        {"name": "identity", "checkpoint": made["identity"]}, {"name": "official", "checkpoint": made["official"]}]})
    rows = sweep.run_sweep(cells, tmp_path, progress=False, target=model)
    identity, official = rows
    # G(x) = x: the identity cell's numbers are the source photos' own
    expected = no_reference.report(made["source"], model)
    for key in sweep.LIKENESS_FIELDS:
        assert identity[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key
    assert (tmp_path / "identity" / "results.json").read_text().count('"no_reference"') == 1
    table = (tmp_path / "sweep.md").read_text()
    assert "niqe_set" in table.splitlines()[0] and "color_distance" in table.splitlines()[0]
    best, line = sweep.best_cell(rows, sweep.resample_cells(rows, tmp_path, model))
    scored = [r for r in rows if r["niqe_set"] is not None]
    assert best is min(scored, key=lambda r: r["niqe_set"])
    assert line.startswith(f"best cell: {best['cell']} (niqe_set ") and "no references" in line
    # the runner-up is the flat cell: farther in every resample of the photos
    assert line.endswith("than the runner-up official in 100% of the resamples of the photos: clearly closer)")
    assert line in table and sweep.best_cell(rows)[1] == line[:line.index("; closer")] + ")"
    # the ranking: both cells and their inputs (the identity's numbers are theirs), closest to the target first
    ranking = table[table.index("## Ranked by likeness"):].splitlines()
    ranked = [[c.strip() for c in line.strip("|").split("|")] for line in ranking if line.startswith("| ")][1:]
    # the official generator at its init outputs near-grey photos: every patch flat, no NIQE number, ranked last
    assert official["niqe_set"] is None and official["niqe_all_flat"] is True and identity["niqe_all_flat"] is False
    assert official["color_distance"] > identity["color_distance"]
    assert [r[0] for r in ranked] == ["1", "2", "3"] and [r[1] for r in ranked][2] == "official"
    assert {r[1] for r in ranked[:2]} == {"identity", "inputs"}
    niqe = [float(r[2]) for r in ranked[:2]]
    assert niqe == sorted(niqe) and identity["input_niqe_set"] == pytest.approx(expected["niqe_set"], rel=1e-9)
    assert next(float(r[2]) for r in ranked if r[1] == "inputs") == pytest.approx(expected["niqe_set"], rel=1e-3)
    # the photos resampled (likeness_resampling): the identity's outputs are its inputs, photo by photo, so they
    # tie in every resample (50 %); both are closer than the flat cell in all of them
    assert (tmp_path / "identity" / sweep.MOMENTS_FILE).exists()
    assert ranking[4].count("|") == 9 and "closer than the next" in ranking[4]
    assert ranked[0][7] == "50%" and ranked[1][7] == "100%" and ranked[2][6:] == ["flat", "-"]
    assert ranked[0][6] == ranked[1][6] != "-"
    # resumed: the finished cells give their columns back from results.json, the ranking its resamples
    again = sweep.run_sweep(cells, tmp_path, progress=False, echo=lambda _: None, target=model)
    assert again[0]["niqe_set"] == identity["niqe_set"] and again[1]["color_distance"] == official["color_distance"]
    assert (tmp_path / "sweep.md").read_text() == table


def test_best_cell_ranks_by_psnr_with_references():
    rows = [dict.fromkeys(sweep.SWEEP_FIELDS) for _ in range(3)]
    for r, (name, psnr, niqe) in zip(rows, (("a", 20.0, 1.0), ("b", 25.0, 9.0), ("c", None, 0.5))):
        r.update(cell=name, status="ok", psnr_pooled=psnr, niqe_set=niqe)
    assert sweep.best_cell(rows)[0]["cell"] == "b"
    for r in rows:
        r["psnr_pooled"] = None
    assert sweep.best_cell(rows)[0]["cell"] == "c"
    # with the photos resampled: how often c beats the runner-up (a, the next by niqe_set); PSNR picks never say
    resampled = {("cell", "c"): np.array([1.0, 2.0, 3.0, 4.0]), ("cell", "a"): np.array([2.0, 1.0, 4.0, 3.5])}
    assert sweep.best_cell(rows, resampled)[1].endswith("than the runner-up a in 50% of the resamples of the "
                                                        "photos: not clearly closer)")
    assert sweep.best_cell(rows, {("cell", "c"): resampled[("cell", "c")]})[1] == sweep.best_cell(rows)[1]
    for r in rows:
        r["niqe_set"] = None
    assert sweep.best_cell(rows)[0] is None


def test_cli_bad_target_is_one_error_line_and_exit_2(made, tmp_path):
    sweep_file = tmp_path / "s.py"
    sweep_file.write_text(f"def get_sweep():\n    return [{{'name': 'i', 'checkpoint': {made['identity']!r}}}]\n")
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "missing", tmp_path / "empty"):
        proc = script_server.run([sys.executable, str(REPO / "launch" / "sweep.py"), f"--sweep={sweep_file}",
                                  f"--source={made['source']}", f"--target={target}",
                                  f"--output_dir={tmp_path / 'o'}"], cwd=REPO, timeout=120)
        assert proc.returncode == 2, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(target) in errors[0], proc.stderr
        assert not (tmp_path / "o" / "i").exists()  # no cell ran


def _method(kind, rows):
    return {"kind": kind, "per_seed": rows}


def test_quality_rank_agreement_matches_scipy_and_is_in_the_report():
    rng = np.random.default_rng(1)

    def row(seed):
        return {"seed": seed, "steps": None, "psnr_mean": float(rng.normal(22, 2)),
                "ssim_rgb_mean": float(rng.uniform(0.5, 0.9)), "ms_ssim_mean": float(rng.uniform(0.7, 0.95)),
                "niqe_set": float(rng.uniform(2, 30)), "color_distance": float(rng.uniform(0, 0.2)),
                "noise_log2_ratio": float(rng.normal(0, 1)), "sharpness_log2_ratio": float(rng.normal(0, 1))}

    methods = {"input": _method("input", [row(None)]), **{f"b{i}": _method("classical", [row(None)])
                                                          for i in range(4)},
               **{f"o{i}": _method("oracle", [row(None)]) for i in range(2)},
               "p": _method("trained", [row(0), row(1)]), "q": _method("trained", [row(0), row(1)])}
    closer = {"niqe_set": lambda v: -v, "color_distance": lambda v: -v, "noise_log2_ratio": lambda v: -abs(v),
              "sharpness_log2_ratio": lambda v: -abs(v)}
    for oracles in (False, True):  # the methods alone (the done-when's ranking), then with the oracle bounds
        agreement = quality_benchmark.rank_agreement(methods, [0, 1], oracles=oracles)
        fixed = [m["per_seed"][0] for m in methods.values()
                 if m["kind"] != "trained" and (oracles or m["kind"] != "oracle")]
        groups = {"0": fixed + [methods["p"]["per_seed"][0], methods["q"]["per_seed"][0]],
                  "1": fixed + [methods["p"]["per_seed"][1], methods["q"]["per_seed"][1]],
                  "pooled": fixed + methods["p"]["per_seed"] + methods["q"]["per_seed"]}
        for group, rows in groups.items():
            got = agreement["pooled"] if group == "pooled" else agreement["per_seed"][group]
            assert agreement["n"][group] == len(rows) == len(groups["0"]) + 2 * (group == "pooled")
            for key, f in closer.items():
                want = spearmanr([r["psnr_mean"] for r in rows], [f(r[key]) for r in rows]).statistic
                assert got[key] == pytest.approx(want, abs=1e-12), (group, key)
    with_oracles = agreement
    agreement = quality_benchmark.rank_agreement(methods, [0, 1])
    assert agreement["n"]["pooled"] == 9 and with_oracles["n"]["pooled"] == 11
    pooled = [r for m in methods.values() if m["kind"] != "oracle" for r in m["per_seed"]]
    # against SSIM instead of PSNR, and the two full-reference metrics against each other
    by_ssim = quality_benchmark.rank_agreement(methods, [0, 1], reference="ssim_rgb_mean")["pooled"]
    want = spearmanr([r["ssim_rgb_mean"] for r in pooled], [-r["niqe_set"] for r in pooled]).statistic
    assert by_ssim["niqe_set"] == pytest.approx(want, abs=1e-12)
    between = quality_benchmark.reference_agreement(methods)
    want = spearmanr([r["psnr_mean"] for r in pooled], [r["ms_ssim_mean"] for r in pooled]).statistic
    assert between["psnr_mean~ms_ssim_mean"] == pytest.approx(want, abs=1e-12)
    # a collapsed method (every output patch flat: no NIQE number) ranks farthest, not left out
    collapsed = dict(row(None), psnr_mean=5.0, niqe_set=None, niqe_all_flat=True)
    unmeasured = dict(row(None), niqe_set=None, niqe_all_flat=False)  # photos under 96 px: left out
    more = {**methods, "flat": _method("trained", [dict(collapsed, seed=0), dict(collapsed, seed=1)]),
            "small": _method("classical", [unmeasured])}
    got = quality_benchmark.rank_agreement(more, [0, 1])["pooled"]["niqe_set"]
    rows = pooled + more["flat"]["per_seed"]
    want = spearmanr([r["psnr_mean"] for r in rows],
                     [-r["niqe_set"] if r["niqe_set"] is not None else -np.inf for r in rows]).statistic
    assert got == pytest.approx(want, abs=1e-12)
    # ties share their average rank, as scipy's; a constant column or < 3 rows has no correlation
    spearman = quality_benchmark.spearman
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(spearmanr([1, 2, 2, 3], [1, 3, 2, 4])[0])
    assert spearman([1, 2, 3], [5, 5, 5]) is None and spearman([1, 2], [1, 2]) is None

    for m in methods.values():
        m["mean"], m["std"] = quality_benchmark.summarize(m["per_seed"])
        m["n"] = len(m["per_seed"])
        m["delta_vs_input"] = dict.fromkeys(quality_benchmark.METRICS)
    results = {"methods": methods, "clean": {"noise_mean": 1.0},
               "no_reference": {"rank_agreement": agreement, "rank_agreement_with_oracles": with_oracles,
                                "rank_agreement_by_reference": {"ssim_rgb_mean": by_ssim},
                                "reference_agreement": between,
                                "clean": dict.fromkeys(quality_benchmark.NO_REFERENCE, 0.5)}}
    table = quality_benchmark.summary_table(results).splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[header.index("NIQE→target")] == f"{methods['input']['mean']['niqe_set']:.3f}"
    lines = quality_benchmark.rank_agreement_lines(results)
    pooled = next(line for line in lines if line.startswith("- pooled"))
    assert f"niqe_set {agreement['pooled']['niqe_set']:+.3f}" in pooled and "(9 rows)" in pooled
    assert any(line.startswith("- seed 1 (7 rows)") for line in lines)
    assert any(line.startswith("- pooled, with the oracle rows (11 rows)") for line in lines)
    assert any(line.startswith("- pooled, against ssim_rgb_mean instead of PSNR (9 rows)") for line in lines)
    assert any("psnr_mean~ms_ssim_mean" in line for line in lines)
    assert not math.isnan(agreement["pooled"]["color_distance"])


def test_likeness_ranking_places_inputs_flat_and_unmeasured_cells():
    def cell(name, source, niqe, flat=False, input_niqe=None):
        r = dict.fromkeys(sweep.SWEEP_FIELDS)
        r.update(cell=name, status="ok", source=source, niqe_set=niqe, color_distance=0.1, niqe_all_flat=flat,
                 input_niqe_set=input_niqe, input_color_distance=0.2)
        return r

    rows = [cell("a", "p1", 5.0, input_niqe=7.0), cell("b", "p1", 9.0, input_niqe=7.0),
            cell("grey", "p2", None, flat=True, input_niqe=6.0), cell("thumbs", "p2", None, input_niqe=6.0),
            dict(cell("broken", "p1", 1.0), status="error")]
    table = sweep.likeness_ranking(rows).splitlines()
    ranked = [[c.strip() for c in line.strip("|").split("|")][:3] for line in table if line.startswith("| ")][1:]
    assert ranked == [["1", "a", "5.0000"], ["2", "inputs (p2)", "6.0000"], ["3", "inputs (p1)", "7.0000"],
                      ["4", "b", "9.0000"], ["5", "grey", "-"], ["-", "thumbs", "-"]]
    assert sweep.likeness_ranking([dict.fromkeys(sweep.SWEEP_FIELDS, None) | {"cell": "x", "status": "ok"}]) == ""
    # with resamples (sweep.resample_cells): a range and "closer than the next" where both rows have them
    near, far = np.linspace(4.0, 6.0, 5), np.array([7.0, 4.5, 8.0, 8.0, 9.0])  # one tie
    resampled = {("cell", "a"): near, ("inputs", "p2"): far, ("cell", "grey"): np.full(5, np.inf)}
    table = sweep.likeness_ranking(rows, resampled).splitlines()
    ranked = [[c.strip() for c in line.strip("|").split("|")] for line in table if line.startswith("| ")][1:]
    assert [r[-2:] for r in ranked] == [["5.00 (4.05-5.95)", "90%"], ["8.00 (4.75-8.90)", "-"], ["-", "-"],
                                        ["-", "-"], ["flat", "-"], ["-", "-"]]


def test_quality_rank_agreement_resampled():
    """The pooled niqe_set~PSNR agreement over resamples of the photos (quality_benchmark.rank_agreement_resampled):
    rows whose NIQE distance grows with their noise as their PSNR falls agree in every resample, and each
    resample's rho is scipy's on the rows reweighted by likeness_resampling's weights."""
    rng = np.random.default_rng(3)

    def photo():  # soft blocks with a little noise: added noise moves the NIQE distance far from the target's
        base = scipy.ndimage.gaussian_filter(rng.integers(40, 200, (12, 12, 3)).repeat(16, 0).repeat(16, 1)
                                             .astype(float), (2, 2, 0))
        return (base + rng.normal(0, 2, base.shape)).clip(0, 255).astype(np.uint8)

    target = no_reference.fit_target_model([photo() for _ in range(4)])
    clean = {name: photo() for name in ("a", "b", "c")}

    def scoring(sigma, seed=None):
        photos = {n: np.clip(x + rng.normal(0, sigma, x.shape), 0, 255).round().astype(np.uint8)
                  for n, x in clean.items()}
        psnr = {n: 10 * np.log10(255 ** 2 / max(np.mean((photos[n] - clean[n].astype(float)) ** 2), 1e-3))
                for n in photos}
        stats = no_reference.SetStats(target.seed).add_all(photos)
        return {"seed": seed, "per_image": [{"name": n, "psnr": psnr[n], "ssim_rgb": psnr[n] / 60} for n in photos],
                quality_benchmark.MOMENTS_KEY: stats.moments(), **stats.report(target)}

    methods = {"input": _method("input", [scoring(24)]), "b": _method("classical", [scoring(12)]),
               "p": _method("trained", [scoring(3, 0), scoring(6, 1)]), "o": _method("oracle", [scoring(0)])}
    got = quality_benchmark.rank_agreement_resampled(methods, target, resamples=20)
    assert got["rows"] == 4 and got["resamples"] == 20  # the oracle row is not a method
    assert got["niqe_set"] == {"median": 1.0, "low": 1.0, "high": 1.0, "share_at_least_0.8": 1.0}
    assert got["psnr~ssim"]["median"] == 1.0
    # each resample by hand: weights, the refitted target, the reweighted PSNR, scipy's Spearman
    methods["b"]["per_seed"] = [scoring(12)]
    methods["input"]["per_seed"][0]["per_image"][0]["psnr"] = 99.0  # photo "a" of the input: now a good photo
    got = quality_benchmark.rank_agreement_resampled(methods, target, resamples=20)
    rows = [r for m in methods.values() if m["kind"] != "oracle" for r in m["per_seed"]]
    from wespe.evaluation import likeness_resampling as lr
    w_set, w_target = lr.photo_weights(("a", "b", "c"), 0, 20), lr._weights(target.moments.names, 0, lr.TARGET_SIDE, 20)
    rhos = []
    for b in range(20):
        model = target.moments.pooled(w_target[b])
        niqe = [no_reference.mvg_distance(*r[quality_benchmark.MOMENTS_KEY].pooled(w_set[b]), *model) for r in rows]
        psnr = [np.average([p["psnr"] for p in r["per_image"]], weights=w_set[b]) for r in rows]
        rhos.append(spearmanr(psnr, -np.array(niqe)).statistic)
    assert got["niqe_set"]["median"] == pytest.approx(np.median(rhos), abs=1e-12)
    assert got["niqe_set"]["low"] < got["niqe_set"]["high"]  # the input's good photo counts more in some resamples
    assert got["niqe_set"]["share_at_least_0.8"] == pytest.approx(np.mean(np.array(rhos) >= 0.8 - 1e-9))
    # results.json leaves the moments out; the report says the spread
    plain = quality_benchmark._without_moments({"methods": methods})
    assert all(quality_benchmark.MOMENTS_KEY not in r for m in plain["methods"].values() for r in m["per_seed"])
    assert quality_benchmark.MOMENTS_KEY in methods["p"]["per_seed"][0]  # the working copy keeps them
    lines = quality_benchmark.rank_agreement_lines({"no_reference": {
        "rank_agreement": quality_benchmark.rank_agreement(methods, [0, 1]), "rank_agreement_resampled": got}})
    assert any("With the photos resampled (20 resamples" in line and "at least +0.8 in" in line for line in lines)
