"""Which folders a training run reads: the folder flags checked, then resolved to the run's four folders.

:func:`check_folders` is the one check of the folder flags (``--source``, ``--target``, ``--config.data.heldout``,
``--config.data.heldout_reference``, ``--config.data.dped_root``) and of how they combine; the loop calls it once,
before the workdir is written. :func:`resolve_folders` then names the run's source, target, held-out and held-out
reference folders from the flags, the DPED layout or the built-in demo (whose photos it writes into the workdir).
:func:`usable_files` hands a training folder on as the data scan's list of its usable files, so that nothing
after the scan lists or reads a file the scan skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import ml_collections

from wespe.training import scan


class RunFolders(NamedTuple):
    source: str
    target: str
    heldout: str  # the photos of the sample grids and of the held-out quality numbers
    heldout_reference: str | None  # clean versions of the held-out photos, paired by name


def check_folders(config: ml_collections.ConfigDict) -> None:
    """The folder settings' mistakes that can be found without writing anything (before the workdir is made)."""
    d = config.data
    for key in ("source", "target", "heldout", "heldout_reference", "dped_root"):
        if d[key]:
            scan.check_folder(d[key], f"--{key}" if key in ("source", "target") else f"--config.data.{key}")
    if d.dped_root and (d.source or d.target):  # one would be silently ignored
        raise scan.DataError("give either --source/--target or --config.data.dped_root (the DPED layout), "
                             "not both")
    if d.heldout_reference and not d.heldout:
        raise scan.DataError("--config.data.heldout_reference needs --config.data.heldout (the photos the "
                             "references belong to)")
    if d.builtin and bool(d.source) != bool(d.target):
        raise scan.DataError("give both --source and --target to train the built-in config on your own "
                             "folders (only one was given)")
    if d.builtin and d.builtin != "demo":
        raise scan.DataError(f"--config.data.builtin={d.builtin!r}: the only built-in data set is 'demo'")


def trains_on_builtin_demo(config: ml_collections.ConfigDict) -> bool:
    """Whether the run trains on the built-in demo photos: ``data.builtin='demo'`` without ``--source`` and
    ``--target`` (given both, the demo's recipe trains on those folders instead)."""
    return config.data.builtin == "demo" and not config.data.source


def resolve_folders(config: ml_collections.ConfigDict, workdir: Path) -> RunFolders:
    """The source, target, held-out and held-out reference folders from flags/config, the DPED layout, or the
    built-in demo (its photos are written under ``workdir``). ``--source`` and ``--target`` (both) win over
    ``data.builtin``: the demo's recipe then trains on the user's folders (with their own held-out folder, if
    any). The flags are :func:`check_folders`'s to check, before this runs."""
    d = config.data
    if trains_on_builtin_demo(config):
        from wespe.training import demo
        source, target = demo.prepare(workdir / "demo_data", seed=config.seed)
        if d.heldout:
            return RunFolders(source, target, d.heldout, d.heldout_reference)
        heldout = workdir / "demo_data" / "heldout"
        return RunFolders(source, target, str(heldout / "degraded"), str(heldout / "clean"))
    if d.dped_root:
        source, target = (str(p) for p in scan.dped_folders(d.dped_root, d.dped_phone))
    elif not d.source or not d.target:
        raise scan.DataError("both --source and --target folders are needed (or --config.data.dped_root, "
                             "or --config=experiments/demo.py for the built-in demo)")
    else:
        source, target = d.source, d.target
    return RunFolders(source, target, d.heldout or source, d.heldout_reference)


def usable_files(folder: str, report: scan.DataReport) -> list[str] | None:
    """The data scan's usable files of ``folder`` when it is one of the training folders (the held-out folder
    defaults to the source one), else None: a folder the scan did not cover is listed by its reader."""
    for side in ("source", "target"):
        if Path(folder).resolve() == Path(report[side]["folder"]).resolve():
            return report[side]["used"]
    return None
