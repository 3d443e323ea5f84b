"""Quality benchmark on public real photos: classical baselines and trained presets, several seeds, one command.

    pip install -e ".[quality]"
    python launch/quality.py --output_dir=runs/quality                       # 3 presets x seeds 0,1,2
    python launch/quality.py --output_dir=runs/quality --skip_training       # input + classical baselines only
    python launch/quality.py --output_dir=runs/q --presets=mine=experiments/x.py --seeds=0 --steps=2000

Writes results.json (per-seed numbers, mean and std over seeds, deltas vs the input, camera draws, split, licences, the
command to rerun it), results.md and grid.png to --output_dir; the photos, the split and the camera model are described
in wespe/evaluation/quality_data.py, the baselines in wespe/evaluation/baselines.py and the protocol in
wespe/evaluation/quality_benchmark.py. A finished training run under --output_dir/runs is reused.
A bad flag or preset prints one "error: ..." line and exits 2 before anything is trained.
"""

from wespe import host_malloc

host_malloc.tune_for_training()  # it trains: malloc as launch/train.py (one arena, huge pages)

from absl import flags  # noqa: E402

from wespe import cli
from wespe.evaluation import quality_benchmark  # noqa: E402

_DEFAULT_PRESETS = ("wespe_plus=experiments/quality/wespe_plus.py,wespe_paper=experiments/quality/wespe_paper.py,"
                    "dped_paired=experiments/quality/dped_paired.py")


def _int_list(values) -> bool:
    return bool(values) and all(v.strip().lstrip("-").isdigit() for v in values)


flags.DEFINE_string("output_dir", None, "Where the data, runs, results.{json,md} and grid.png go.")
flags.DEFINE_string("presets", _DEFAULT_PRESETS, "Comma list of name=config_file (experiments/*.py, get_config()).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds of every preset.")
flags.DEFINE_integer("steps", None, "Training steps of every run (default: each config's num_steps).", lower_bound=1)
flags.DEFINE_string("vgg_weights", "random", "VGG-19 weights of the content loss ('random': nothing to download).")
flags.DEFINE_bool("skip_training", False, "Only the input and the classical baselines.")
flags.DEFINE_integer("data_seed", 0, "Seed of the camera drawn for each degraded photo.", lower_bound=0)
flags.DEFINE_integer("max_side", None, "Downscale the photos to this longer side first (quick checks).", lower_bound=32)
flags.mark_flag_as_required("output_dir")
flags.register_validator("seeds", _int_list, message="give a comma list of integer seeds, e.g. 0,1,2")
FLAGS = flags.FLAGS


def main(argv):
    cli.start(argv, tune_malloc=False)  # malloc already set for training at start-up (tune_for_training, above)
    # A bad preset or a missing package: one line, exit 2 before anything is trained; an interrupted run 1, a
    # diverged one 3 (cli.run).
    presets = {} if FLAGS.skip_training else quality_benchmark.parse_presets(FLAGS.presets)
    results = quality_benchmark.run_benchmark(
        FLAGS.output_dir, presets, [int(s) for s in FLAGS.seeds], FLAGS.steps, vgg_weights=FLAGS.vgg_weights,
        skip_training=FLAGS.skip_training, data_seed=FLAGS.data_seed, max_side=FLAGS.max_side)
    print(quality_benchmark.summary_table(results))
    print(f"wrote {FLAGS.output_dir}/results.json, results.md, grid.png; rerun: {results['command']}")
    return 0


if __name__ == "__main__":
    cli.run(main)
