"""Training curves of several runs side by side: a summary of every shared loss (JSON) and a plot.

    python launch/compare_runs.py --out=runs/bf16_vs_f32.png runs/demo runs/demo_bf16
"""

import json

from absl import app, flags

from wespe import cli
from wespe.evaluation import curves

flags.DEFINE_string("out", None, "PNG of the curves (none: summary only).")
flags.DEFINE_float("tail_fraction", 0.2, "Summarise each loss over this last fraction of the common steps.")
FLAGS = flags.FLAGS


def main(argv):
    workdirs = argv[1:]
    if len(workdirs) < 2:
        raise app.UsageError("give two or more training workdirs to compare")
    summary = curves.compare(workdirs, tail_fraction=FLAGS.tail_fraction)
    if FLAGS.out:
        summary["plot"] = str(curves.plot(workdirs, FLAGS.out))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    cli.run(main)
