"""Official DPED code parity: paired by file name, content 10, colour 0.5, texture 1, TV 2000, batch 50.

    python launch/train.py --config=experiments/dped_paired.py --workdir=runs/dped_iphone \
        --config.data.dped_root=dped --config.data.dped_phone=iphone \
        --config.vgg_weights=imagenet-vgg-verydeep-19.mat
    # or any two folders with matching file names: --source=phone_patches --target=dslr_patches
"""

from wespe.config import dped_code


def get_config():
    c = dped_code()
    c.data.paired = True
    return c
