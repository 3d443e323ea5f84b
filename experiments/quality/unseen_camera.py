"""The quality benchmark with another camera and other held-out photos than the ones wespe_plus was tuned on.

    python experiments/quality/unseen_camera.py --output_dir=runs/quality_unseen

The benchmark's camera (wespe/camera.py) is warm, dark, low-contrast, noisy and JPEG 30-45, and its held-out
photos are chelsea, grace_hopper and flower. Here every draw is a cool cast (R gain 0.80-0.90, B gain 1.10-1.20),
over-exposed (brightness +0.03..+0.08), mildly flat (contrast 0.8-0.9), less blurred and noisy, JPEG 60-80, and
the photos swap roles: astronaut, coffee and rocket are held out; chelsea, grace_hopper, flower,
motorcycle_left and china are cut into the training halves. Results in experiments/quality/results/unseen_camera.md.
"""

from absl import app, flags

from wespe import camera, cli, quality

UNSEEN_RANGES = {"blur_sigma": (0.5, 1.0), "contrast": (0.8, 0.9), "brightness": (0.03, 0.08),
                 "gain_r": (0.80, 0.90), "gain_b": (1.10, 1.20), "noise_sigma": (0.01, 0.02),
                 "jpeg_quality": (60, 80)}
UNSEEN_SPLIT = {"test": ["astronaut", "coffee", "rocket"],
                "train": ["chelsea", "grace_hopper", "flower", "motorcycle_left", "china"]}
PRESETS = {"wespe_plus": "experiments/quality/wespe_plus.py", "dped_paired": "experiments/quality/dped_paired.py"}

flags.DEFINE_string("output_dir", None, "Where the data, runs, results and grid go.")
flags.DEFINE_list("seeds", ["0"], "Training seeds.")
flags.DEFINE_integer("data_seed", 7, "Seed of the camera drawn for each degraded photo.")
flags.mark_flag_as_required("output_dir")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cli.configure_logging()
    camera.CAMERA_RANGES.update(UNSEEN_RANGES)  # draw_camera reads the module's ranges; recorded in results.json
    results = quality.run_benchmark(FLAGS.output_dir, PRESETS, seeds=[int(s) for s in FLAGS.seeds],
                                    split=UNSEEN_SPLIT, data_seed=FLAGS.data_seed)
    print(quality.summary_table(results))


if __name__ == "__main__":
    app.run(main)
