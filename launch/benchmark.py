"""Benchmarks, JSON out.

--mode=train_step: images/s, median step time, compile time, XLA FLOPs, MFU, CPU user/sys time, memory.
    python launch/benchmark.py --preset=wespe_paper --batch_size=30 --repeats=5 --out=bench.json
    python launch/benchmark.py --preset=dped_code --peak_tflops=989 --vgg_weights=imagenet-vgg-verydeep-19.mat
--mode=enhance: megapixels/s of whole-image and exact tiled inference vs image size, f32 and bf16.
    python launch/benchmark.py --mode=enhance --megapixels=1,4,12,48 --dtypes=float32,bfloat16 --tile=512

VGG weights default to ``random`` (same FLOPs as the real network).
"""

import json

from absl import app, flags

from wespe import benchmarking, config as configs

flags.DEFINE_enum("mode", "train_step", ["train_step", "enhance"], "What to time.")
flags.DEFINE_list("megapixels", ["0.25", "1"], "enhance: image sizes (4:3) in megapixels.")
flags.DEFINE_list("dtypes", ["float32"], "enhance: compute dtypes (float32, bfloat16).")
flags.DEFINE_integer("tile", 256, "enhance: tile core size of the tiled path.")
flags.DEFINE_float("memory_budget_mb", None, "enhance: per-device budget (default: wespe.enhance's).")
flags.DEFINE_enum("preset", "wespe_paper", sorted(configs.PRESETS), "Training preset to time.")
flags.DEFINE_integer("batch_size", None, "Global batch (default: the preset's).")
flags.DEFINE_integer("patch_size", None, "Patch side (default: the preset's, 100).")
flags.DEFINE_integer("repeats", 5, "Timed steps (the median is reported).")
flags.DEFINE_integer("warmup", 1, "Untimed steps after compiling.")
flags.DEFINE_string("vgg_weights", "random", "VGG-19 weights file, or 'random'.")
flags.DEFINE_float("peak_tflops", None, "Device peak TFLOP/s for MFU (default: known table by device kind).")
flags.DEFINE_string("out", None, "Write the result JSON here as well as printing it.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.mode == "enhance":
        from wespe.models import Generator
        result = {"mode": "enhance", "rows": benchmarking.benchmark_enhance(
            Generator(), [float(m) for m in FLAGS.megapixels], dtypes=FLAGS.dtypes, tile=FLAGS.tile,
            repeats=FLAGS.repeats, memory_budget_mb=FLAGS.memory_budget_mb)}
        _emit(result)
        return
    config = configs.preset(FLAGS.preset)
    config.vgg_weights = FLAGS.vgg_weights
    if FLAGS.batch_size:
        config.batch_size = FLAGS.batch_size
    if FLAGS.patch_size:
        config.patch_size = FLAGS.patch_size
    peak = FLAGS.peak_tflops * 1e12 if FLAGS.peak_tflops else None
    result = benchmarking.benchmark_train_step(config, repeats=FLAGS.repeats, warmup=FLAGS.warmup, peak_flops=peak)
    result["preset"] = FLAGS.preset
    _emit(result)


def _emit(result: dict) -> None:
    import jax
    result["device"] = jax.devices()[0].device_kind
    text = json.dumps(result, indent=2)
    print(text)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
