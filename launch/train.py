"""Train WESPE/DPED on two folders of photos.

    python launch/train.py --source=phone_dir --target=dslr_dir --workdir=runs/x \
        --config.vgg_weights=imagenet-vgg-verydeep-19.mat
    python launch/train.py --config=experiments/demo.py --workdir=runs/demo      # built-in demo

--config is a Python file with get_config() (default: experiments/wespe_paper.py); any key can be overridden
with --config.<key>=<value>. Re-running with the same --workdir resumes; SIGTERM / Ctrl-C save and exit 0.
"""

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from wespe import loop

_DEFAULT_CONFIG = str(Path(__file__).resolve().parent.parent / "experiments" / "wespe_paper.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file.", lock_config=True)
flags.DEFINE_string("source", None, "Folder of source-camera photos (e.g. phone).")
flags.DEFINE_string("target", None, "Folder of target-camera photos (e.g. DSLR).")
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, samples (resumed if it exists).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    loop.configure_logging()
    config = _CONFIG.value
    if FLAGS.source:
        config.data.source = FLAGS.source
    if FLAGS.target:
        config.data.target = FLAGS.target
    result = loop.run_training(config, FLAGS.workdir)
    print(f"{result.status} at step {result.step}: {result.workdir}")
    for key in sorted(k for k in result.metrics if k.startswith("demo/")):
        print(f"  {key} = {result.metrics[key]}")


if __name__ == "__main__":
    app.run(main)
