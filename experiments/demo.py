"""Built-in demo: the recommended recipe (experiments/wespe_plus.py) at laptop scale; no data or weights to download.

    python launch/train.py --config=experiments/demo.py --workdir=runs/demo
    python launch/train.py --config=experiments/demo.py --workdir=runs/mine --source=phone_dir --target=dslr_dir

Built-in data (wespe/training/demo.py): halves of scikit-image photos, degraded by a documented camera model on the
source side and clean on the target side, and a held-out photo (the cat) with its clean reference, so the run logs
held-out PSNR / SSIM as it trains and ends with demo_grid.png (input | G(input) | clean) and demo_result.json.
Given --source and --target, the same recipe trains on those folders instead (add
--config.data.heldout=... [--config.data.heldout_reference=...] to watch your own held-out photos).

wespe_plus's switches (experiments/wespe_plus.py says why each is on), scaled by wespe.config.laptop_scale: 300
steps of width-16, 2-block networks on 48 px patches, batch 8, EMA 0.99, random VGG-19 with content on relu1_2.
"""

from wespe.config import laptop_scale, wespe_plus


def get_config():
    c = laptop_scale(wespe_plus())
    c.data.builtin = "demo"
    return c
