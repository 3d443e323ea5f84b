"""Training curves of several runs side by side (``launch/compare_runs.py``): read each workdir's
``metrics.jsonl``, summarise every loss the runs share, and plot them on common axes.

Used to check that a change meant to leave training alone does (bfloat16 vs float32 compute, a faster kernel):
the runs start from the same seed on the same data, so their curves should overlap up to noise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wespe.errors import PathNotFoundError, UserError

__all__ = ["compare", "plot", "read_metrics"]


def read_metrics(workdir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{key: (steps, values)}`` of a run's ``metrics.jsonl`` (numeric keys only; a torn last line is skipped)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        raise PathNotFoundError(f"{path}: no metrics.jsonl (is {workdir} a training workdir?)")
    series: dict[str, dict[int, float]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = record.get("step")
        for key, value in record.items():
            if key not in ("step", "time") and isinstance(value, (int, float)) and step is not None:
                series.setdefault(key, {})[int(step)] = float(value)
    return {k: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)])) for k, v in series.items()}


def compare(workdirs: Sequence[str | Path], *, tail_fraction: float = 0.2, prefix: str = "loss/") -> dict:
    """Per shared key starting with ``prefix``: each run's mean over the last ``tail_fraction`` of the common
    steps, and the largest relative gap between any run's tail mean and the first run's."""
    runs = [read_metrics(w) for w in workdirs]
    keys = sorted(set.intersection(*(set(r) for r in runs)))
    summary = {}
    for key in (k for k in keys if k.startswith(prefix)):
        common = sorted(set.intersection(*(set(r[key][0].tolist()) for r in runs)))
        if not common:
            continue
        tail = [s for s in common if s >= common[0] + (1 - tail_fraction) * (common[-1] - common[0])]
        means = []
        for r in runs:
            steps, values = r[key]
            means.append(float(np.mean(values[np.isin(steps, tail)])))
        scale = max(abs(means[0]), 1e-12)
        summary[key] = {"tail_means": [float(f"{m:.6g}") for m in means], "steps": [tail[0], tail[-1]],
                        "max_relative_gap": round(max(abs(m - means[0]) / scale for m in means), 4),
                        "finite": all(math.isfinite(m) for m in means)}
    return summary


def plot(workdirs: Sequence[str | Path], out: str | Path, *, labels: Sequence[str] | None = None,
         prefix: str = "loss/") -> Path:
    """One panel per shared ``prefix`` key, one line per run; written to ``out`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_metrics(w) for w in workdirs]
    labels = list(labels) if labels else [Path(w).name for w in workdirs]
    keys = sorted(k for k in set.intersection(*(set(r) for r in runs)) if k.startswith(prefix))
    if not keys:
        raise UserError(f"the runs {list(map(str, workdirs))} share no metric starting with {prefix!r}")
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for r, label in zip(runs, labels):
            ax.plot(*r[key], label=label, linewidth=1)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
