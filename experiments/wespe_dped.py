"""WESPE on the DPED dataset, used unpaired: source = <root>/<phone>/training_data/<phone>, target = .../canon.

    python launch/train.py --config=experiments/wespe_dped.py --workdir=runs/wespe_dped_iphone \
        --config.data.dped_root=dped --config.data.dped_phone=iphone \
        --config.vgg_weights=imagenet-vgg-verydeep-19.mat
"""

from wespe.config import wespe_paper


def get_config():
    c = wespe_paper()
    c.data.dped_root = "dped"
    c.data.dped_phone = "iphone"  # iphone | blackberry | sony
    c.data.paired = False
    return c
