"""The training loop: folders of photos in, checkpoints, logs and pictures out.

Order of work, so that every user error surfaces before anything compiles: config check -> data scan ->
VGG weights -> resume check (saved config vs this one) -> state (fresh or restored) -> compile -> steps.

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
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from wespe import color_map, degradation, errors, parallel, train_step
from wespe import config as configs
from wespe.atomic_write import atomic_write
from wespe.checkpoint import Checkpointer, CheckpointError, CheckpointMismatchError
from wespe.config import RESUME_SAFE_KEYS, validate
from wespe.errors import UserError
from wespe.inference.export import save_generator
from wespe.models import inference_view
from wespe.training import color_pool, data, heldout, scan, visualize
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


def check_folders(config: ml_collections.ConfigDict) -> None:
    """The folder settings' mistakes that can be found without writing anything (before the workdir is made)."""
    d = config.data
    for key in ("source", "target", "heldout", "heldout_reference", "dped_root"):
        if d[key]:
            scan.check_folder(d[key], f"--{key}" if key in ("source", "target") else f"--config.data.{key}")
    if d.dped_root and (d.source or d.target):  # one would be silently ignored
        raise scan.DataError("give either --source/--target or --config.data.dped_root (the DPED layout), "
                                  "not both")
    if d.heldout_reference and not d.heldout:
        raise scan.DataError("--config.data.heldout_reference needs --config.data.heldout (the photos the "
                                  "references belong to)")
    if d.builtin and bool(d.source) != bool(d.target):
        raise scan.DataError("give both --source and --target to train the built-in config on your own "
                                  "folders (only one was given)")
    if d.builtin and d.builtin != "demo":
        raise scan.DataError(f"--config.data.builtin={d.builtin!r}: the only built-in data set is 'demo'")


def trains_on_builtin_demo(config: ml_collections.ConfigDict) -> bool:
    """Whether the run trains on the built-in demo photos: ``data.builtin='demo'`` without ``--source`` and
    ``--target`` (given both, the demo's recipe trains on those folders instead)."""
    return config.data.builtin == "demo" and not config.data.source


def resolve_folders(config: ml_collections.ConfigDict, workdir: Path) -> tuple[str, str, str, str | None]:
    """The source, target, held-out and held-out reference folders from flags/config, the DPED layout, or the
    built-in demo. ``--source`` and ``--target`` (both) win over ``data.builtin``: the demo's recipe then trains
    on the user's folders (with their own held-out folder, if any)."""
    check_folders(config)
    d = config.data
    if trains_on_builtin_demo(config):
        from wespe.training import demo
        source, target = demo.prepare(workdir / "demo_data", seed=config.seed)
        if d.heldout:
            return source, target, d.heldout, d.heldout_reference
        return source, target, str(workdir / "demo_data" / "heldout" / "degraded"), str(
            workdir / "demo_data" / "heldout" / "clean")
    if d.dped_root:
        source, target = (str(p) for p in scan.dped_folders(d.dped_root, d.dped_phone))
    elif not d.source or not d.target:
        raise scan.DataError("both --source and --target folders are needed (or --config.data.dped_root, "
                                  "or --config=experiments/demo.py for the built-in demo)")
    else:
        source, target = d.source, d.target
    return source, target, d.heldout or source, d.heldout_reference


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


def rewind_metrics(path: Path, step: int) -> int:
    """Drop the lines of ``metrics.jsonl`` logged after ``step`` (and a torn last line), atomically. Returns how
    many lines were dropped; a missing file is left missing."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            logged = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            logged = None  # torn by a kill mid-write
        if logged is not None and logged <= step:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        with atomic_write(path) as f:
            f.write("".join(kept).encode())
        logger.info("metrics.jsonl: dropped %d line(s) logged after step %d by the interrupted run", dropped, step)
    return dropped


class _Writers:
    """metrics.jsonl, TensorBoard and sample PNGs, written by process 0 only."""

    def __init__(self, workdir: Path, enabled: bool, start_step: int = 0):
        """``start_step``: the step training (re)starts from; lines and events logged after it by an earlier,
        interrupted process are dropped, so a resumed run's logs read as one uninterrupted run's."""
        self.enabled = enabled
        if not enabled:
            return
        (workdir / "samples").mkdir(parents=True, exist_ok=True)
        rewind_metrics(workdir / "metrics.jsonl", start_step)
        self.jsonl = open(workdir / "metrics.jsonl", "a")
        from tensorboardX import SummaryWriter
        # purge_step: TensorBoard hides the events at and after it that earlier writers left in the log folder
        self.tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        self.samples = workdir / "samples"

    def scalars(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, "time": round(time.time(), 3), **metrics}) + "\n")
        self.jsonl.flush()
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)

    def grid(self, step: int, grid: np.ndarray) -> Path | None:
        if not self.enabled:
            return None
        path = self.samples / f"step_{step}.png"
        visualize.save_png(grid, path)
        self.tb.add_image("samples", grid, step, dataformats="HWC")
        self.tb.flush()
        return path

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()


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
    check_folders(config)  # before anything is written
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
    """Whether the run got as far as its training loop: :class:`_Writers` creates ``samples/`` just before."""
    return (workdir / "samples").exists()


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


def build_color_pools(config: ml_collections.ConfigDict, source: str, target: str) -> dict:
    """The run's colour pools (``wespe.training.color_pool.build_color_pools``), with the band-pass contrast where its
    colour estimator needs it."""
    return color_pool.build_color_pools(source, target, photos=config.color_pool_photos, seed=config.seed,
                                        band=train_step.colour_estimator(config) == "bandpass")


def fitted_degradation(config: ml_collections.ConfigDict, workdir: Path, source: str, target: str, report,
                       color_pools: dict | None, is_writer: bool) -> degradation.Degradation | None:
    """The source camera's degradation for ``weights.restoration`` (None when that term is off): the one saved in
    ``workdir/degradation.json`` by this run's start (a resumed run trains on the same camera model), else fitted
    to crops of the two training sets (:func:`wespe.degradation.fit`), with ``config.degradation``'s fixed values
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
    fitted, record = fit_degradation(config, report["source"]["used"], report["target"]["used"], matrix, bias)
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


def _train(config: ml_collections.ConfigDict, workdir: Path, is_writer: bool) -> RunResult:
    layout = parallel.Layout(parallel.make_mesh(config.mesh))
    layout.check_batch(config.batch_size)
    source, target, sample_folder, reference_folder = resolve_folders(config, workdir)
    paired = config.mode == "dped" if config.data.paired is None else bool(config.data.paired)
    iterator, report = data.make_train_iterator(
        source, target, paired=paired, patch_size=config.patch_size, global_batch_size=config.batch_size,
        seed=config.seed, flips=config.data.flips, rot90=config.data.rot90,
        process_index=jax.process_index(), process_count=jax.process_count(),
        cache_max_bytes=config.data.cache_max_bytes, workdir=workdir if is_writer else None)
    logger.info(parallel.describe(layout))  # after the data scan: a user error there is the only line printed
    logger.info(report.summary_line())
    vgg_weights, preprocessing = train_step.load_content_network(config)

    config_dict = json.loads(config.to_json_best_effort())
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    start = 0
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
    if latest is not None:
        iterator.set_state(data.iterator_state_from_json(meta["data_state"]))
        start = int(state.step)
        logger.info("resumed %s at step %d", workdir, start)
        if meta.get("data_fingerprint") not in (None, report["fingerprint"]):
            logger.warning("the usable files in the data folders changed since step %d was saved: the data stream "
                           "resumes at the same position of a different file list (not bit-identical)", start)
    if is_writer:
        (workdir / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")

    step_pools = train_step.uses_color_pools(config)
    color_pools = None
    if step_pools or (start == 0 and config.color_init != "identity"):
        color_pools = build_color_pools(config, source, target)
        if start == 0:  # a resumed run has the colour path it trained
            state = train_step.init_global_color(state, config, color_pools)
    fitted = fitted_degradation(config, workdir, source, target, report, color_pools, is_writer)
    step_fn = train_step.make_train_step(config, graphdefs, vgg_weights, preprocessing, layout,
                                    color_pools if step_pools else None, degradation=fitted)
    def usable(folder: str) -> str | list[str]:
        """A training folder as the list of its usable files (the data report already named the bad ones)."""
        for side in ("source", "target"):
            if Path(folder).resolve() == Path(report[side]["folder"]).resolve():
                return report[side]["used"]
        return folder

    sample_crops = data.fixed_eval_crops(usable(sample_folder), config.num_sample_crops, config.patch_size,
                                         seed=config.seed)
    target_mean = data.fixed_eval_crops(report["target"]["used"], 16, config.patch_size,
                                        seed=config.seed + 1).reshape(-1, 3).mean(0)
    # Quality in the loop: larger fixed crops of the held-out photos (and of their references, if given).
    quality_x, quality_ref = heldout.paired_crops(sample_folder, reference_folder, QUALITY_CROPS,
                                                  max(config.patch_size, QUALITY_CROP), seed=config.seed,
                                                  min_size=config.patch_size)
    try:
        quality_target = data.fixed_eval_crops(report["target"]["used"], QUALITY_CROPS, quality_x.shape[1],
                                               seed=config.seed + 2)
    except scan.DataError:  # every target photo is smaller than the crops: no colour distance to log
        quality_target = None
    writers = _Writers(workdir, is_writer, start)
    base_key = jax.random.key(config.seed)

    def save(step: int) -> None:
        checkpointer.save(step, state, {"config": config_dict, "data_state": data.iterator_state_to_json(
            iterator.get_state()), "data_fingerprint": report["fingerprint"], "seed": config.seed,
            "saved_at": time.time()})

    def samples(step: int, measure: bool = True) -> dict:
        """The sample grid, the collapse checks and (``measure``) the held-out quality numbers of this step."""
        generators = _host_generators(state, graphdefs)  # every process: it may all-gather
        if not is_writer:
            return {}
        columns = _sample(generators, sample_crops)
        path = writers.grid(step, visualize.image_grid(columns))
        for warning in visualize.collapse_warnings(columns[0], columns[1], target_mean):
            logger.warning("step %d: %s", step, warning)
        if path is not None:
            logger.info("samples: %s", path)
        if not measure:
            return {}
        enhanced = np.asarray(inference_view(generators["generator"])(jnp.asarray(quality_x)))
        quality = heldout.quality_metrics(quality_x, enhanced, quality_ref, quality_target)
        warning = heldout.regression_warning(quality)
        if warning:
            logger.warning("step %d: %s", step, warning)
        elif "quality/psnr_enhanced" in quality:
            logger.info("step %d: held-out PSNR %.2f dB (input %.2f), SSIM %.4f (input %.4f)", step,
                        quality["quality/psnr_enhanced"], quality["quality/psnr_input"],
                        quality["quality/ssim_enhanced"], quality["quality/ssim_input"])
        return quality

    status, host = "finished", {}
    step = start
    bar = tqdm(total=config.num_steps, initial=start, unit="step", disable=not is_writer, dynamic_ncols=True)
    try:
        with _StopFlag() as stop:
            t_last, n_last = time.perf_counter(), start
            while step < config.num_steps:
                batch = layout.global_batch(next(iterator))
                state, metrics = step_fn(state, batch, jax.random.fold_in(base_key, step))
                step += 1
                host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                _check_finite(host, step)
                bar.update(1)
                now = time.perf_counter()
                if now - t_last > 1.0 or step == config.num_steps:
                    rate = (step - n_last) / (now - t_last)
                    bar.set_postfix({"img/s": f"{rate * config.batch_size:.1f}", "G": f"{host['loss/generator']:.3g}",
                                     "content": f"{host['loss/content']:.3g}",
                                     "D_t acc": f"{host['accuracy/texture_discriminator']:.2f}"})
                    t_last, n_last = now, step
                # Held-out quality every sample_every steps (not at a run's last step unless it falls there, so
                # a resumed run logs exactly the lines of an uninterrupted one), in the same line as the losses.
                quality = samples(step) if step % config.sample_every == 0 else {}
                if quality or step % config.log_every == 0 or step == config.num_steps:
                    writers.scalars(step, {**host, **quality})
                if parallel.any_process(stop.signal is not None):  # all processes save together
                    logger.warning("%s received: saving a checkpoint at step %d and exiting",
                                   stop.signal or "a stop signal on another process", step)
                    save(step)
                    status = "preempted"
                    break
                if step % config.checkpoint_every == 0 and step < config.num_steps:
                    save(step)
            if status == "finished":
                if checkpointer.latest_step() != step:
                    save(step)
                if step % config.sample_every != 0:  # else this step's grid exists already
                    samples(step, measure=False)
                final_generator = _host_generators(state, graphdefs)["generator"]
                if is_writer:
                    path = save_generator(final_generator, workdir / "generator.npz")
                    logger.info("exported the generator to %s (wespe.load_generator)", path)
    finally:
        bar.close()
        checkpointer.wait()
        checkpointer.close()
        writers.close()
    if status == "finished" and is_writer:
        host.update(_demo_report(config, final_generator, workdir))
    return RunResult(status, step, host, workdir)


def _demo_report(config: ml_collections.ConfigDict, generator, workdir: Path) -> dict:
    """The built-in demo's end-of-run report (demo_result.json, demo_grid.png: its held-out cat against the clean
    original), and its numbers. Only the built-in photos have that cat: the demo config trained on the user's
    folders ends as every other config does, its held-out quality logged as quality/* while it trained."""
    if config.data.builtin != "demo":
        return {}
    if not trains_on_builtin_demo(config):
        logger.info("no demo_result.json / demo_grid.png: that report is on the built-in demo's held-out photo; "
                    "trained on --source/--target, held-out quality is in metrics.jsonl as quality/* (crops of "
                    "--config.data.heldout, else of the source folder; PSNR / SSIM with "
                    "--config.data.heldout_reference)")
        return {}
    from wespe.training import demo
    return demo.evaluate(generator, workdir)
