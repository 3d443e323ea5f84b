"""A public real-photo quality benchmark, one command: classical baselines and trained presets, several seeds.

    pip install -e ".[quality]"
    python launch/quality.py --output_dir=runs/quality            # presets of experiments/quality/, seeds 0,1,2
    python launch/quality.py --output_dir=runs/quality --skip_training            # baselines only, seconds

This module owns the presets, their training, the scoring and the report; the photos, their licences, the split
(whole held-out test photos, training photos cut in halves, one per side) and the camera that degrades them are
:mod:`wespe.evaluation.quality_data`'s, the baselines :mod:`wespe.evaluation.baselines`'.

Methods, all scored by :func:`wespe.evaluation.evaluate.evaluate` on the whole held-out photos against the clean ones:

* ``input``: the degraded photo itself (the bar to beat);
* classical baselines (:data:`wespe.evaluation.baselines.BASELINES`, pure NumPy, deterministic): grey-world +
  autocontrast, unsharp mask, both; their outputs are written as PNGs and scored in outputs mode;
* colour transfers fitted to the training sets (:func:`wespe.evaluation.baselines.fitted_baselines`, no network): what
  wespe_plus's colour path does before training, so the table shows what training adds; and that colour fit followed by
  a classical denoiser (non-local means, strength estimated from each photo), so it shows what training adds beyond
  colour plus denoising;
* oracle rows (:func:`wespe.evaluation.baselines.oracle_baselines`, kind ``oracle``): the same colour path with colour
  maps read from each test photo's true camera (camera_params.json), and the colour start denoised at the camera's true
  noise level - not methods, bounds that split the gap between the colour start and the clean photo into set-level
  colour, per-photo colour and noise; not in the grid;
* trained presets (``name -> experiment config file``), one training run per seed (:func:`preset_config` says
  what is overridden), scored in model mode; a finished run in ``runs/<preset>/seed_<s>`` is reused.

Beside evaluate's metrics, two of :mod:`wespe.evaluation.quality_metrics` say what kind of change a method made: the
PSNR of the fine detail (high-pass residuals) against the clean photo's, and the noise level of the output, next to the
clean photos' own (``results["clean"]``).

:func:`run_benchmark` writes ``results.json`` (per-seed aggregates, mean and std over seeds, deltas vs the
input, camera draws, halves, split, licences, the command to rerun), ``results.md`` (one row per method) and
``grid.png`` (centre crops: input | baselines | presets (first seed) | clean).
"""

from __future__ import annotations

import functools
import json
import math
import re
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from wespe import config as configs
from wespe import image_io, image_paths
from wespe.atomic_write import atomic_write
from wespe.errors import JobFailed, UserError, call_python_file
from wespe.evaluation import evaluate, likeness_resampling, no_reference, quality_metrics
from wespe.evaluation.baselines import (BASELINES, COLOUR_START, FITTED_NAMES, ORACLE_NAMES, apply_uint8,
                                       fitted_baselines, oracle_baselines)
from wespe.evaluation.quality_data import PHOTOS, TRAIN_LAYOUT, BenchmarkData, folders, prepare, write_png
from wespe.inference.loading import load_exported_generator
from wespe.training import loop

METRICS = ("psnr_mean", "psnr_pooled", "ssim_rgb_mean", "ms_ssim_mean", "entropy_mean", "detail_psnr_mean",
           "noise_mean")
# No-reference likeness of a method's outputs to the target-side training photos (wespe.evaluation.no_reference), and
# how much the ranking of the methods by each agrees with their ranking by PSNR (:func:`rank_agreement`).
NO_REFERENCE = no_reference.SUMMARY_COLUMNS
PER_IMAGE = ("name", "psnr", "ssim_rgb", "ms_ssim", "entropy", "detail_psnr", "noise")
MOMENTS_KEY = "likeness_moments"  # a scoring's patch moments (likeness_resampling.PhotoMoments), in memory only
PROTOCOL = {
    "detail_psnr": "PSNR (data range 1) of the high-pass residuals x - gaussian(x, sigma=2) (per channel, [0, 1] "
                   "floats) of the output and the clean photo (wespe.evaluation.quality_metrics.detail_psnr); "
                   "mean per image",
    "noise": "noise std of the output's BT.601 luma by Immerkaer's fast estimator, x 255 "
             "(wespe.evaluation.quality_metrics.noise_level); mean per image; the clean photos' own value is "
             "results['clean']['noise_mean']",
    "no_reference": "niqe_set, color_distance, noise_log2_ratio, sharpness_log2_ratio: "
                    "wespe.evaluation.no_reference.report of "
                    "the method's outputs (the whole held-out photos) against a target model fitted to the "
                    "benchmark's clean target-side training photos (data/target: what the unpaired methods train "
                    "towards); no reference photo is read. results['no_reference']['target'] is that model, "
                    "results['no_reference']['protocol'] wespe.evaluation.no_reference.PROTOCOL",
    "rank_agreement": "Spearman rank correlation (average ranks for ties) across the scored rows between "
                      "psnr_mean and each no-reference column made a 'closer to target is higher' score: "
                      "-niqe_set, -color_distance, -|noise_log2_ratio|, -|sharpness_log2_ratio|; per seed (the "
                      "deterministic rows with each trained preset's run of that seed) and pooled (every row of "
                      "every seed once); rank_agreement: the methods (input, baselines, trained presets); "
                      "rank_agreement_by_reference: the same pooled, against ssim_rgb_mean and ms_ssim_mean "
                      "instead of PSNR; reference_agreement: PSNR against those two over the same rows, for scale; "
                      "rank_agreement_with_oracles: the oracle rows too (bounds that read each test photo's "
                      "camera); outputs whose every NIQE patch is flat (a collapsed model) rank farthest in "
                      "niqe_set (wespe.evaluation.no_reference.niqe_rank_key); None with fewer than 3 rows or a "
                      "constant column",
}
GRID_CROP = 192


class PresetError(UserError):
    """A preset (``name=config_path``) that cannot be used: bad syntax, missing file, a file that does not import
    or has no working ``get_config()``, a config value out of range (:func:`check_preset`)."""


class TrainingInterrupted(JobFailed):
    """A training run stopped before its last step (SIGTERM / Ctrl-C); rerunning the command resumes it."""


# ---------------------------------------------------------------------------------------------------- presets

def parse_presets(text: str) -> dict[str, str]:
    """``"a=path/a.py,b=path/b.py"`` -> ``{"a": "path/a.py", "b": "path/b.py"}`` (empty text: no presets)."""
    presets: dict[str, str] = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, sep, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise PresetError(f"--presets: {item!r} is not name=config_path")
        if name in presets:
            raise PresetError(f"--presets: the name {name!r} is given twice")
        presets[name] = path
    return presets


def check_preset_name(name: str) -> None:
    """A preset name is a folder name (letters, digits, ``_.-``) and not one of the other methods' names."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise PresetError(f"--presets: the name {name!r} must be letters, digits, '_', '.' or '-'")
    if name in ("input", "clean", *BASELINES, *FITTED_NAMES, *ORACLE_NAMES):
        raise PresetError(f"--presets: {name!r} is the name of another method; choose another")


def _flag(name: str | None, path: str | Path) -> str:
    """``--presets=<name>``: with ``=<path>`` after it, how a preset is named in an error (as typed)."""
    return f"--presets={Path(path).stem if name is None else name}"


def load_preset_config(path: str | Path, name: str | None = None):
    """``get_config()`` of the experiment file ``path`` (imported from its path; a fresh config each call).
    Whatever is wrong with the file (missing, a syntax error, an exception while importing it or in
    ``get_config()``, no ``get_config()``, not a ConfigDict returned) is a :class:`PresetError` naming
    ``--presets=<name>=<path>`` (``name`` defaults to the file's stem) and, where there is one, the line."""
    try:
        config = call_python_file(path, "get_config", _flag(name, path), what="config",
                                  example="experiments/quality/wespe_plus.py")
    except UserError as e:
        raise PresetError(str(e)) from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise PresetError(f"{_flag(name, path)}={path}: get_config() returned a {type(config).__name__}, not an "
                          "ml_collections.ConfigDict (start from a preset in wespe/config.py)")
    return config


def check_preset(name: str, path: str | Path, data_root: str | Path, seeds: Sequence[int], steps: int | None = None,
                 vgg_weights: str = "random") -> None:
    """Everything about preset ``name`` that can be checked before any photo is prepared: its name, its file
    (:func:`load_preset_config`) and its config for every seed, with this benchmark's overrides applied
    (:func:`preset_config` on the folders :func:`prepare` will write under ``data_root``), against
    :func:`wespe.config.validate`. A bad value is a :class:`PresetError` naming the preset file and the key
    (``--presets=a=x.py: config.weights.tv=-1.0: must be >= 0``), or ``--seeds`` / ``--steps`` when it is theirs."""
    check_preset_name(name)
    layout = folders(Path(data_root))
    for seed in seeds:
        config = preset_config(path, layout, seed, steps, vgg_weights, name=name)
        try:
            configs.validate(config)
        except configs.ConfigError as e:
            if e.key == "seed":
                raise PresetError(f"--seeds: {seed} {e.requirement}") from e
            if e.key == "num_steps" and steps is not None:
                raise PresetError(f"--steps={steps}: {e.requirement}") from e
            raise PresetError(f"{_flag(name, path)}={path}: {e}") from e


def preset_config(path: str | Path, data: BenchmarkData, seed: int, steps: int | None = None,
                  vgg_weights: str = "random", *, name: str | None = None):
    """The config of one benchmark run: the preset's ``get_config()`` with

    * ``data.builtin`` and ``data.dped_root`` None, ``data.source`` / ``target`` = the prepared folders (a
      ``dped``-mode config: ``data.paired = True`` and the ``paired/`` folders, degraded vs clean by file name);
    * ``data.heldout`` = test/degraded (the sample grids), ``data.heldout_reference`` = test/clean if the config
      has that key;
    * ``seed``, ``num_steps = steps`` (when given) and ``vgg_weights`` (``random`` by default: nothing to
      download; pass the real weights for paper-faithful content losses).

    ``name``: the preset's name in ``--presets``, for errors (:func:`load_preset_config`).
    """
    config = load_preset_config(path, name)
    d = config.data
    d.builtin = None
    d.dped_root = None
    if config.mode == "dped":
        d.paired = True
        d.source, d.target = data.paired_source, data.paired_target
    else:
        d.source, d.target = data.source, data.target
    d.heldout = data.test_degraded
    if "heldout_reference" in d:
        d.heldout_reference = data.test_clean
    config.seed = int(seed)
    if steps is not None:
        config.num_steps = int(steps)
    config.vgg_weights = vgg_weights
    return config


RUN_RECORD = "quality_run.json"


def _config_json(config) -> dict:
    return json.loads(config.to_json_best_effort())


def train_preset(config, workdir: str | Path) -> dict:
    """Train ``config`` in ``workdir`` unless a finished run of the same config is there (``generator.npz`` and
    this module's ``quality_run.json`` record, whose config, num_steps included, must equal ``config``).
    Returns the record: ``{"config", "num_steps", "train_minutes", "reused"}`` (minutes: wall clock of
    ``run_training``, compilation included; of the original run when reused)."""
    workdir = Path(workdir)
    record_path = workdir / RUN_RECORD
    wanted = _config_json(config)
    if (workdir / "generator.npz").exists() and record_path.exists():
        record = json.loads(record_path.read_text())
        saved = json.loads((workdir / "config.json").read_text()) if (workdir / "config.json").exists() else {}
        # Keys added to the config since that run are compared at their defaults (which reproduce the behaviour
        # before they existed), as a resumed run does.
        recorded = _config_json(configs.from_saved(record["config"])) if "config" in record else None
        if recorded == wanted and saved.get("num_steps") == config.num_steps:
            return {**record, "reused": True}
    start = time.perf_counter()
    result = loop.run_training(config, workdir)
    minutes = (time.perf_counter() - start) / 60
    if result.status != "finished":
        raise TrainingInterrupted(f"training in {workdir} stopped at step {result.step} ({result.status}); run the "
                                  f"same command again to resume it")
    if result.step != config.num_steps:
        raise UserError(f"{workdir} holds a run of {result.step} steps, not the {config.num_steps} asked for: use "
                         f"another output folder (or remove that run)")
    record = {"config": wanted, "num_steps": int(result.step), "train_minutes": minutes}
    with atomic_write(record_path) as f:
        f.write((json.dumps(record, indent=2) + "\n").encode())
    return {**record, "reused": False}


# ------------------------------------------------------------------------------------------------- the benchmark

def _read(path) -> np.ndarray:
    return image_io.read_image(path)[0]  # as evaluate reads it: upright 8-bit RGB


def detail_and_noise(outputs_folder, reference_folder) -> dict[str, dict]:
    """``{name: {"detail_psnr", "noise"}}`` of the photos of ``outputs_folder`` against ``reference_folder``
    (paired as :func:`wespe.evaluation.evaluate.evaluate` pairs, :func:`wespe.image_paths.match_pairs`);
    ``reference_folder=None``: only ``noise`` (the clean photos' own).

    Computed here from the saved outputs rather than inside evaluate: every method of the benchmark has its
    8-bit outputs on disk as lossless PNGs (the very images evaluate scored), and evaluate's rows and aggregates
    are also the fields of launch/evaluate.py's CSV and of wespe.evaluation.sweep's tables, which these benchmark
    diagnostics would change for every other user."""
    outputs, _ = image_paths.index_images(outputs_folder)
    references = image_paths.index_images(reference_folder)[0] if reference_folder is not None else {}
    reference_of = image_paths.partners(outputs, list(references.items()))
    scores = {}
    for name, path in outputs.items():
        image = _read(path)
        scores[name] = {"noise": quality_metrics.noise_level(image)}
        if name in reference_of:
            scores[name]["detail_psnr"] = quality_metrics.detail_psnr(image, _read(reference_of[name]))
    return scores


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _per_seed(result: evaluate.EvalResult, outputs_folder, reference_folder, seed, steps, minutes,
              target: no_reference.TargetModel | None = None) -> dict:
    """One scoring of a method: evaluate's aggregates of :data:`METRICS`, the detail PSNR and noise level of its
    outputs (:func:`detail_and_noise`, averaged over the photos as evaluate's means are), per-image rows and, with
    a ``target`` model, the :data:`NO_REFERENCE` numbers of the outputs folder against it."""
    a = result.aggregates
    if not result.rows or result.skipped:
        raise JobFailed(f"{len(result.skipped)} held-out photos could not be scored: {result.skipped}")
    extra = detail_and_noise(outputs_folder, reference_folder)
    rows = [{**r, **extra.get(r["name"], {})} for r in result.rows]
    means = {f"{k}_mean": _mean(r.get(k) for r in rows) for k in ("detail_psnr", "noise")}
    stats = no_reference.SetStats(target.seed).add_all(outputs_folder) if target is not None else None
    likeness = stats.report(target) if stats is not None else {}
    return {"seed": seed, **{k: means[k] if k in means else a[k] for k in METRICS},
            **{k: likeness.get(k) for k in NO_REFERENCE}, "niqe_all_flat": likeness.get("niqe_all_flat"),
            "train_minutes": minutes, "steps": steps,
            "per_image": [{k: r.get(k) for k in PER_IMAGE} for r in rows],
            # the outputs' patch moments, for rank_agreement_resampled; not written to results.json
            MOMENTS_KEY: stats.moments() if stats is not None else None}


def summarize(per_seed: list[dict]) -> tuple[dict, dict]:
    """Mean and std over seeds of every metric of :data:`METRICS` and :data:`NO_REFERENCE` and the training
    minutes (sample std, ddof 1; 0 for a single seed or a deterministic method)."""
    mean, std = {}, {}
    for key in METRICS + NO_REFERENCE + ("train_minutes",):
        values = [r[key] for r in per_seed if r.get(key) is not None]
        mean[key] = float(np.mean(values)) if values else None
        std[key] = (float(np.std(values, ddof=1)) if len(values) > 1 else 0.0) if values else None
    return mean, std


def rerun_command(out_dir, presets: dict, seeds, steps, vgg_weights, skip_training, data_seed, max_side) -> str:
    """The ``launch/quality.py`` command line (every option explicit) that reruns this benchmark."""
    args = ["python", "launch/quality.py", f"--output_dir={out_dir}",
            f"--presets={','.join(f'{k}={v}' for k, v in presets.items())}",
            f"--seeds={','.join(str(s) for s in seeds)}", f"--vgg_weights={vgg_weights}", f"--data_seed={data_seed}"]
    if steps is not None:
        args.append(f"--steps={steps}")
    if max_side is not None:
        args.append(f"--max_side={max_side}")
    if skip_training:
        args.append("--skip_training")
    return " ".join(shlex.quote(a) for a in args)


def run_benchmark(out_dir: str | Path, presets: dict[str, str], seeds: Sequence[int] = (0, 1, 2),
                  steps: int | None = None, *, vgg_weights: str = "random", skip_training: bool = False,
                  data_seed: int = 0, max_side: int | None = None, split: dict | None = None,
                  progress: bool = True) -> dict:
    """Prepare the photos, score ``input`` and the classical baselines, train and score every preset for every
    seed (unless ``skip_training``), and write results.json, results.md and grid.png into ``out_dir``.

    ``presets``: name -> experiment config file; every one is loaded and its config, with this benchmark's
    overrides, validated for every seed (:func:`check_preset`: a bad one raises :class:`PresetError`) before any
    photo is prepared or network trained. ``steps``: training steps of every
    run (None: each config's own ``num_steps``). ``split``: see :func:`prepare` (not a flag of launch/quality.py:
    the recorded command reruns a custom split only with the same ``data`` folder). Returns the content of
    results.json.
    """
    out_dir = Path(out_dir)
    seeds = [int(s) for s in seeds]
    presets = _checked_presets(out_dir, presets, seeds, steps, vgg_weights, skip_training)
    data = prepare(out_dir / "data", data_seed, split=split, max_side=max_side)
    split = json.loads(Path(data.root, "READY").read_text())["split"]
    command = rerun_command(out_dir, presets, seeds, steps, vgg_weights, skip_training, data_seed, max_side)

    target = no_reference.fit_target_model(data.target)  # the clean target-side training photos
    cameras = json.loads(Path(data.camera_params).read_text())
    methods, outputs = _score_methods(out_dir, data, target, _baseline_methods(data, cameras), presets, seeds,
                                      steps, vgg_weights, progress)
    _summarize_methods(methods)
    results = {"command": command, "cwd": str(Path.cwd()), "methods": methods, "input": methods["input"]["mean"],
               **_reference_numbers(data, target, methods, seeds),
               **_run_record(split, cameras, data_seed, max_side, seeds, steps, vgg_weights)}
    results = _without_moments(results)  # they served rank_agreement_resampled; not results
    with atomic_write(out_dir / "results.json") as f:
        f.write((json.dumps(results, indent=2) + "\n").encode())
    with atomic_write(out_dir / "results.md") as f:
        f.write(markdown(results).encode())
    save_grid(outputs, data, out_dir / "grid.png")
    return results


def _checked_presets(out_dir: Path, presets: dict[str, str], seeds: list[int], steps: int | None, vgg_weights: str,
                     skip_training: bool) -> dict[str, str]:
    """The presets to train: none with ``skip_training``, else all of them, each checked for every seed first
    (:func:`check_preset`)."""
    if skip_training:
        return {}
    if not seeds:
        raise UserError("give at least one seed")
    for name, path in presets.items():
        check_preset(name, path, out_dir / "data", seeds, steps, vgg_weights)
    return presets


def _baseline_methods(data: BenchmarkData, cameras: dict) -> dict[str, tuple]:
    """Every untrained method: ``name -> (kind, photo name -> method)`` (the oracle rows' methods differ per
    photo: each reads its own camera), classical, then fitted to the training sets, then oracle."""
    fitted = fitted_baselines(data)
    oracles = functools.cache(lambda photo: oracle_baselines(cameras["cameras"][photo], cameras["ranges"],
                                                             fitted[COLOUR_START]))  # once a photo
    return {**{n: ("classical", lambda _, f=f: f) for n, f in BASELINES.items()},
            **{n: ("fitted", lambda _, f=f: f) for n, f in fitted.items()},
            **{n: ("oracle", lambda photo, n=n: oracles(photo)[n]) for n in ORACLE_NAMES}}


def _score_methods(out_dir: Path, data: BenchmarkData, target: no_reference.TargetModel, baselines: dict,
                   presets: dict[str, str], seeds: list[int], steps: int | None, vgg_weights: str,
                   progress: bool) -> tuple[dict[str, dict], dict[str, str]]:
    """``input``, each baseline and each preset's run of each seed scored, in that order: ``(methods, outputs)``,
    method -> ``{"kind", "per_seed", ...}`` and method -> the folder of its outputs (first seed; no oracle)."""
    outputs: dict[str, str] = {"input": data.test_degraded}
    methods: dict[str, dict] = {}
    total = 1 + len(baselines) + len(presets) * len(seeds)
    with tqdm(total=total, unit="run", desc="quality benchmark", disable=not progress, dynamic_ncols=True) as bar:
        bar.set_postfix_str("input")
        methods["input"] = {"kind": "input", "per_seed": [_score_outputs(data.test_degraded, data, target)]}
        bar.update(1)
        for name, (kind, method_for) in baselines.items():
            bar.set_postfix_str(name)
            folder = outputs_folder(out_dir, name, kind)
            _write_baseline_outputs(method_for, data, folder)
            methods[name] = {"kind": kind, "per_seed": [_score_outputs(folder, data, target)]}
            if kind != "oracle":  # the grid shows methods; the oracle rows are bounds (see the table's note)
                outputs[name] = str(folder)
            bar.update(1)
        for name, path in presets.items():
            methods[name] = {"kind": "trained", "config": str(path), "per_seed": []}
            for seed in seeds:
                bar.set_postfix_str(f"{name} seed {seed}")
                enhanced = _train_and_score(methods[name], name, path, seed, out_dir, data, target, steps,
                                            vgg_weights)
                outputs.setdefault(name, str(enhanced))
                bar.update(1)
    return methods, outputs


def outputs_folder(out_dir: str | Path, name: str, kind: str, seed: int | None = None) -> Path:
    """Where the photos a scoring of method ``name`` scored lie under a benchmark's ``out_dir``: the degraded test
    photos for ``input``, ``methods/<name>/`` for an untrained method, ``methods/<name>/seed_<seed>/`` for a
    trained preset's run (what :func:`run_benchmark` writes; experiments/quality/target_dependence.py reads them)."""
    if kind == "input":
        return Path(folders(Path(out_dir) / "data").test_degraded)
    folder = Path(out_dir) / "methods" / name
    return folder / f"seed_{seed}" if kind == "trained" else folder


def _write_baseline_outputs(method_for, data: BenchmarkData, folder: Path) -> None:
    """A baseline applied to every degraded test photo, written as PNGs of the same names into ``folder``."""
    for path in sorted(Path(data.test_degraded).glob("*.png")):
        write_png(folder / path.name, apply_uint8(method_for(path.stem), np.asarray(Image.open(path).convert("RGB"))))


def _score_outputs(folder, data: BenchmarkData, target: no_reference.TargetModel) -> dict:
    """The one scoring of an untrained method whose outputs are the PNGs of ``folder``."""
    result = evaluate.evaluate(None, data.test_degraded, data.test_clean, outputs_folder=folder, progress=False)
    return _per_seed(result, folder, data.test_clean, None, None, None, target)


def _train_and_score(method: dict, name: str, path: str, seed: int, out_dir: Path, data: BenchmarkData,
                     target: no_reference.TargetModel, steps: int | None, vgg_weights: str) -> Path:
    """Preset ``name``'s run of ``seed`` trained (or reused) and scored into ``method``; returns the folder of
    its enhanced photos."""
    workdir = out_dir / "runs" / name / f"seed_{seed}"
    record = train_preset(preset_config(path, data, seed, steps, vgg_weights, name=name), workdir)
    enhanced = outputs_folder(out_dir, name, "trained", seed)
    result = evaluate.evaluate(load_exported_generator(workdir), data.test_degraded, data.test_clean,
                               save_enhanced_to=enhanced, progress=False)
    method["per_seed"].append(_per_seed(result, enhanced, data.test_clean, seed, record["num_steps"],
                                        record["train_minutes"], target))
    method["reused_runs"] = method.get("reused_runs", 0) + bool(record["reused"])
    return enhanced


def _summarize_methods(methods: dict[str, dict]) -> None:
    """Each method's mean and std over seeds (:func:`summarize`), number of scorings and mean minus the input's."""
    base, _ = summarize(methods["input"]["per_seed"])
    for entry in methods.values():
        entry["mean"], entry["std"] = summarize(entry["per_seed"])
        entry["n"] = len(entry["per_seed"])
        entry["delta_vs_input"] = {k: (entry["mean"][k] - base[k] if None not in (entry["mean"][k], base[k])
                                       else None) for k in METRICS + NO_REFERENCE}


def _reference_numbers(data: BenchmarkData, target: no_reference.TargetModel, methods: dict,
                       seeds: list[int]) -> dict:
    """results.json's ``clean`` (the clean photos' noise level, which a method's noise column is read against)
    and ``no_reference`` (the target model, the clean photos' own likeness, the rank agreement)."""
    clean = detail_and_noise(data.test_clean, None)
    clean_likeness = no_reference.report(data.test_clean, target)
    return {
        "clean": {"noise_mean": _mean(v["noise"] for v in clean.values()),
                  "per_image": [{"name": n, "noise": v["noise"]} for n, v in clean.items()]},
        "no_reference": {"target": target.summary(), "protocol": no_reference.PROTOCOL,
                         # the clean test photos' own numbers: what a perfect method scores (scene content differs)
                         "clean": {k: clean_likeness.get(k) for k in NO_REFERENCE},
                         "rank_agreement": rank_agreement(methods, seeds),
                         "rank_agreement_by_reference": {ref: rank_agreement(methods, seeds, reference=ref)["pooled"]
                                                         for ref in RANK_REFERENCES[1:]},
                         "reference_agreement": reference_agreement(methods),
                         "rank_agreement_with_oracles": rank_agreement(methods, seeds, oracles=True),
                         "rank_agreement_resampled": rank_agreement_resampled(methods, target)},
    }


def _run_record(split: dict, cameras: dict, data_seed: int, max_side: int | None, seeds: list[int],
                steps: int | None, vgg_weights: str) -> dict:
    """results.json's record of the run: split, photos and their licences, camera draws, settings, protocol."""
    return {
        "split": split, "photos": {n: PHOTOS[n] for names in split.values() for n in names},
        "camera_params": cameras["cameras"], "camera_ranges": cameras["ranges"], "halves": cameras["halves"],
        "train_layout": TRAIN_LAYOUT, "data_seed": data_seed,
        "max_side": max_side, "seeds": seeds, "steps": steps, "vgg_weights": vgg_weights,
        "protocol": {**evaluate.PROTOCOL, **PROTOCOL,
                     "std": "sample standard deviation over seeds (ddof 1); 0 for one seed or a deterministic "
                            "method", "delta_vs_input": "method mean minus the input's"},
    }


# --------------------------------------------------------------------------------------------------- reporting

# "closer to the target camera" as a higher number, per no-reference column (PROTOCOL["rank_agreement"]); a row's
# NIQE is read by no_reference.niqe_rank_key (outputs with every patch flat: farthest, -inf here)
CLOSER_IS_HIGHER = {"niqe_set": lambda v: -v, "color_distance": lambda v: -v,
                    "noise_log2_ratio": lambda v: -abs(v), "sharpness_log2_ratio": lambda v: -abs(v)}
# The full-reference metrics the no-reference ranking is compared with: PSNR (the done-when's) and the two
# structural ones; how much these agree among themselves is reported beside, for scale.
RANK_REFERENCES = ("psnr_mean", "ssim_rgb_mean", "ms_ssim_mean")


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation: the Pearson correlation of the average ranks (ties share their mean rank).
    None with fewer than 3 pairs or a constant side (no ranking to compare)."""
    from scipy.stats import rankdata
    if len(x) < 3:
        return None
    rx, ry = rankdata(x), rankdata(y)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _closer(row: dict, key: str) -> float | None:
    value = no_reference.niqe_rank_key(row) if key == "niqe_set" else row.get(key)
    return None if value is None else CLOSER_IS_HIGHER[key](value)


def _rho(rows: Sequence[dict], reference: str, value) -> float | None:
    """Spearman between each row's ``reference`` metric and ``value(row)``, over the rows that have both."""
    pairs = [(r[reference], v) for r in rows if r.get(reference) is not None and math.isfinite(r[reference])
             and (v := value(r)) is not None]
    return spearman([p[0] for p in pairs], [p[1] for p in pairs])


def rank_agreement(methods: dict, seeds: Sequence[int], *, oracles: bool = False,
                   reference: str = "psnr_mean") -> dict:
    """``{"per_seed": {seed: {column: rho}}, "pooled": {column: rho}, "n": {...}}``: Spearman between each
    row's ``reference`` metric (PSNR by default) and each :data:`NO_REFERENCE` column made "closer is higher"
    (:func:`_closer`). A seed's rows: every deterministic method's one scoring and each trained preset's run of
    that seed; pooled: every scoring once. The oracle rows (bounds that read the test photos' cameras, not
    methods) count only with ``oracles``. A row without the column (or the reference) is left out of that
    column."""
    def rows_of(seed):
        return [r for m in methods.values() for r in m["per_seed"] if oracles or m["kind"] != "oracle"
                if m["kind"] != "trained" or seed is None or r["seed"] == seed]

    def rhos(rows):
        return {key: _rho(rows, reference, lambda r, key=key: _closer(r, key)) for key in CLOSER_IS_HIGHER}

    groups = {str(s): rows_of(s) for s in seeds}
    pooled = rows_of(None)
    return {"per_seed": {s: rhos(rows) for s, rows in groups.items()}, "pooled": rhos(pooled),
            "n": {**{s: len(rows) for s, rows in groups.items()}, "pooled": len(pooled)}}


def rank_agreement_resampled(methods: dict, target: no_reference.TargetModel,
                             resamples: int = likeness_resampling.RESAMPLES) -> dict | None:
    """How much the pooled niqe_set~PSNR agreement of :func:`rank_agreement` owes to the few photos: Spearman
    recomputed in each resample of :mod:`wespe.evaluation.likeness_resampling` (every test photo and every target
    photo weighted Exp(1); a row's PSNR the weighted mean of its photos' PSNRs, its NIQE distance over its
    reweighted patches to the reweighted target; the same photo weighted alike in every row), and PSNR~SSIM
    recomputed alike for scale. ``{"niqe_set": {"median", "low", "high", "share_at_least_0.8"}, "psnr~ssim":
    ..., "resamples", "rows"}``; None without the rows' moments (results read back) or a target model."""
    rows = [r for m in methods.values() if m["kind"] != "oracle" for r in m["per_seed"]]
    if target.moments is None or not rows or all(r.get(MOMENTS_KEY) is None for r in rows):
        return None
    sets = {i: r[MOMENTS_KEY] for i, r in enumerate(rows) if r.get(MOMENTS_KEY) is not None and len(r[MOMENTS_KEY])}
    flat = [i for i, r in enumerate(rows) if r.get("niqe_all_flat")]
    distances = likeness_resampling.resample_distances(sets, target.moments, seed=target.seed,
                                                       resamples=resamples, flat=flat)
    photos = tuple(sorted({p["name"] for r in rows for p in r["per_image"]}))
    weights = likeness_resampling.photo_weights(photos, target.seed, resamples)
    per_image = {k: np.array([[{p["name"]: p[k] for p in r["per_image"]}.get(n, np.nan) for n in photos]
                              for r in rows]) for k in ("psnr", "ssim_rgb")}
    rhos = {"niqe_set": [], "psnr~ssim": []}
    for b in range(resamples):
        mean = {k: np.nansum(v * weights[b], axis=1) / np.sum(np.where(np.isnan(v), 0, weights[b]), axis=1)
                for k, v in per_image.items()}
        closer = [-distances[i][b] if i in distances else None for i in range(len(rows))]
        pairs = [(p, c) for p, c in zip(mean["psnr"], closer) if c is not None and not np.isnan(c)]
        rhos["niqe_set"].append(spearman([p for p, _ in pairs], [c for _, c in pairs]))
        rhos["psnr~ssim"].append(spearman(mean["psnr"], mean["ssim_rgb"]))

    def spread(values):
        v = np.array([x for x in values if x is not None], np.float64)
        if not len(v):
            return None
        low, high = np.percentile(v, [2.5, 97.5])
        return {"median": float(np.median(v)), "low": float(low), "high": float(high),
                "share_at_least_0.8": float(np.mean(v >= 0.8 - 1e-9))}  # rho of 4 rows is 0.8 as 0.79999...

    return {"niqe_set": spread(rhos["niqe_set"]), "psnr~ssim": spread(rhos["psnr~ssim"]), "resamples": resamples,
            "rows": len(rows), "protocol": likeness_resampling.PROTOCOL}


def _without_moments(results: dict) -> dict:
    """``results`` with its scorings' patch moments (working data for :func:`rank_agreement_resampled`, not
    results) left out: what results.json holds."""
    methods = {name: {**m, "per_seed": [{k: v for k, v in r.items() if k != MOMENTS_KEY} for r in m["per_seed"]]}
               for name, m in results["methods"].items()}
    return {**results, "methods": methods}


def reference_agreement(methods: dict) -> dict:
    """Spearman between PSNR and each other :data:`RANK_REFERENCES` metric over every scoring of the methods (the
    pooled rows of :func:`rank_agreement`): how much the full-reference metrics agree among themselves."""
    rows = [r for m in methods.values() if m["kind"] != "oracle" for r in m["per_seed"]]
    return {f"psnr_mean~{ref}": _rho(rows, "psnr_mean", lambda r, ref=ref: r.get(ref)) for ref in RANK_REFERENCES[1:]}


def rank_agreement_lines(results: dict) -> list[str]:
    """Markdown lines: the Spearman numbers of :func:`rank_agreement` (nothing for results without them)."""
    agreement = results.get("no_reference", {}).get("rank_agreement")
    if not agreement:
        return []

    def line(label, rhos, n):
        return (f"- {label} ({n} rows): " + ", ".join(f"{k} {_f(v, 3, sign=True)}" for k, v in rhos.items()))

    lines = ["\n## Rank agreement: PSNR vs no-reference likeness to the target photos\n",
             "Spearman rank correlation across methods between PSNR and each no-reference column, signed so "
             "that +1 means \"the closer to the target photos, the higher the PSNR\" (NIQE distance and colour "
             "distance: lower is closer; noise and sharpness: log2 ratio nearer 0 is closer). The methods: the "
             "input, the baselines and the trained presets (niqe_set is the ranking launch/sweep.py uses without "
             "references).\n"]
    lines += [line(f"seed {s}", rhos, agreement["n"][s]) for s, rhos in agreement["per_seed"].items()]
    lines.append(line("pooled", agreement["pooled"], agreement["n"]["pooled"]))
    n = agreement["n"]["pooled"]
    for ref, rhos in (results["no_reference"].get("rank_agreement_by_reference") or {}).items():
        lines.append(line(f"pooled, against {ref} instead of PSNR", rhos, n))
    with_oracles = results["no_reference"].get("rank_agreement_with_oracles")
    if with_oracles:
        lines.append(line("pooled, with the oracle rows", with_oracles["pooled"], with_oracles["n"]["pooled"]))
    between = results["no_reference"].get("reference_agreement")
    if between:
        lines.append(f"\nFor scale, the full-reference metrics among themselves over the same {n} rows: " + ", ".join(
            f"{k} {_f(v, 3, sign=True)}" for k, v in between.items()) + ".")
    resampled = results["no_reference"].get("rank_agreement_resampled")
    if resampled and resampled.get("niqe_set"):
        def spread(v):
            return (f"median {_f(v['median'], 3, sign=True)} (95 % range {_f(v['low'], 2, sign=True)} to "
                    f"{_f(v['high'], 2, sign=True)}; at least +0.8 in {v['share_at_least_0.8']:.0%})")
        lines.append(f"\nWith the photos resampled ({resampled['resamples']} resamples: every test photo and every "
                     f"target photo weighted Exp(1), each row's PSNR the weighted mean of its photos', "
                     f"wespe/evaluation/likeness_resampling.py), the pooled niqe_set agreement is "
                     f"{spread(resampled['niqe_set'])}, and PSNR~SSIM {spread(resampled['psnr~ssim'])}: how much "
                     f"of the numbers above the few photos decide.")
    clean = results["no_reference"].get("clean")
    if clean:
        lines.append("\nThe clean test photos themselves (what a perfect method would score): " + ", ".join(
            f"{k} {_f(v, 3)}" for k, v in clean.items()) + ".")
    return lines


def _f(value, digits=2, sign=False) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def summary_table(results: dict) -> str:
    """The Markdown table of :func:`run_benchmark`'s results: one row per method; the clean photos' noise level
    in the noise column's header. Results written before the detail / noise columns existed show "-" there."""
    clean_noise = results.get("clean", {}).get("noise_mean")
    header = ["method", "PSNR (dB)", "ΔPSNR", "SSIM", "ΔSSIM", "MS-SSIM", "detail PSNR (dB)",
              f"noise (clean {_f(clean_noise)})", "entropy", "NIQE→target", "colour→target", "noise log2/target",
              "sharpness log2/target", "seeds", "steps", "train min"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, m in results["methods"].items():
        mean, std, delta = m["mean"], m["std"], m["delta_vs_input"]
        steps = sorted({r["steps"] for r in m["per_seed"] if r["steps"] is not None})
        minutes = mean["train_minutes"]
        row = [name, f"{_f(mean['psnr_mean'])} ± {_f(std['psnr_mean'])}", _f(delta["psnr_mean"], sign=True),
               f"{_f(mean['ssim_rgb_mean'], 4)} ± {_f(std['ssim_rgb_mean'], 4)}",
               _f(delta["ssim_rgb_mean"], 4, sign=True), _f(mean["ms_ssim_mean"], 4),
               _f(mean.get("detail_psnr_mean")), _f(mean.get("noise_mean")), _f(mean["entropy_mean"], 3),
               _f(mean.get("niqe_set"), 3), _f(mean.get("color_distance"), 4),
               _f(mean.get("noise_log2_ratio"), 2, sign=True), _f(mean.get("sharpness_log2_ratio"), 2, sign=True),
               str(m["n"]) if m["kind"] == "trained" else "-", ",".join(map(str, steps)) or "-",
               f"{_f(minutes, 1)} ± {_f(std['train_minutes'], 1)}" if minutes is not None else "-"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    split = results["split"]
    parts = [
        "# Quality benchmark on public real photos\n",
        f"Rerun: `{results['command']}`\n",
        f"Held-out test photos (whole images, degraded by a camera drawn per photo): {', '.join(split['test'])}. "
        f"Training: {', '.join(split['train'])}, each cut in two halves across its width, one half per side "
        f"(alternating which): source the degraded halves, target the other halves clean; no pixel is on both "
        f"sides. "
        f"Mean over the test photos; ± is the std over seeds. PSNR: mean per image; SSIM on RGB; Δ: vs input. "
        f"Detail PSNR: PSNR of the fine detail (x minus its Gaussian blur, sigma 2) against the clean photo's; "
        f"higher is closer. Noise: the output's luma noise std (Immerkær's estimator, 8-bit units), to compare "
        f"with the clean photos' own in the header: above it, noise is left; below it, texture is smoothed "
        f"away. Rows named oracle_* are not methods: they read each test photo's true camera (the colour start "
        f"denoised at the camera's noise level; the inverse of the camera family's centre colour, of the photo's "
        f"own colour, then a denoiser at its true noise level), "
        f"so the steps from {COLOUR_START} down to them show how much of what is left is set-level colour, "
        f"per-photo colour and noise. "
        f"The →target columns read no reference: the outputs' distance to the clean target-side training photos "
        f"(wespe.evaluation.no_reference: NIQE-style distance, colour SW2 distance, log2 of the noise and "
        f"sharpness ratios; "
        f"0 is the target camera's).\n",
        summary_table(results),
        *rank_agreement_lines(results),
        "\n## Photos\n",
    ]
    parts += [f"- `{name}` ({p['call']}): {p['licence']}" for name, p in results["photos"].items()]
    return "\n".join(parts) + "\n"


def _centre_crop(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    y, x = (h - side) // 2, (w - side) // 2
    return image[y:y + side, x:x + side]


def _label_strip(labels: list[str], width: int, gap: int) -> np.ndarray:
    from PIL import ImageDraw
    strip = Image.new("RGB", (len(labels) * width + (len(labels) - 1) * gap, 14), "white")
    draw = ImageDraw.Draw(strip)
    for j, label in enumerate(labels):
        while len(label) > 1 and draw.textlength(label) > width - 4:
            label = label[:-1]
        draw.text((j * (width + gap) + 2, 1), label, fill="black")
    return np.asarray(strip)


def save_grid(outputs: dict[str, str], data: BenchmarkData, path: str | Path, crop: int = GRID_CROP) -> Path:
    """One row per test photo, the same centre crop in every column: input | each method of ``outputs``
    (method -> folder of PNGs named as the test photos) | clean reference; a label strip on top."""
    from wespe.training import visualize
    names = sorted(p.name for p in Path(data.test_clean).glob("*.png"))
    clean = [np.asarray(Image.open(Path(data.test_clean) / n).convert("RGB")) for n in names]
    side = min([crop] + [min(c.shape[:2]) for c in clean])
    columns, labels = [], []
    for label, folder in list(outputs.items()) + [("clean", data.test_clean)]:
        crops = [_centre_crop(np.asarray(Image.open(Path(folder) / n).convert("RGB")), side) for n in names]
        columns.append(np.stack(crops).astype(np.float32) / 255)
        labels.append(label)
    grid = visualize.image_grid(columns)
    grid = np.concatenate([_label_strip(labels, side, 2), grid])
    path = Path(path)
    visualize.save_png(grid, path)
    return path
