"""Every checkpoint of one training run: metric vs step.

    python launch/sweep.py --sweep=experiments/sweeps/run_checkpoints.py --workdir=runs/demo \
        --source=photos/ [--reference=clean/] --output_dir=sweeps/demo

The run comes from --workdir (the cell takes the shared workdir); each checkpoint step is one cell.
"""


def get_sweep():
    return {
        "workdir": None,  # --workdir
        "source": None,  # --source
        "reference": None,
        "cells": [{"name": "run", "steps": "all"}],
    }
