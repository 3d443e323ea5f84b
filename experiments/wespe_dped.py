"""WESPE on the DPED dataset, used unpaired: source = <root>/<phone>/training_data/<phone>, target = .../canon.

    python launch/train.py --config=experiments/wespe_dped.py --workdir=runs/wespe_dped_iphone \
        --config.data.dped_root=dped --config.data.dped_phone=iphone \
        --config.vgg_weights=imagenet-vgg-verydeep-19.mat
    # or any two folders: --source=phone_dir --target=dslr_dir

The root is the command's (--config.data.dped_root): a root set here made --source/--target fail when ./dped did
not exist, and be ignored for ./dped's photos when it did.
"""

from wespe.config import wespe_paper


def get_config():
    c = wespe_paper()
    c.data.dped_phone = "iphone"  # iphone | blackberry | sony
    c.data.paired = False
    return c
