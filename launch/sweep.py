"""Evaluate every cell of a sweep (models, or every checkpoint of a run) and compare them in one table and plots.

    python launch/sweep.py --sweep=experiments/sweeps/dped_pretrained.py --source=photos/ \
        --weights_dir=models_orig --output_dir=sweeps/dped
    python launch/sweep.py --sweep=experiments/sweeps/run_checkpoints.py --workdir=runs/demo \
        --source=photos/ --reference=clean/ --output_dir=sweeps/demo
    python launch/sweep.py --sweep=experiments/sweeps/run_checkpoints.py --workdir=runs/demo \
        --source=phone/ --target=dslr/ --output_dir=sweeps/demo        # no references: target-likeness

A sweep file's get_sweep() returns the cells (see wespe/evaluation/sweep.py); --source, --reference,
--weights_dir, --workdir, --tile and --limit override the file's settings. Each cell's results go to
<output_dir>/<cell>/ (as launch/evaluate.py writes them); a cell whose results.json exists is skipped, so an
interrupted sweep resumes. Then sweep.csv, sweep.md, metric_vs_step.png (per run) and models.png (per model).
--output_dir may lie inside --source or --reference (what is under it is never scored as a photo), but may not
be one of them nor hold one. Exit status 0 if every cell succeeded, 1 if one failed (the others are still
evaluated and tabulated), 2 with one "error:" line for a bad sweep file, folder or cell, before any model loads:
a missing --source, --reference, weights_dir, checkpoint or workdir (or step in it), a bad tile or limit
(wespe.evaluation.sweep.check_cells), or a --target without usable photos (fitted once, before any model loads).
--target: photos of the camera the outputs should look like (unpaired; e.g. the training target folder):
every cell evaluated gets a "no_reference" section (wespe/evaluation/no_reference.py) and its outputs' niqe_set,
color_distance, noise_log2_ratio and sharpness_log2_ratio become columns of sweep.csv / sweep.md. sweep.md
ends with the best cell: by pooled PSNR with references; without, by the lowest niqe_set (wespe.evaluation.sweep.BEST_BY
says why, and how weak a guide that is), then the cells and their inputs ranked by niqe_set, with its range over
resamples of the photos and how often each row is closer than the next (wespe/evaluation/likeness_resampling.py;
each cell keeps its likeness_moments.npz for that).
"""

from pathlib import Path

from absl import flags

from wespe import cli, image_paths
from wespe.evaluation import no_reference, sweep

flags.DEFINE_string("sweep", None, "Sweep file (Python, with get_sweep()).")
flags.DEFINE_string("output_dir", None, "Where the per-cell results, sweep.csv/md and the plots go.")
flags.DEFINE_string("source", None, "Photos to enhance (overrides the sweep file's).")
flags.DEFINE_string("reference", None, "Reference photos (overrides the sweep file's).")
flags.DEFINE_integer("tile", None, "Tile side for exact tiled inference (default: auto).", lower_bound=1)
flags.DEFINE_string("weights_dir", None, "Folder of the official DPED checkpoints (overrides the sweep file's).")
flags.DEFINE_string("workdir", None, "Training workdir for cells that take the shared workdir.")
flags.DEFINE_string("target", None, "Photos of the camera to look like (unpaired): no-reference likeness "
                    "columns, and the best cell by it when there are no references.")
flags.DEFINE_integer("limit", None, "Only the first N photos of each cell, for quick checks.", lower_bound=1)
flags.mark_flags_as_required(["sweep", "output_dir"])
FLAGS = flags.FLAGS


def main(argv):
    cli.start(argv)
    overrides = {k: FLAGS[k].value for k in sweep.SWEEP_SHARED_KEYS}
    image_paths.check_output_dir(FLAGS.output_dir)
    cells = sweep.expand_cells(sweep.load_sweep(FLAGS.sweep), overrides)
    target = None
    if FLAGS.target is not None:  # fitted once, before any model loads: a bad target is a flag error
        target = no_reference.target_for_flag(FLAGS.target, FLAGS.output_dir)
        print(f"target: {target.describe()}")
    rows = sweep.run_sweep(cells, FLAGS.output_dir, target=target)
    print((Path(FLAGS.output_dir) / "sweep.md").read_text())
    failed = [r["cell"] for r in rows if r["status"] != "ok"]
    if failed:
        print(f"{len(failed)} cell(s) failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run(main)
