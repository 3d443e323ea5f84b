"""The quality benchmark with another camera and other held-out photos than the ones wespe_plus was tuned on.

    python experiments/quality/unseen_camera.py --output_dir=runs/quality_unseen
    python experiments/quality/unseen_camera.py --output_dir=runs/quality_noisy --camera=noisy_phone \
        --presets=wespe_restore=experiments/quality/wespe_restore.py

The benchmark's camera (wespe/training/synthetic_camera.py) is warm, dark, low-contrast, noisy and JPEG 30-45, and its
held-out photos are chelsea, grace_hopper and flower. Here every draw is a cool cast (R gain 0.80-0.90, B gain
1.10-1.20), over-exposed (brightness +0.03..+0.08), mildly flat (contrast 0.8-0.9), less blurred and noisy, JPEG 60-80,
and the photos swap roles: astronaut, coffee and rocket are held out; chelsea, grace_hopper, flower, motorcycle_left and
china are cut into the training halves. Results in experiments/quality/results/unseen_camera.md.

--camera=noisy_phone keeps that split and draws a camera whose damage is mostly sensor noise that survives a
mild JPEG (noise 0.04-0.07, quality 85-95, little blur, a mild cast): the case of real phone photos, where a
classical denoiser after the colour fit gains over a dB, unlike the benchmark's camera, whose JPEG 30-45 turns
the noise into blocks.
"""

from absl import flags

from wespe import cli
from wespe.evaluation import quality_benchmark, quality_data
from wespe.training import synthetic_camera

CAMERAS = {name: synthetic_camera.CAMERA_FAMILIES[name] for name in ("cool_overexposed", "noisy_phone")}
UNSEEN_SPLIT = {k: list(v) for k, v in quality_data.UNSEEN_SPLIT.items()}
PRESETS = {"wespe_plus": "experiments/quality/wespe_plus.py", "dped_paired": "experiments/quality/dped_paired.py"}

flags.DEFINE_string("output_dir", None, "Where the data, runs, results and grid go.")
flags.DEFINE_enum("camera", "cool_overexposed", list(CAMERAS), "The camera family the source photos are drawn from.")
flags.DEFINE_string("presets", None, "name=config file pairs, comma-separated, to train instead of "
                    f"{','.join(f'{k}={v}' for k, v in PRESETS.items())}.")
flags.DEFINE_list("seeds", ["0"], "Training seeds.")
flags.DEFINE_integer("data_seed", 7, "Seed of the camera drawn for each degraded photo.")
flags.mark_flag_as_required("output_dir")
FLAGS = flags.FLAGS


def main(argv):
    cli.start(argv, tune_malloc=False)  # as launch/quality.py: a bad --presets is one line, exit 2
    synthetic_camera.CAMERA_RANGES.update(CAMERAS[FLAGS.camera])  # draw_camera reads the module's ranges; in
    # results.json
    presets = quality_benchmark.parse_presets(FLAGS.presets) if FLAGS.presets else PRESETS
    results = quality_benchmark.run_benchmark(FLAGS.output_dir, presets, seeds=[int(s) for s in FLAGS.seeds],
                                    split=UNSEEN_SPLIT, data_seed=FLAGS.data_seed)
    print(quality_benchmark.summary_table(results))
    return 0


if __name__ == "__main__":
    cli.run(main)
