"""The training loop: folders of photos in, checkpoints, logs and pictures out.

Order of work, so that every user error surfaces before anything compiles: config check -> folder flags
(:func:`wespe.training.folders.check_folders`, once) -> workdir lock -> folders resolved -> data scan (once; its
usable files are what the pipeline, the colour pools, the degradation fit and the held-out crops read) -> VGG
weights -> resume check (saved config vs this one) -> state (fresh or restored) -> compile -> steps. Logs and
sample PNGs are :mod:`wespe.training.metrics_log`'s.

Every step: NaN/inf check on the host (a bad loss stops the run naming the term and step; the last good
checkpoint stays). Every ``log_every``: metrics.jsonl and TensorBoard. Every ``sample_every``: a sample grid
and the collapse checks. Every ``checkpoint_every``, at the end, and on SIGTERM / Ctrl-C: a checkpoint
holding every network, both optimizers, the step and the data iterator position, so a resumed run is
bit-identical on CPU to one never interrupted. Process 0 writes logs and pictures; every process saves its
checkpoint shards.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from wespe import color_map, degradation, errors, parallel, train_step
from wespe import config as configs
from wespe.checkpoint import Checkpointer, CheckpointError, CheckpointMismatchError
from wespe.config import RESUME_SAFE_KEYS, validate
from wespe.errors import UserError
from wespe.inference.export import save_generator
from wespe.models import inference_view
from wespe.training import color_pool, data, folders, heldout, metrics_log, scan, visualize
from wespe.training.lock import WorkdirLock

logger = logging.getLogger(__name__)


class TrainingDiverged(errors.Diverged):
    """A loss became NaN or infinite."""


class ConfigChangedError(UserError):
    """Resuming a workdir with a different config."""


@dataclass
class RunResult:
    status: str  # "finished" or "preempted"
    step: int
    metrics: dict
    workdir: Path


def _newest_with_metadata(checkpointer: Checkpointer, steps: list[int], unreadable: list
                          ) -> tuple[int | None, dict | None]:
    """The first of ``steps`` (newest first) whose metadata reads back with what resuming needs, and that
    metadata; the others are added to ``unreadable`` with the reason."""
    for step in steps:
        try:
            meta = checkpointer.metadata(step)
        except CheckpointError as e:
            unreadable.append((step, str(e)))
            continue
        missing = [k for k in ("config", "data_state") if k not in meta]
        if missing:
            unreadable.append((step, f"its metadata lacks {', '.join(missing)}"))
            continue
        return step, meta
    return None, None


def _check_same_config(checkpointer: Checkpointer, saved_meta: dict, config, config_dict: dict, workdir: Path
                       ) -> None:
    saved_config = json.loads(configs.from_saved(saved_meta["config"]).to_json_best_effort())
    diff = _config_diff(saved_config, config_dict)
    if diff and not config.allow_config_change:
        checkpointer.close()
        raise ConfigChangedError(
            f"{workdir} holds a run with a different config ({'; '.join(diff)}). Use a new --workdir, or pass "
            f"--config.allow_config_change=True to resume with the new values.")


def _set_aside_unreadable(checkpointer: Checkpointer, unreadable: list[tuple[int, str]], restored: int | None,
                          workdir: Path, is_writer: bool) -> None:
    """Checkpoints that cannot be read back (a truncated file, a disk that filled up, bit rot): with an intact
    older one, they are moved to ``<workdir>/unreadable_checkpoints/`` (kept to inspect, out of the way of the
    steps about to be saved again) and the run resumes from it; with none, a UserError says what to remove."""
    problems = "; ".join(f"step {step}: {why}" for step, why in unreadable)
    if restored is None:
        checkpointer.close()
        raise UserError(
            f"no checkpoint in {checkpointer.directory} can be read back ({problems}). To start this run again "
            f"from step 0, move that folder away (or use a new --workdir)")
    moved = []
    if is_writer:
        moved = [checkpointer.set_aside(step, workdir / "unreadable_checkpoints") for step, _ in unreadable]
    parallel.sync("set aside unreadable checkpoints")
    if not is_writer:
        checkpointer.reload()
    for (step, why), dest in zip(unreadable, moved or [None] * len(unreadable)):
        logger.warning("checkpoint step %d cannot be read back (%s)%s; resuming from step %d, the newest intact one",
                       step, why, f"; moved it to {dest}" if dest else "", restored)


def _config_diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(saved) | set(current))
    out = []
    for k in keys:
        name = prefix + k
        a, b = saved.get(k, "<absent>"), current.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, name + ".")
        elif a != b and name not in RESUME_SAFE_KEYS:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def _check_finite(metrics: dict, step: int) -> None:
    bad = [k for k, v in metrics.items() if not np.isfinite(v)]
    if bad:
        raise TrainingDiverged(f"step {step}: non-finite {', '.join(bad)} "
                               f"({', '.join(f'{k}={metrics[k]}' for k in bad)}); the last good checkpoint is kept")


class _StopFlag:
    """SIGTERM (preemption) and Ctrl-C ask the loop to save and exit cleanly after the current step."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _host_generators(state: train_step.TrainState, graphdefs: dict) -> dict:
    """The generators as NNX modules holding NumPy copies of their (possibly sharded, multi-host) weights.

    Every process must call it (it may all-gather); the modules then run locally, e.g. on process 0 only.
    """
    names = [n for n in train_step.GENERATORS["wespe"] if n in state.params]
    # G's moving average when the run keeps one: it is what samples, the export and evaluation use.
    host = parallel.to_host({n: (train_step.inference_params(state, n), state.batch_stats[n]) for n in names})
    return {n: nnx.merge(graphdefs[n], *host[n]) for n in names}


def _sample(generators: dict, crops: np.ndarray) -> list[np.ndarray]:
    enhanced = np.asarray(inference_view(generators["generator"])(jnp.asarray(crops)))
    columns = [crops, enhanced]
    if "inverse_generator" in generators:
        columns.append(np.asarray(inference_view(generators["inverse_generator"])(jnp.asarray(enhanced))))
    return columns


QUALITY_CROP = 128  # side of the held-out crops scored in the loop (at least the patch size)
QUALITY_CROPS = 8


def run_training(config: ml_collections.ConfigDict, workdir: str | Path) -> RunResult:
    """Train (or resume) in ``workdir`` as ``config`` says. Returns when finished or preempted."""
    validate(config)
    folders.check_folders(config)  # the one check of the folder flags, before anything is written
    workdir = Path(workdir)
    is_writer = jax.process_index() == 0
    created = _missing_folders(workdir)
    new_workdir = bool(created) or not any(workdir.iterdir())
    workdir.mkdir(parents=True, exist_ok=True)
    # One training process per workdir, refused before any data is scanned or anything compiled. Process 0
    # holds it for the whole multi-host run (the workdir is shared).
    lock = WorkdirLock(workdir).acquire() if is_writer else None
    try:
        return _train(config, workdir, is_writer)
    except UserError:
        if lock is not None and new_workdir and not _training_started(workdir):
            _leave_new_workdir_as_found(workdir, lock, created)
        raise
    finally:
        if lock is not None:
            lock.release()


def _missing_folders(workdir: Path) -> list[Path]:
    """The workdir and those of its parents that do not exist yet, innermost first; a UserError when the
    nearest one that exists is a file."""
    missing = []
    for path in (workdir, *workdir.parents):
        if path.exists():
            if not path.is_dir():
                raise UserError(f"--workdir {workdir}: {path} is a file, not a folder; give a folder for the run")
            break
        missing.append(path)
    return missing


def _training_started(workdir: Path) -> bool:
    """Whether the run got as far as its training loop: :class:`metrics_log.RunWriters` creates ``samples/`` just
    before."""
    return (workdir / metrics_log.SAMPLES).exists()


def _leave_new_workdir_as_found(workdir: Path, lock: WorkdirLock, created: list[Path]) -> None:
    """After a user error before training in a workdir that was new (missing or empty): removes what the run
    wrote there (the lock file, ``data_report.json``, ``config.json``, the demo's photos, the still empty
    ``checkpoints/``), and the folders it created if they are then empty, so that the corrected command starts
    on a fresh folder and no empty run is left behind."""
    lock.release(remove_if_created=True)
    for name in ("data_report.json", "config.json"):
        (workdir / name).unlink(missing_ok=True)
    shutil.rmtree(workdir / "demo_data", ignore_errors=True)  # generated by this run (workdir was new)
    for folder in [workdir / "checkpoints", *created]:
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone): leave it, and the folders above it
            if folder.exists():
                break


def build_color_pools(config: ml_collections.ConfigDict, source, target) -> dict:
    """The run's colour pools (``wespe.training.color_pool.build_color_pools``) of the ``source`` and ``target``
    photos (folders or file lists), with the band-pass contrast where its colour estimator needs it."""
    return color_pool.build_color_pools(source, target, photos=config.color_pool_photos, seed=config.seed,
                                        band=train_step.colour_estimator(config) == "bandpass")


def fitted_degradation(config: ml_collections.ConfigDict, workdir: Path, source, target, color_pools: dict | None,
                       is_writer: bool) -> degradation.Degradation | None:
    """The source camera's degradation for ``weights.restoration`` (None when that term is off): the one saved in
    ``workdir/degradation.json`` by this run's start (a resumed run trains on the same camera model), else fitted
    to crops of the ``source`` and ``target`` photos (the data scan's usable files; :func:`wespe.degradation.fit`)
    and the colour map of ``color_pools`` (built from them if None), with ``config.degradation``'s fixed values
    taking the place of fitted ones, and saved there."""
    if not train_step.uses_degradation(config):
        return None
    path = workdir / degradation.FIT_FILE
    if path.exists():
        fitted = degradation.load(path)
        logger.info("degradation (from %s): %s", path, fitted.describe())
        return fitted
    if color_pools is None:
        color_pools = build_color_pools(config, source, target)
    matrix, bias = color_map.fitted_colour_map(color_pools, train_step.colour_estimator(config), reverse=True)
    fitted, record = fit_degradation(config, source, target, matrix, bias)
    logger.info("degradation fitted to the training sets (%d crops a side): %s", config.degradation.fit_crops,
                fitted.describe())
    if is_writer:
        degradation.save(path, fitted, record)
    return fitted


def fit_degradation(config: ml_collections.ConfigDict, source, target, matrix: np.ndarray, bias: np.ndarray
                    ) -> tuple[degradation.Degradation, dict]:
    """:func:`wespe.degradation.fit` on ``config.degradation.fit_crops`` seeded crops a side of the ``source`` and
    ``target`` photos (folders or file lists), with ``matrix`` / ``bias`` the target -> source colour map and
    ``config.degradation``'s fixed values in place of fitted ones: the camera model a run trains on."""
    c = config.degradation
    size = min(config.patch_size, degradation.FIT_CROP)
    crops = [data.fixed_eval_crops(photos, c.fit_crops, size, seed=config.seed + 3 + i)
             for i, photos in enumerate((source, target))]
    fixed = {k: c[k] for k in ("blur_sigma", "noise_sigma", "jpeg_quality") if c[k] is not None}
    return degradation.fit(*crops, matrix, bias, seed=config.seed, fixed=fixed)


def _training_data(config: ml_collections.ConfigDict, run_folders: folders.RunFolders, workdir: Path,
                   is_writer: bool) -> tuple[data.grain.DatasetIterator, scan.DataReport]:
    """The one scan of the training folders, and the batches drawn from its usable files."""
    paired = config.mode == "dped" if config.data.paired is None else bool(config.data.paired)
    return data.make_train_iterator(
        run_folders.source, run_folders.target, paired=paired, patch_size=config.patch_size,
        global_batch_size=config.batch_size, seed=config.seed, flips=config.data.flips, rot90=config.data.rot90,
        process_index=jax.process_index(), process_count=jax.process_count(),
        cache_max_bytes=config.data.cache_max_bytes, workdir=workdir if is_writer else None)


def _restored_or_new_state(config: ml_collections.ConfigDict, config_dict: dict, layout: parallel.Layout,
                           checkpointer: Checkpointer, workdir: Path, iterator, report: scan.DataReport,
                           is_writer: bool) -> tuple[train_step.TrainState, dict, int]:
    """``(state, graphdefs, start step)``: the newest intact checkpoint of ``workdir`` restored (and the data
    iterator moved to its position), or a fresh state at step 0. A changed config is refused before the (slow)
    state is built; unreadable checkpoints are set aside."""
    unreadable: list[tuple[int, str]] = []  # (step, why) of checkpoints that cannot be read back
    candidates = checkpointer.all_steps()[::-1]  # newest first
    latest, saved_meta = _newest_with_metadata(checkpointer, candidates, unreadable)
    if latest is None and unreadable:  # none can be resumed: say so before the (slow) state is built
        _set_aside_unreadable(checkpointer, unreadable, None, workdir, is_writer)
    if latest is not None:
        _check_same_config(checkpointer, saved_meta, config, config_dict, workdir)
    state, graphdefs = train_step.create_train_state(config, layout)  # after the config check: building is slow
    while latest is not None:
        try:
            state, meta = checkpointer.restore(latest, like=state)
            break
        except CheckpointMismatchError:
            raise  # intact but another network: no older checkpoint of this run would match either
        except CheckpointError as e:
            unreadable.append((latest, str(e)))
            latest, _ = _newest_with_metadata(checkpointer, [s for s in candidates if s < latest], unreadable)
    if unreadable:
        _set_aside_unreadable(checkpointer, unreadable, latest, workdir, is_writer)
    if latest is None:
        return state, graphdefs, 0
    iterator.set_state(data.iterator_state_from_json(meta["data_state"]))
    start = int(state.step)
    logger.info("resumed %s at step %d", workdir, start)
    if meta.get("data_fingerprint") not in (None, report["fingerprint"]):
        logger.warning("the usable files in the data folders changed since step %d was saved: the data stream "
                       "resumes at the same position of a different file list (not bit-identical)", start)
    return state, graphdefs, start


class _Monitor:
    """The fixed crops the loop shows and measures G on: the sample grid's (of the held-out folder), larger
    held-out crops (and their references) for the quality numbers, and target crops for the colour distance
    and the collapse checks. A training folder is read through the data scan's usable files."""

    def __init__(self, config: ml_collections.ConfigDict, run_folders: folders.RunFolders, report: scan.DataReport):
        heldout_files = folders.usable_files(run_folders.heldout, report)
        target_files = report["target"]["used"]
        self.sample_crops = data.fixed_eval_crops(
            run_folders.heldout if heldout_files is None else heldout_files, config.num_sample_crops,
            config.patch_size, seed=config.seed)
        self.target_mean = data.fixed_eval_crops(target_files, 16, config.patch_size,
                                                 seed=config.seed + 1).reshape(-1, 3).mean(0)
        self.quality_x, self.quality_ref = heldout.paired_crops(
            run_folders.heldout, run_folders.heldout_reference, QUALITY_CROPS, max(config.patch_size, QUALITY_CROP),
            seed=config.seed, min_size=config.patch_size, files=heldout_files)
        try:
            self.quality_target = data.fixed_eval_crops(target_files, QUALITY_CROPS, self.quality_x.shape[1],
                                                        seed=config.seed + 2)
        except scan.DataError:  # every target photo is smaller than the crops: no colour distance to log
            self.quality_target = None

    def samples(self, generators: dict, writers: metrics_log.RunWriters, step: int, measure: bool) -> dict:
        """Write the sample grid, log the collapse checks and (``measure``) return the held-out quality numbers."""
        columns = _sample(generators, self.sample_crops)
        path = writers.grid(step, visualize.image_grid(columns))
        for warning in visualize.collapse_warnings(columns[0], columns[1], self.target_mean):
            logger.warning("step %d: %s", step, warning)
        if path is not None:
            logger.info("samples: %s", path)
        if not measure:
            return {}
        enhanced = np.asarray(inference_view(generators["generator"])(jnp.asarray(self.quality_x)))
        quality = heldout.quality_metrics(self.quality_x, enhanced, self.quality_ref, self.quality_target)
        warning = heldout.regression_warning(quality)
        if warning:
            logger.warning("step %d: %s", step, warning)
        elif "quality/psnr_enhanced" in quality:
            logger.info("step %d: held-out PSNR %.2f dB (input %.2f), SSIM %.4f (input %.4f)", step,
                        quality["quality/psnr_enhanced"], quality["quality/psnr_input"],
                        quality["quality/ssim_enhanced"], quality["quality/ssim_input"])
        return quality


@dataclass
class _Run:
    """A training run set up to step: what the loop reads and updates."""

    config: ml_collections.ConfigDict
    config_dict: dict
    workdir: Path
    is_writer: bool
    layout: parallel.Layout
    checkpointer: Checkpointer
    iterator: Any
    report: scan.DataReport
    state: train_step.TrainState
    graphdefs: dict
    step_fn: Callable
    monitor: _Monitor
    writers: metrics_log.RunWriters

    def save(self, step: int) -> None:
        self.checkpointer.save(step, self.state, {
            "config": self.config_dict, "data_state": data.iterator_state_to_json(self.iterator.get_state()),
            "data_fingerprint": self.report["fingerprint"], "seed": self.config.seed, "saved_at": time.time()})

    def samples(self, step: int, measure: bool = True) -> dict:
        """The sample grid, the collapse checks and (``measure``) the held-out quality numbers of this step."""
        generators = _host_generators(self.state, self.graphdefs)  # every process: it may all-gather
        if not self.is_writer:
            return {}
        return self.monitor.samples(generators, self.writers, step, measure)


def _train(config: ml_collections.ConfigDict, workdir: Path, is_writer: bool) -> RunResult:
    layout = parallel.Layout(parallel.make_mesh(config.mesh))
    layout.check_batch(config.batch_size)
    run_folders = folders.resolve_folders(config, workdir)
    iterator, report = _training_data(config, run_folders, workdir, is_writer)
    logger.info(parallel.describe(layout))  # after the data scan: a user error there is the only line printed
    logger.info(report.summary_line())
    vgg_weights, preprocessing = train_step.load_content_network(config)

    config_dict = json.loads(config.to_json_best_effort())
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    state, graphdefs, start = _restored_or_new_state(config, config_dict, layout, checkpointer, workdir, iterator,
                                                     report, is_writer)
    if is_writer:
        (workdir / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")

    source_files, target_files = report["source"]["used"], report["target"]["used"]
    step_pools = train_step.uses_color_pools(config)
    color_pools = None
    if step_pools or (start == 0 and config.color_init != "identity"):
        color_pools = build_color_pools(config, source_files, target_files)
        if start == 0:  # a resumed run has the colour path it trained
            state = train_step.init_global_color(state, config, color_pools)
    fitted = fitted_degradation(config, workdir, source_files, target_files, color_pools, is_writer)
    step_fn = train_step.make_train_step(config, graphdefs, vgg_weights, preprocessing, layout,
                                         color_pools if step_pools else None, degradation=fitted)
    monitor = _Monitor(config, run_folders, report)
    run = _Run(config, config_dict, workdir, is_writer, layout, checkpointer, iterator, report, state, graphdefs,
               step_fn, monitor, metrics_log.RunWriters(workdir, is_writer, start))
    return _run_steps(run, start)


def _progress(bar: tqdm, config: ml_collections.ConfigDict, host: dict, rate: float) -> None:
    bar.set_postfix({"img/s": f"{rate * config.batch_size:.1f}", "G": f"{host['loss/generator']:.3g}",
                     "content": f"{host['loss/content']:.3g}",
                     "D_t acc": f"{host['accuracy/texture_discriminator']:.2f}"})


def _run_steps(run: _Run, start: int) -> RunResult:
    """Step from ``start`` to ``config.num_steps`` (or to a stop signal), logging, sampling and checkpointing as
    the module docstring says; then the final checkpoint, grid and exported generator."""
    config = run.config
    base_key = jax.random.key(config.seed)
    status, host, final_generator = "finished", {}, None
    step = start
    bar = tqdm(total=config.num_steps, initial=start, unit="step", disable=not run.is_writer, dynamic_ncols=True)
    try:
        with _StopFlag() as stop:
            t_last, n_last = time.perf_counter(), start
            while step < config.num_steps:
                batch = run.layout.global_batch(next(run.iterator))
                run.state, metrics = run.step_fn(run.state, batch, jax.random.fold_in(base_key, step))
                step += 1
                host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                _check_finite(host, step)
                bar.update(1)
                now = time.perf_counter()
                if now - t_last > 1.0 or step == config.num_steps:
                    _progress(bar, config, host, (step - n_last) / (now - t_last))
                    t_last, n_last = now, step
                # Held-out quality every sample_every steps (not at a run's last step unless it falls there, so
                # a resumed run logs exactly the lines of an uninterrupted one), in the same line as the losses.
                quality = run.samples(step) if step % config.sample_every == 0 else {}
                if quality or step % config.log_every == 0 or step == config.num_steps:
                    run.writers.scalars(step, {**host, **quality})
                if parallel.any_process(stop.signal is not None):  # all processes save together
                    logger.warning("%s received: saving a checkpoint at step %d and exiting",
                                   stop.signal or "a stop signal on another process", step)
                    run.save(step)
                    status = "preempted"
                    break
                if step % config.checkpoint_every == 0 and step < config.num_steps:
                    run.save(step)
            if status == "finished":
                final_generator = _finish(run, step)
    finally:
        bar.close()
        run.checkpointer.wait()
        run.checkpointer.close()
        run.writers.close()
    if status == "finished" and run.is_writer:
        host.update(_demo_report(config, final_generator, run.workdir))
    return RunResult(status, step, host, run.workdir)


def _finish(run: _Run, step: int):
    """The finished run's last checkpoint and grid, and its generator exported; returns the generator."""
    if run.checkpointer.latest_step() != step:
        run.save(step)
    if step % run.config.sample_every != 0:  # else this step's grid exists already
        run.samples(step, measure=False)
    final_generator = _host_generators(run.state, run.graphdefs)["generator"]
    if run.is_writer:
        path = save_generator(final_generator, run.workdir / "generator.npz")
        logger.info("exported the generator to %s (wespe.load_generator)", path)
    return final_generator


def _demo_report(config: ml_collections.ConfigDict, generator, workdir: Path) -> dict:
    """The built-in demo's end-of-run report (demo_result.json, demo_grid.png: its held-out cat against the clean
    original), and its numbers. Only the built-in photos have that cat: the demo config trained on the user's
    folders ends as every other config does, its held-out quality logged as quality/* while it trained."""
    if config.data.builtin != "demo":
        return {}
    if not folders.trains_on_builtin_demo(config):
        logger.info("no demo_result.json / demo_grid.png: that report is on the built-in demo's held-out photo; "
                    "trained on --source/--target, held-out quality is in metrics.jsonl as quality/* (crops of "
                    "--config.data.heldout, else of the source folder; PSNR / SSIM with "
                    "--config.data.heldout_reference)")
        return {}
    from wespe.training import demo
    return demo.evaluate(generator, workdir)
