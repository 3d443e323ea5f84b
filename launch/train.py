"""Train WESPE/DPED on two folders of photos.

    python launch/train.py --source=phone_dir --target=dslr_dir --workdir=runs/x \
        --config.vgg_weights=imagenet-vgg-verydeep-19.mat
    python launch/train.py --config=experiments/demo.py --workdir=runs/demo      # built-in demo

--config is a Python file with get_config() (default: experiments/wespe_plus.py, the recommended recipe; the faithful
paper preset is experiments/wespe_paper.py, README: Results); any key can be overridden
with --config.<key>=<value>. Re-running with the same --workdir resumes; SIGTERM / Ctrl-C save and exit 0.
A mistake in the input (a missing or empty folder, a bad config value, a workdir holding another run or in use
by another process) is one "error: ..." line and exit status 2; a diverged run exits 3, a checkpoint that cannot
be written exits 1 (WESPE_TRACEBACK=1 or --verbosity=1 adds the traceback).

Multi-host (one process per host, same command on every host): under SLURM (srun), Open MPI (mpirun), a Cloud
TPU pod or Kubernetes the processes find each other by themselves; elsewhere pass --coordinator_address,
--num_processes and --process_id. The device mesh is --config.mesh.data / --config.mesh.fsdp (README: Scaling out).
"""

from pathlib import Path

from wespe import host_malloc

host_malloc.tune_for_training()  # first (glibc reads it at start-up): activations in 2 MiB pages, one arena

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from wespe import cli, parallel
from wespe.training import loop  # noqa: E402

# The recipe that measured best (README: Results); the paper preset collapses at small budgets.
_DEFAULT_CONFIG = str(Path(__file__).resolve().parent.parent / "experiments" / "wespe_plus.py")
_CONFIG = cli.define_config_flag(_DEFAULT_CONFIG, "Experiment config file.")
flags.DEFINE_string("source", None, "Folder of source-camera photos (e.g. phone).")
flags.DEFINE_string("target", None, "Folder of target-camera photos (e.g. DSLR).")
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, samples (resumed if it exists).")
flags.mark_flag_as_required("workdir")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs without a cluster "
                    "launcher JAX detects).")
flags.DEFINE_integer("num_processes", None, "Number of processes (hosts) of a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1.")
flags.DEFINE_integer("num_cpu_devices", None, "CPU only: split the CPU into this many devices (tests, trying a "
                     "sharded layout on a laptop).")
flags.DEFINE_enum("cpu_collectives", None, ["gloo", "mpi"], "CPU only: collectives between processes.")
flags.DEFINE_integer("initialization_timeout", 300, "Seconds to wait for all processes to join.")
flags.DEFINE_integer("heartbeat_timeout", 100, "Seconds after which a silent process counts as dead (the others "
                     "then stop).")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    parallel.initialize_distributed(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, num_cpu_devices=FLAGS.num_cpu_devices,
        cpu_collectives=FLAGS.cpu_collectives, initialization_timeout_s=FLAGS.initialization_timeout,
        heartbeat_timeout_s=FLAGS.heartbeat_timeout)
    cli.configure_logging()
    config = _CONFIG.value
    if FLAGS.source:
        config.data.source = FLAGS.source
    if FLAGS.target:
        config.data.target = FLAGS.target
    result = loop.run_training(config, FLAGS.workdir)
    if jax.process_index() != 0:
        return
    print(f"{result.status} at step {result.step}: {result.workdir}")
    for key in sorted(k for k in result.metrics if k.startswith("demo/")):
        print(f"  {key} = {result.metrics[key]}")


if __name__ == "__main__":
    cli.run(main)
