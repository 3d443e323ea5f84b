"""WESPE paper preset (the default of launch/train.py): unpaired, content 1, colour/texture 5e-3, TV 10, batch 30.

    python launch/train.py --source=phone_dir --target=dslr_dir --workdir=runs/wespe \
        --config.vgg_weights=imagenet-vgg-verydeep-19.mat
"""

from wespe.config import wespe_paper


def get_config():
    return wespe_paper()
