"""Evaluate an enhancer on a folder of photos: PSNR (per image and DPED's pooled), SSIM, MS-SSIM, entropy, bpp.

    python launch/evaluate.py --pretrained=dped_iphone --weights_dir=models_orig \
        --source=dped/iphone/test_data/patches/iphone --reference=dped/iphone/test_data/patches/canon --output_dir=ev
    python launch/evaluate.py --checkpoint=runs/demo --source=photos/ --output_dir=ev      # no-reference mode
    python launch/evaluate.py --outputs=enhanced/ --reference=ref/ --output_dir=ev        # already enhanced
    python launch/evaluate.py --checkpoint=runs/x --source=phone/ --target=dslr/ --output_dir=ev   # target-likeness

--checkpoint: an exported generator (.npz, or a folder with generator.npz) or a training workdir (its latest
checkpoint). Photos pair with references by relative path without extension. Writes results.json,
results.csv, results.md and best_worst.png to --output_dir (see wespe/evaluation/evaluate.py). A photo without a
reference, an unreadable file or a size mismatch is listed in the results and skipped. --output_dir may lie
inside --source, --reference or --outputs: what is under it (best_worst.png, enhanced/) is never taken for a
photo to score, so a rerun scores the same photos; it may not be one of those folders, nor hold one.
--target: photos of the camera the outputs should look like (unpaired; e.g. the training target folder): adds a
"no_reference" section (wespe/evaluation/no_reference.py: NIQE-style distance to the target's statistics, colour
distance, noise and sharpness log2 ratios) for the outputs and for their inputs, with the NIQE-style distance's range
over resamples of the photos and how often the outputs are the closer (wespe/evaluation/likeness_resampling.py).
Exit status 0 if at least one photo was evaluated, 1 if none was, 2 with one "error:" line for bad flags, weights
or folders (before the model loads).
"""

from absl import flags

from wespe import cli, image_paths
from wespe.evaluation import evaluate, no_reference
from wespe.inference import loading, pretrained

flags.DEFINE_enum("pretrained", None, sorted(pretrained.PRETRAINED), "Official DPED generator (with --weights_dir).")
flags.DEFINE_string("weights_dir", None, "Folder holding the official DPED checkpoints (with --pretrained).")
flags.DEFINE_string("checkpoint", None, "Exported generator (.npz or folder with generator.npz) or training workdir.")
flags.DEFINE_string("outputs", None, "Folder of already enhanced photos to evaluate as they are (no model).")
flags.DEFINE_string("source", None, "Photos to enhance (folder or file); with --outputs: their inputs (optional).")
flags.DEFINE_string("reference", None, "Reference photos (e.g. DPED test_data/patches/canon); none: no-reference.")
flags.DEFINE_string("target", None, "Photos of the camera to look like (unpaired): adds a no-reference likeness "
                    "section (NIQE-style distance, colour, noise, sharpness) for outputs and inputs.")
flags.DEFINE_string("output_dir", None, "Where results.{json,csv,md} and best_worst.png go.")
flags.DEFINE_integer("tile", 0, "Tile side for exact tiled inference; 0 = auto from the memory budget.", lower_bound=0)
flags.DEFINE_integer("limit", None, "Only the first N photos (sorted by name), for quick checks.", lower_bound=1)
flags.DEFINE_bool("save_enhanced", False, "Also write the enhanced photos to <output_dir>/enhanced.")
flags.mark_flag_as_required("output_dir")
flags.register_multi_flags_validator(
    ["pretrained", "checkpoint", "outputs"], lambda f: sum(f[k] is not None for k in f) == 1,
    message="give exactly one of --pretrained, --checkpoint and --outputs")
flags.register_multi_flags_validator(
    ["outputs", "source"], lambda f: f["outputs"] is not None or f["source"] is not None,
    message="--source is required unless --outputs is given")
FLAGS = flags.FLAGS


def main(argv):
    cli.start(argv)
    # Before the model loads and any photo is scored.
    image_paths.check_output_dir(FLAGS.output_dir)
    evaluate.check_inputs({"--source": FLAGS.source, "--reference": FLAGS.reference, "--outputs": FLAGS.outputs,
                             "--target": FLAGS.target}, FLAGS.output_dir)
    likeness = None
    if FLAGS.target is not None:  # fitted before the model loads: a target without usable photos is a flag error
        target = no_reference.target_for_flag(FLAGS.target, FLAGS.output_dir)
        print(f"target: {target.describe()}")
        likeness = no_reference.Likeness(target)
    generator = None
    if FLAGS.outputs is None:
        generator, what = loading.generator_for_flags(
            checkpoint=FLAGS.checkpoint, pretrained_name=FLAGS.pretrained, weights_dir=FLAGS.weights_dir)
        print(f"model: {what}")
    result = evaluate.evaluate(
        generator, FLAGS.source, FLAGS.reference, outputs_folder=FLAGS.outputs, tile=FLAGS.tile or None,
        limit=FLAGS.limit, save_enhanced_to=f"{FLAGS.output_dir}/enhanced" if FLAGS.save_enhanced else None,
        exclude=[FLAGS.output_dir], visit=likeness)
    if likeness is not None:
        result.no_reference = likeness.section()
    paths = evaluate.write_results(result, FLAGS.output_dir)
    for s in result.skipped:
        print(f"skipped {s['name']}: {s['reason']}")
    print(result.summary())
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0 if result.rows else 1


if __name__ == "__main__":
    cli.run(main)
