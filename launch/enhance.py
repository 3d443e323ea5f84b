"""Enhance photos at full size with an official DPED generator or an exported wespe generator.

    python launch/enhance.py --pretrained=dped_iphone --weights_dir=models_orig --output=out photos/ extra.jpg
    python launch/enhance.py --checkpoint=workdir/generator.npz --output=out --tile=512 --save_raw photos/

Inputs are files and/or folders (searched recursively for jpg/jpeg/png/webp/tif/tiff/bmp). Each photo is written
to --output with its file name, format and relative sub-folder, EXIF kept and orientation applied. A file that
cannot be read, enhanced or written is reported and skipped. A photo whose output file (or .npy with --save_raw)
is already in --output is skipped with a line naming it, so the same command resumes an interrupted run;
--overwrite replaces such files instead. --output may lie inside an input folder (it is left out of the inputs)
but may not be an input folder, nor hold one.

Exit status: 0 if at least one photo was enhanced or already had its output (partial failures are listed in the
log and the summary line, so one stray corrupt file does not fail a batch job over a large folder), 1 if none
was, 2 with one "error:" line for bad flags, weights, inputs or outputs (nothing is written then).
"""

from absl import flags

from wespe import cli
from wespe.inference import file_enhancement, loading, pretrained

flags.DEFINE_enum("pretrained", None, sorted(pretrained.PRETRAINED),
                  "Official DPED generator; its <phone>_orig.* files are looked up in --weights_dir.")
flags.DEFINE_string("weights_dir", None, "Folder holding the official DPED checkpoints (with --pretrained).")
flags.DEFINE_string("checkpoint", None, "Exported generator (.npz or folder with generator.npz) or training workdir.")
flags.DEFINE_string("output", None, "Output folder (created; mirrors the input folders).")
flags.DEFINE_integer("tile", 0, "Tile side in pixels for exact tiled inference; 0 = auto from the memory budget.",
                     lower_bound=0)
flags.DEFINE_float("memory_budget_mb", None, "Memory budget per device in MiB for whole-image or tiled inference "
                  "(default: $WESPE_ENHANCE_MEMORY_MB, else what the machine has free).")
flags.DEFINE_bool("save_raw", False, "Also write the unclipped float32 output as <name>.npy beside each photo.")
flags.DEFINE_bool("overwrite", False, "Replace output files already in --output. Without it a photo whose output "
                  "(or .npy with --save_raw) exists is skipped and named, so rerunning the same command resumes an "
                  "interrupted folder run.")
flags.register_validator("memory_budget_mb", lambda v: v is None or v > 0, message="--memory_budget_mb must be > 0")
flags.mark_flag_as_required("output")
flags.register_multi_flags_validator(
    ["pretrained", "checkpoint"], lambda f: (f["pretrained"] is None) != (f["checkpoint"] is None),
    message="give exactly one of --pretrained=<dped_iphone|dped_blackberry|dped_sony> and --checkpoint=<path>")
FLAGS = flags.FLAGS


def main(argv):
    inputs = cli.start(argv, takes_inputs=True)
    file_enhancement.plan(inputs, FLAGS.output, save_raw=FLAGS.save_raw)  # inputs and outputs, before the model loads
    generator, _ = loading.generator_for_flags(pretrained_name=FLAGS.pretrained, checkpoint=FLAGS.checkpoint,
                                                  weights_dir=FLAGS.weights_dir)
    report = file_enhancement.enhance_files(generator, inputs, FLAGS.output, tile=FLAGS.tile or None,
                                            memory_budget_mb=FLAGS.memory_budget_mb, save_raw=FLAGS.save_raw,
                                            overwrite=FLAGS.overwrite)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    cli.run(main)
