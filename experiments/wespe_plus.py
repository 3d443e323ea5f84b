"""wespe_plus: the recommended unpaired recipe (WESPE's losses, plus what makes a trained G improve photos).

    python launch/train.py --config=experiments/wespe_plus.py --source=phone_dir --target=dslr_dir \
        --workdir=runs/plus --config.vgg_weights=imagenet-vgg-verydeep-19.mat

Each departure from the paper preset is a config switch (wespe/config.py), measured on the built-in demo and the
quality benchmark (README: Results):
  * generator.output=residual: G(x) = colour(x) + r(x) with r's last conv zero-initialised: training starts
    at the input's quality (the official output starts as a grey image the cycle must first turn into a photo);
  * generator.global_color=affine with a 100x learning rate: white balance, exposure and contrast are one 3x4
    colour matrix for the whole photo, reachable in a few hundred steps, instead of local conv decisions on
    100 px patches (the blotchy false colour);
  * weights.color_distribution: the colours of blurred G(x) match the target photos' (sliced Wasserstein)
    instead of the colour GAN (weights.color=0), which is noisy and paints local patches early on;
  * weights.residual_lowpass: the conv residual may change detail, not paint colour;
  * ema_decay: samples, export and evaluation use the moving average of G's weights;
  * generator.init=he: the residual path's hidden layers start at unit scale (the official 0.01 init
    leaves them near zero for hundreds of steps).
"""

from wespe.config import wespe_plus


def get_config():
    return wespe_plus()
