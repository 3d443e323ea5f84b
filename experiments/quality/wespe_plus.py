"""Quality benchmark preset: the recommended recipe (experiments/wespe_plus.py) at the demo's laptop scale.

    python launch/quality.py --output_dir=runs/quality      # this file, wespe_paper.py and dped_paired.py here
"""

from wespe.config import laptop_scale, wespe_plus


def get_config():
    return laptop_scale(wespe_plus())
