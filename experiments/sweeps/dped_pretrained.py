"""The three official DPED generators on the same photos; no reference by default (entropy and bpp only).

    python launch/sweep.py --sweep=experiments/sweeps/dped_pretrained.py --source=photos/ \
        --weights_dir=models_orig --output_dir=sweeps/dped_pretrained [--reference=...]

The defaults are DPED's own layout (its repo's models_orig/ and full-size test photos); --source,
--weights_dir and --reference override them.
"""


def get_sweep():
    return {
        "source": "dped/iphone/test_data/full_size_test_images",
        "reference": None,
        "weights_dir": "models_orig",
        "cells": [{"name": name, "pretrained": name} for name in ("dped_iphone", "dped_blackberry", "dped_sony")],
    }
