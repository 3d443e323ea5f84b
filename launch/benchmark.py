"""Speed benchmarks (wespe.evaluation.speed_benchmark) and the two training probes, JSON out.

--mode=train_step: images/s, median step time, compile time, XLA FLOPs, MFU, CPU user/sys time, device memory.
    python launch/benchmark.py --config.batch_size=30 --repeats=5 --out=bench.json
    python launch/benchmark.py --config=experiments/dped_paired.py --config.compute_dtype=bfloat16 --peak_tflops=989
--mode=scaling: the same per-device batch on 1, 2, 4, 8 devices (speedup, efficiency); on CPU, forced devices:
    python launch/benchmark.py --mode=scaling --devices=1,2,4,8 --per_device_batch=4 --num_cpu_devices=8
--mode=max_batch: the largest global batch whose step fits device memory (XLA's memory analysis, compile only),
    then --mode=train_step at that batch (on CPU give --memory_limit_gb):
    python launch/benchmark.py --mode=max_batch --config.compute_dtype=bfloat16
--mode=torch_ratio: the step next to the PyTorch reference (../shared/reference/, its own venv), per batch size,
    one after the other in one run, as a ratio (wespe seconds / PyTorch seconds):
    python launch/benchmark.py --mode=torch_ratio --batch_sizes=8,30 --torch_python=torchref/bin/python
--mode=suite: everything for a new accelerator in one JSON: the step in float32 and bfloat16 (MFU each), the largest
    bfloat16 batch and its step, weak scaling when there are several devices, and enhance at --megapixels:
    python launch/benchmark.py --mode=suite --config.batch_size=30 --megapixels=1,12,48 --out=gpu_suite.json
--mode=enhance: megapixels/s of whole-image and exact tiled inference vs image size, f32 and bf16, optionally next
    to the PyTorch reference generator's forward (its own venv) with each side's peak RSS:
    python launch/benchmark.py --mode=enhance --megapixels=1,4,12,48 --dtypes=float32,bfloat16 --tile=512
    python launch/benchmark.py --mode=enhance --megapixels=1,3 --tile=512 --tilings=staged,streamed \
        --torch_python=torchref/bin/python
--mode=texture_probe: the config's texture discriminator trained alone on the quality benchmark's source vs target
    photos (wespe.evaluation.texture_probe), its held-out accuracy every --eval_every steps, per --texture_inputs view:
    python launch/benchmark.py --mode=texture_probe --texture_inputs=gray,highpass \
        --config.discriminator.norm=none --config.discriminator.init=he --config.patch_size=100 --config.batch_size=8
--mode=restoration_probe: the config's generator trained alone to undo a degradation on crops of the quality benchmark's
    clean target photos, its colour path fixed at the colour start, scored on the whole held-out photos every
    --eval_every steps (wespe.evaluation.restoration_probe), per --restoration_degradations (fitted: the camera model
    fitted to the two sets, as weights.restoration trains; camera: the quality benchmark camera family's blur, noise and
    JPEG):
    python launch/benchmark.py --mode=restoration_probe --config=experiments/quality/wespe_restore.py \
        --config.batch_size=16 --config.optimizer.lr_generator=2e-3 --probe_steps=1200 --eval_every=200

Each convolution's CPU formulation (wespe.conv_tuning) is chosen as WESPE_CONV_CHOICE says (default: measured once
per machine, cached), or as --conv_choice says; the training modes list the choice per layer shape (stderr, and
"conv_choices" in the JSON). Measure them anew, or time the step with the built-in thresholds, side by side:
    python launch/benchmark.py --config.batch_size=8 --conv_choice=remeasure
    python launch/benchmark.py --config.batch_size=8 --conv_choice=heuristic

The training config is a file as in launch/train.py (default experiments/wespe_paper.py, overridable with
--config.<key>); VGG weights default to ``random`` (same FLOPs as the real network).
"""

import json
import os
import sys
from pathlib import Path

from wespe import host_malloc

# The training modes run as launch/train.py does (malloc: one arena, huge pages; a PyTorch reference inherits the
# setting), --mode=enhance as launch/enhance.py (host_malloc.tune, below).
_MODE = next((arg.split("=", 1)[1] for arg in sys.argv if arg.startswith("--mode=")),
             sys.argv[sys.argv.index("--mode") + 1] if "--mode" in sys.argv[:-1] else None)
if _MODE != "enhance":
    host_malloc.tune_for_training()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from wespe import cli, conv_tuning, parallel  # noqa: E402
from wespe.evaluation import speed_benchmark  # noqa: E402

_DEFAULT_CONFIG = str(Path(__file__).resolve().parent.parent / "experiments" / "wespe_paper.py")
_CONFIG = cli.define_config_flag(_DEFAULT_CONFIG, "Training config file.")
flags.DEFINE_enum("mode", "train_step", ["train_step", "scaling", "max_batch", "enhance", "torch_ratio", "suite",
                                         "texture_probe", "restoration_probe"],
                  "What to time.")
flags.DEFINE_list("devices", ["1", "2", "4", "8"], "scaling: device counts (the first N devices).")
flags.DEFINE_integer("per_device_batch", 4, "scaling: batch per device (the global batch grows with N).")
flags.DEFINE_bool("fsdp", False, "scaling: put the devices on the fsdp axis (state sharded) instead of data.")
flags.DEFINE_float("memory_limit_gb", None, "max_batch: per-device memory (default: what the device reports).")
flags.DEFINE_float("memory_fraction", 0.92, "max_batch: fraction of the memory the step may use.")
flags.DEFINE_integer("max_batch", 8192, "max_batch: stop searching at this global batch.")
flags.DEFINE_integer("num_cpu_devices", None, "CPU only: split the CPU into this many devices.")
flags.DEFINE_list("megapixels", ["0.25", "1"], "enhance: image sizes (4:3) in megapixels.")
flags.DEFINE_list("dtypes", ["float32"], "enhance: compute dtypes (float32, bfloat16).")
flags.DEFINE_integer("tile", 256, "enhance: tile core size of the tiled path.")
flags.DEFINE_list("tilings", ["staged"], "enhance: exact tiling methods to time (staged, streamed).")
flags.DEFINE_float("memory_budget_mb", None, "enhance: per-device budget (default: wespe.enhance's).")
flags.DEFINE_list("batch_sizes", ["8", "30"], "torch_ratio: global batch sizes.")
flags.DEFINE_string("torch_python", None, "torch_ratio, enhance: the Python of a venv with the CPU torch wheel "
                    "(enhance: also time the PyTorch reference generator's forward at each size).")
flags.DEFINE_string("torch_script", str(Path(__file__).resolve().parent.parent.parent / "shared" / "reference"
                                        / "torch_wespe_step.py"), "torch_ratio: the PyTorch reference step.")
flags.DEFINE_string("data_dir", "runs/quality/data", "texture_probe, restoration_probe: where the quality benchmark's "
                    "photos are (or are prepared, seed --data_seed).")
flags.DEFINE_integer("data_seed", 0, "texture_probe, restoration_probe: the benchmark data's camera seed.")
flags.DEFINE_list("texture_inputs", ["gray", "highpass"], "texture_probe: the texture views to probe.")
flags.DEFINE_integer("probe_steps", 600, "texture_probe, restoration_probe: training steps of each probe.")
flags.DEFINE_integer("eval_every", 100, "texture_probe, restoration_probe: held-out scores every N steps.")
flags.DEFINE_list("restoration_degradations", ["fitted", "camera"],
                  "restoration_probe: the degradations G learns to undo (fitted to the sets; the camera family's).")
flags.DEFINE_integer("repeats", 5, "Timed steps (the median is reported).")
flags.DEFINE_integer("warmup", 1, "Untimed steps after compiling.")
flags.DEFINE_string("vgg_weights", "random", "VGG-19 weights file, or 'random' (used when given, or when the "
                    "config sets none: --config.vgg_weights wins otherwise).")
flags.DEFINE_float("peak_tflops", None, "Per-device peak TFLOP/s for MFU (default: known table by device kind).")
flags.DEFINE_string("out", None, "Write the result JSON here as well as printing it.")
flags.DEFINE_string("conv_choice", None, "How each convolution's CPU formulation is chosen, as WESPE_CONV_CHOICE: "
                    "measure (cached, measuring what is missing), remeasure, heuristic (wespe.conv's thresholds), "
                    "plus part=formulation items to force one (e.g. heuristic,kernel_grad=xla). Default: "
                    "WESPE_CONV_CHOICE, else measure.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.mode == "enhance":  # as launch/enhance.py (the training modes were set up by tune_for_training)
        host_malloc.tune()
    if FLAGS.conv_choice is not None:  # checked here (one clear error), then in force for this process
        conv_tuning.parse_policy(FLAGS.conv_choice, source="--conv_choice")
        os.environ[conv_tuning.CHOICE_ENV] = FLAGS.conv_choice
    parallel.initialize_distributed(num_cpu_devices=FLAGS.num_cpu_devices)
    if FLAGS.mode == "enhance":
        unknown = [t for t in FLAGS.tilings if t not in ("staged", "streamed")]
        if unknown:
            raise app.UsageError(f"--tilings: unknown {unknown}; expected staged and/or streamed")
        from wespe.models import Generator
        _emit({"mode": "enhance", "rows": speed_benchmark.benchmark_enhance(
            Generator(), [float(m) for m in FLAGS.megapixels], dtypes=FLAGS.dtypes, tile=FLAGS.tile,
            repeats=FLAGS.repeats, memory_budget_mb=FLAGS.memory_budget_mb, tilings=FLAGS.tilings,
            torch_python=FLAGS.torch_python, torch_script=FLAGS.torch_script)})
        return
    config = _CONFIG.value
    if FLAGS["vgg_weights"].present or config.vgg_weights is None:  # --config.vgg_weights=... is kept
        config.vgg_weights = FLAGS.vgg_weights
    kwargs = dict(repeats=FLAGS.repeats, warmup=FLAGS.warmup,
                  peak_flops=FLAGS.peak_tflops * 1e12 if FLAGS.peak_tflops else None)
    if FLAGS.mode == "texture_probe":
        _emit({"mode": "texture_probe", "config": config_flags.get_config_filename(FLAGS["config"]),
               "rows": _texture_probe(config)})
        return
    if FLAGS.mode == "restoration_probe":
        _emit({"mode": "restoration_probe", "config": config_flags.get_config_filename(FLAGS["config"]),
               "rows": _restoration_probe(config)})
        return
    if FLAGS.mode == "suite":
        if FLAGS["peak_tflops"].present:
            raise app.UsageError("--mode=suite takes each dtype's peak from the known table; --peak_tflops is for "
                                 "one-dtype modes")
        _emit({"mode": "suite", "config": config_flags.get_config_filename(FLAGS["config"]),
               **speed_benchmark.benchmark_suite(
                   config, megapixels=[float(m) for m in FLAGS.megapixels], tile=FLAGS.tile,
                   memory_limit_bytes=int(FLAGS.memory_limit_gb * 2**30) if FLAGS.memory_limit_gb else None,
                   max_batch=FLAGS.max_batch,
                   per_device_batch=FLAGS.per_device_batch if FLAGS["per_device_batch"].present else None,
                   repeats=FLAGS.repeats, warmup=FLAGS.warmup, enhance_repeats=min(FLAGS.repeats, 3))})
        return
    if FLAGS.mode == "torch_ratio":
        rows = speed_benchmark.benchmark_torch_ratio(config, [int(b) for b in FLAGS.batch_sizes],
                                                  torch_python=FLAGS.torch_python, torch_script=FLAGS.torch_script,
                                                  **kwargs)
        _emit({"mode": "torch_ratio", "rows": rows})
        return
    if FLAGS.mode == "scaling":
        rows = speed_benchmark.benchmark_scaling(config, [int(n) for n in FLAGS.devices], FLAGS.per_device_batch,
                                              fsdp=FLAGS.fsdp, **kwargs)
        _emit({"mode": "scaling", "per_device_batch": FLAGS.per_device_batch, "fsdp": FLAGS.fsdp, "rows": rows})
        return
    if FLAGS.mode == "max_batch":
        layout = parallel.Layout(parallel.make_mesh(config.mesh))
        search = speed_benchmark.largest_batch(
            config, layout, fraction=FLAGS.memory_fraction, max_batch=FLAGS.max_batch,
            memory_limit_bytes=int(FLAGS.memory_limit_gb * 2**30) if FLAGS.memory_limit_gb else None)
        config.batch_size = search["batch_size"]
        _emit({"mode": "max_batch", "search": search,
               "benchmark": speed_benchmark.benchmark_train_step(config, layout=layout, **kwargs)})
        return
    result = speed_benchmark.benchmark_train_step(config, **kwargs)
    result["config"] = config_flags.get_config_filename(FLAGS["config"])
    _emit(result)


def _texture_probe(config) -> list[dict]:
    from wespe import config as configs
    from wespe.evaluation import quality_data, texture_probe
    from wespe.ops import TEXTURE_INPUTS
    unknown = [t for t in FLAGS.texture_inputs if t not in TEXTURE_INPUTS]
    if unknown:
        raise app.UsageError(f"--texture_inputs: unknown {unknown}; expected some of {TEXTURE_INPUTS}")
    data = quality_data.prepare(FLAGS.data_dir, FLAGS.data_seed)
    photos = {k: texture_probe.load_folder(getattr(data, k))
              for k in ("source", "target", "test_degraded", "test_clean")}
    rows = []
    for view in FLAGS.texture_inputs:
        config.discriminator.texture_input = view
        configs.validate(config)
        rows.append(texture_probe.probe(config, photos["source"], photos["target"], photos["test_degraded"],
                                        photos["test_clean"], steps=FLAGS.probe_steps, eval_every=FLAGS.eval_every,
                                        seed=config.seed))
    return rows


def _restoration_probe(config) -> list[dict]:
    from wespe import color_map, train_step
    from wespe.evaluation import quality_data, restoration_probe, texture_probe
    from wespe.training import color_pool, loop
    unknown = [d for d in FLAGS.restoration_degradations if d not in ("fitted", "camera")]
    if unknown:
        raise app.UsageError(f"--restoration_degradations: unknown {unknown}; expected fitted and/or camera")
    bench = quality_data.prepare(FLAGS.data_dir, FLAGS.data_seed)
    photos = {k: texture_probe.load_folder(getattr(bench, k)) for k in ("target", "test_degraded", "test_clean")}
    pools = loop.build_color_pools(config, bench.source, bench.target)
    estimator = train_step.colour_estimator(config)
    colour = color_map.fitted_colour_map(pools, estimator)  # G's colour start
    inverse = color_map.fitted_colour_map(pools, estimator, reverse=True)  # D's colour steps
    rows = []
    for kind in FLAGS.restoration_degradations:
        if kind == "fitted":  # as a training run fits it
            fitted, _ = loop.fit_degradation(config, bench.source, bench.target, *inverse)
            degrader = restoration_probe.fitted_degrader(fitted, config.degradation.jitter)
            described = fitted.describe()
        else:
            ranges = json.loads(Path(bench.camera_params).read_text())["ranges"]
            degrader, described = restoration_probe.camera_degrader(ranges, *inverse), f"camera family {ranges}"
        row = restoration_probe.probe(config, photos["target"], photos["test_degraded"], photos["test_clean"],
                                      *colour, degrader, steps=FLAGS.probe_steps, eval_every=FLAGS.eval_every,
                                      seed=config.seed)
        rows.append({"degradation": kind, "described": described, **row})
    return rows


def _conv_choice_tables(result) -> list[str]:
    """Each distinct per-layer table of convolution formulations in ``result`` (one per timed step)."""
    if isinstance(result, dict):
        own = [conv_tuning.describe(result["conv_choices"])] if result.get("conv_choices") else []
        return own + [t for k, v in result.items() if k != "conv_choices" for t in _conv_choice_tables(v)]
    if isinstance(result, list):
        return [t for v in result for t in _conv_choice_tables(v)]
    return []


def _emit(result: dict) -> None:
    import jax
    result["device"] = jax.devices()[0].device_kind
    for table in dict.fromkeys(_conv_choice_tables(result)):  # stderr: stdout is the JSON
        print(f"convolution formulations ({conv_tuning.CHOICE_ENV}={conv_tuning.policy_text()}):\n{table}",
              file=sys.stderr)
    text = json.dumps(result, indent=2)
    print(text)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    cli.run(main)
