"""wespe_plus: the recommended unpaired recipe (WESPE's losses, plus what makes a trained G improve photos).

    python launch/train.py --config=experiments/wespe_plus.py --source=phone_dir --target=dslr_dir \
        --workdir=runs/plus --config.vgg_weights=imagenet-vgg-verydeep-19.mat

Each departure from the paper preset is a config switch (wespe/config.py), measured on the built-in demo and the
quality benchmark (README: Results):
  * generator.output=residual: G(x) = colour(x) + r(x) with r's last conv zero-initialised: training starts
    at the input's quality (the official output starts as a grey image the cycle must first turn into a photo);
  * generator.global_color=base_affine: white balance, exposure and contrast are one 3x4 colour map for the whole
    photo (not local conv decisions on 100 px patches: the blotchy false colour), applied to a Gaussian base
    layer while the fine detail passes through, so restoring contrast does not also multiply sensor noise and
    JPEG artefacts by the same gains;
  * color_init=bandpass, optimizer.global_color_lr_scale=0: that map is fitted to the two sets (up to 128 whole
    photos a side, wespe.training.color_pool) and fixed: per-channel gains from the ratio of their band-pass contrast,
    offsets that send the source's mean and black point onto the target's. Learned from batches (a colour GAN,
    or a colour-distribution loss between eight patches a step) it wandered with the content of each batch, by
    2-4 dB of held-out PSNR between steps and seeds; the per-channel mean/std transfer (color_init=moments)
    takes the scenes' layout for contrast (0.1 to 4 dB worse on seven cameras). No colour GAN (weights.color=0);
  * weights.tv=0: TV drove the residual to smear texture once contrast was restored (-0.7 dB at 10);
  * weights.residual_lowpass: the conv residual may change detail, not paint colour;
  * ema_decay: samples, export and evaluation use the moving average of G's weights;
  * generator.init=he: the residual path's hidden layers start at unit scale (the official 0.01 init
    leaves them near zero for hundreds of steps);
  * weights.restoration=10: what a colour map cannot fix (sensor noise, blur, JPEG blocks) is learned from
    paired examples made from the clean target photos: the source camera's blur, noise and JPEG quality are
    fitted to the two sets at the start of a run (wespe/degradation.py, workdir/degradation.json), and G learns
    to undo them (|G(D(y)) - y|). Without it the trained network added 0.00 dB to its colour start; with it, on
    a noisy phone-like camera, +0.7 dB in 300 laptop steps and +1.0 dB in 1,500 (README: Results);
  * generator.norm=none: with instance norm in G's blocks, what G learns on patches made whole photos worse (a
    norm over a patch's statistics is not one over a photo's: launch/benchmark.py --mode=restoration_probe);
    without it, tiled inference of large photos also needs no statistics pass.
"""

from wespe.config import wespe_plus


def get_config():
    return wespe_plus()
