"""The official DPED pretrained generators: their names, files and variable names.

DPED (github.com/aiff22/DPED, folder ``models_orig/``) ships one generator per phone as a TensorFlow 1.x
checkpoint (read by :mod:`wespe.inference.tf_checkpoint`). This module says where a name's files are
(:func:`checkpoint_prefix`) and which official variable fills which parameter of :class:`wespe.models.Generator`
(:func:`dped_variable_map`); :func:`wespe.inference.loading.load_dped_generator` puts the two together.
"""

from __future__ import annotations

import os
from pathlib import Path

from wespe.inference.tf_checkpoint import TFCheckpointError

# Name accepted by wespe.inference.loading.load_dped_generator -> file stem of the official checkpoint in DPED's
# models_orig/.
PRETRAINED = {
    "dped_iphone": "iphone_orig",
    "dped_blackberry": "blackberry_orig",
    "dped_sony": "sony_orig",
}

WEIGHTS_HELP = (
    "The official DPED generators are the files <phone>_orig.index and <phone>_orig.data-00000-of-00001 "
    "(phone = iphone, blackberry or sony) in the folder models_orig/ of the DPED repository "
    "(https://github.com/aiff22/DPED). Download them into one folder and pass that folder with --weights_dir "
    "(weights_dir= in Python).")

def dped_variable_map(num_blocks: int = 4) -> dict[str, tuple[str, ...]]:
    """Official DPED variable name -> attribute path of the parameter in :class:`wespe.models.Generator`.

    ``W1/b1`` -> ``conv_in``; ``W2..W(2n+1)`` -> ``blocks[i].conv1/conv2``; the next two -> ``conv_mid1/2``;
    the last -> ``conv_out``. The k-th instance norm (after conv ``W(k+2)``) has shift ``Variable_{2k}``
    (``Variable`` for k = 0) and scale ``Variable_{2k+1}``.
    """
    convs = [("conv_in",)]
    for i in range(num_blocks):
        convs += [("blocks", i, "conv1"), ("blocks", i, "conv2")]
    convs += [("conv_mid1",), ("conv_mid2",), ("conv_out",)]
    mapping = {}
    for j, module in enumerate(convs, start=1):
        mapping[f"generator/W{j}"] = (*module, "kernel")
        mapping[f"generator/b{j}"] = (*module, "bias")
    for k in range(2 * num_blocks):
        module = ("blocks", k // 2, "norm1" if k % 2 == 0 else "norm2")
        mapping["generator/Variable" if k == 0 else f"generator/Variable_{2 * k}"] = (*module, "shift")
        mapping[f"generator/Variable_{2 * k + 1}"] = (*module, "scale")
    return mapping


def checkpoint_prefix(name_or_prefix: str | os.PathLike, weights_dir: str | os.PathLike | None = None) -> str:
    """Resolve a :data:`PRETRAINED` name (inside ``weights_dir``) or an explicit checkpoint prefix to a prefix
    whose ``.index`` file exists; otherwise raise :class:`TFCheckpointError` saying where to get it."""
    name = str(name_or_prefix)
    if name in PRETRAINED:
        stem = PRETRAINED[name]
        if weights_dir is None or str(weights_dir) == "":
            raise TFCheckpointError(f"pretrained generator {name!r} needs the folder holding {stem}.index and "
                                        f"{stem}.data-00000-of-00001, but no weights_dir was given. {WEIGHTS_HELP}")
        if not os.path.isdir(weights_dir):
            raise TFCheckpointError(f"weights_dir {weights_dir} does not exist (looking for {name!r}). "
                                        f"{WEIGHTS_HELP}")
        prefix = str(Path(weights_dir) / stem)
    else:
        prefix = name[:-len(".index")] if name.endswith(".index") else name
        if weights_dir is not None and not os.path.isabs(prefix) and not os.path.isfile(prefix + ".index"):
            prefix = str(Path(weights_dir) / prefix)
    if not os.path.isfile(prefix + ".index"):
        known = ", ".join(sorted(PRETRAINED))
        what = "" if name in PRETRAINED else (f" ({name!r} is not one of the pretrained names {known}, so it is "
                                              "taken as a checkpoint prefix)")
        raise TFCheckpointError(f"checkpoint file {prefix}.index does not exist{what}. {WEIGHTS_HELP}")
    folder, stem = os.path.split(prefix)
    if not any(f.startswith(stem + ".data-") for f in os.listdir(folder or ".")):
        raise TFCheckpointError(f"checkpoint data file {prefix}.data-00000-of-00001 does not exist (it belongs "
                                    f"next to {prefix}.index). {WEIGHTS_HELP}")
    return prefix
