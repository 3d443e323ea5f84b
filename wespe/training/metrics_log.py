"""What a training run logs as it goes: ``metrics.jsonl``, TensorBoard events and the sample PNGs.

A resumed run first rewinds them to the step it resumes from (:func:`rewind_metrics`, TensorBoard's
``purge_step``), so that its logs read as those of one uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from wespe.atomic_write import atomic_write
from wespe.training import visualize

logger = logging.getLogger(__name__)

SAMPLES = "samples"  # the folder of the sample PNGs; created when the training loop starts


def rewind_metrics(path: Path, step: int) -> int:
    """Drop the lines of ``metrics.jsonl`` logged after ``step`` (and a torn last line), atomically. Returns how
    many lines were dropped; a missing file is left missing."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            logged = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            logged = None  # torn by a kill mid-write
        if logged is not None and logged <= step:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        with atomic_write(path) as f:
            f.write("".join(kept).encode())
        logger.info("metrics.jsonl: dropped %d line(s) logged after step %d by the interrupted run", dropped, step)
    return dropped


class RunWriters:
    """metrics.jsonl, TensorBoard and sample PNGs, written by process 0 only (``enabled``)."""

    def __init__(self, workdir: Path, enabled: bool, start_step: int = 0):
        """``start_step``: the step training (re)starts from; lines and events logged after it by an earlier,
        interrupted process are dropped, so a resumed run's logs read as one uninterrupted run's."""
        self.enabled = enabled
        if not enabled:
            return
        (workdir / SAMPLES).mkdir(parents=True, exist_ok=True)
        rewind_metrics(workdir / "metrics.jsonl", start_step)
        self.jsonl = open(workdir / "metrics.jsonl", "a")  # noqa: SIM115 - open for the whole run; close() shuts it
        from tensorboardX import SummaryWriter
        # purge_step: TensorBoard hides the events at and after it that earlier writers left in the log folder
        self.tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        self.samples = workdir / SAMPLES

    def scalars(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, "time": round(time.time(), 3), **metrics}) + "\n")
        self.jsonl.flush()
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)

    def grid(self, step: int, grid: np.ndarray) -> Path | None:
        if not self.enabled:
            return None
        path = self.samples / f"step_{step}.png"
        visualize.save_png(grid, path)
        self.tb.add_image("samples", grid, step, dataformats="HWC")
        self.tb.flush()
        return path

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()
