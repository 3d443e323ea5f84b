"""Evaluate an enhancer on a folder of photos: per-image metrics, aggregates, and the files that report them.

:func:`evaluate` has three input modes:

* **model**: ``generator`` given; every source photo is read upright as 8-bit RGB, enhanced at full resolution
  (:func:`wespe.inference.enhance.enhance`, exact tiled inference when ``tile`` is set or the photo exceeds the memory
  budget) and quantised like a saved photo, ``round(clip(y, 0, 1) * 255)``; the metrics are taken on that
  8-bit image, so they equal what ``--outputs`` mode gives for the photos ``launch/enhance.py`` writes.
* **outputs**: ``generator=None`` and ``outputs_folder`` given: a folder of already enhanced photos, evaluated
  as is (``sources``, optional, supplies the inputs for the input-side numbers and the best/worst grid).
* **no reference**: ``reference_folder=None``: only the no-reference metrics (entropy, PNG bits per pixel) of
  the enhanced photos, with the same numbers for the inputs beside them for comparison.

Pairing is :func:`wespe.image_paths.match_pairs`'s, as in paired training: by relative path without extension
(``out/a/0.png`` pairs with ``ref/a/0.jpg``), then the rest by file stem where that is unique on both sides. This is
DPED's test layout as is: ``test_data/patches/<phone>/<n>.jpg`` against ``test_data/patches/canon/<n>.jpg``. A photo
without a reference, a file that cannot be read, two files with the same name but different extensions, and an
output whose size differs from its reference are listed in :attr:`EvalResult.skipped` with the reason, never fatal.
Photos under the ``exclude`` folders (where the results go) and under ``save_enhanced_to`` are never inputs, so a
results folder inside the photo folders does not have its ``best_worst.png`` and enhanced photos scored on a
rerun (the mechanism of :mod:`wespe.image_paths`; :func:`check_inputs` refuses a results folder that *is* an
input folder or holds one).

Metrics (:mod:`wespe.metrics`, on images scaled to [0, 1]): PSNR per image (``inf`` for identical images) and
the DPED convention (PSNR of the MSE pooled over every pixel of the set; pixel-weighted, so it is
:func:`wespe.metrics.psnr_pooled` whenever all images have the same size, as DPED's 100x100 patches do); SSIM on
RGB and on luma; MS-SSIM on every image as the DPED code computes it (below 176 px a side its coarse scales use
a shrunken filter; such rows carry a note); entropy and PNG bits per pixel of the 8-bit output (and input).
Sweeps over many models are :mod:`wespe.evaluation.sweep`.

:func:`write_results` writes ``results.json`` (rows, skipped, aggregates, protocol), ``results.csv`` (per-image
rows, skipped rows, then aggregate rows), ``results.md`` (aggregates as a Markdown table) and ``best_worst.png``
(the 3 best and 3 worst photos by PSNR, or by entropy without a reference: input | enhanced | reference).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from wespe import image_io, image_paths, metrics
from wespe.errors import PathNotFoundError, UserError
from wespe.inference import file_pipeline

logger = logging.getLogger(__name__)

MS_SSIM_MIN_SIDE = 176
THUMBNAIL_SIDE = 256
NUM_BEST_WORST = 3
ROW_FIELDS = ("name", "status", "height", "width", "psnr", "mse", "ssim_rgb", "ssim_luma", "ms_ssim", "entropy",
              "bpp", "input_entropy", "input_bpp", "note")
AGGREGATE_FIELDS = ("psnr_mean", "psnr_pooled", "mse_pooled", "ssim_rgb_mean", "ssim_luma_mean", "ms_ssim_mean",
                    "entropy_mean", "bpp_mean", "input_entropy_mean", "input_bpp_mean")
COUNT_FIELDS = ("num_evaluated", "num_skipped", "num_ms_ssim")

PROTOCOL = {
    "images": "8-bit RGB, scaled to [0, 1]; model outputs quantised as round(clip(y, 0, 1) * 255) before scoring",
    "pairing": "by relative path without extension (DPED: test_data/patches/<phone>/<n> vs .../canon/<n>), then "
               "by a file stem unique on both sides; a name two photos of a side share pairs neither "
               "(wespe.image_paths.match_pairs, as paired training)",
    "psnr_mean": "mean over images of 10*log10(1/MSE_i) (inf for identical images, which makes the mean inf)",
    "psnr_pooled": "DPED convention: 10*log10(1/MSE) with the MSE pooled over all pixels of the set "
                   "(pixel-weighted mean of the per-image MSEs)",
    "ssim": "11-tap Gaussian window, sigma 1.5, K1 0.01, K2 0.03, valid region (= scikit-image "
            "structural_similarity with gaussian_weights=True, use_sample_covariance=False, data_range=1); "
            "ssim_rgb averages the RGB channels, ssim_luma is computed on BT.601 luma",
    "ms_ssim": f"5 scales as Google's msssim.py used by the DPED code, weights {metrics.DPED_MS_SSIM_WEIGHTS}; "
               f"on every image, as the DPED code scores its 100 px test patches: for sides below "
               f"{MS_SSIM_MIN_SIDE} px the coarse scales are smaller than the 11 px filter, which shrinks to "
               f"the scale's size as in msssim.py (such rows carry a note; not comparable with MS-SSIM "
               f"computed only on large images)",
    "entropy": "Shannon entropy (bits) of the 8-bit histogram (wespe.metrics.entropy)",
    "bpp": "bits per pixel of the image written as PNG (wespe.metrics.bits_per_pixel_png)",
    "json": "non-finite numbers are written as Infinity / NaN (Python's json reads them back)",
}


@dataclasses.dataclass
class EvalResult:
    """What :func:`evaluate` found: per-image ``rows``, ``skipped`` (name, path, reason), ``aggregates``."""

    mode: str  # "model" or "outputs"
    has_reference: bool
    rows: list[dict] = dataclasses.field(default_factory=list)
    skipped: list[dict] = dataclasses.field(default_factory=list)
    aggregates: dict = dataclasses.field(default_factory=dict)
    # name -> (input, enhanced, reference) thumbnails (uint8 or None), kept for the best/worst grid only
    thumbnails: dict = dataclasses.field(default_factory=dict, repr=False)
    # likeness to a target camera's photos (wespe.evaluation.no_reference; launch/evaluate.py --target), or None
    no_reference: dict | None = None

    @property
    def ranking_metric(self) -> str:
        return "psnr" if self.has_reference else "entropy"

    def to_json(self) -> dict:
        out = {"mode": self.mode, "has_reference": self.has_reference, "protocol": PROTOCOL,
               "ranking_metric": self.ranking_metric, "aggregates": self.aggregates, "rows": self.rows,
               "skipped": self.skipped}
        if self.no_reference is not None:
            out["no_reference"] = self.no_reference
        return out

    def summary(self) -> str:
        a = self.aggregates
        if self.has_reference:
            head = f"PSNR {_fmt(a.get('psnr_pooled'))} dB (pooled), SSIM {_fmt(a.get('ssim_rgb_mean'))}"
        else:
            head = f"entropy {_fmt(a.get('entropy_mean'))} bits, {_fmt(a.get('bpp_mean'))} bpp"
        return f"{a.get('num_evaluated', 0)} evaluated, {a.get('num_skipped', 0)} skipped: {head}"


# ------------------------------------------------------------------------------------------------ the inputs

def _as_list(inputs) -> list:
    return [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs or [])


def check_inputs(inputs: dict[str, str | os.PathLike | Sequence[str | os.PathLike] | None],
                 output_dir: str | os.PathLike | None = None, output_flag: str = "--output_dir") -> None:
    """Cheap checks of :func:`evaluate`'s inputs before a model loads: each of ``inputs`` (``{flag: a path or a
    list of them, or None}``, e.g. ``{"--source": ..., "--reference": ...}``) exists, and ``output_dir`` (named
    ``output_flag``) is not one of their folders nor holds one (:func:`wespe.image_paths.check_output_apart`).
    Raises :class:`wespe.errors.UserError` naming the flag."""
    for flag, paths in inputs.items():
        for path in _as_list(paths):
            if not os.path.exists(path):
                raise PathNotFoundError(f"{flag}={path} does not exist")
    if output_dir is not None:
        image_paths.check_output_apart(output_dir, {flag: _as_list(paths) for flag, paths in inputs.items()},
                                       output_flag)


# ------------------------------------------------------------------------------------------------- evaluate

def _to_float(image: np.ndarray) -> np.ndarray:
    return (np.asarray(image, np.float32) / 255.0)[None]


def _thumbnail(image: np.ndarray | None) -> np.ndarray | None:
    if image is None:
        return None
    im = Image.fromarray(image)
    im.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    return np.asarray(im)


def _scalar(x) -> float:
    return float(np.asarray(x).reshape(-1)[0])


def _no_reference_metrics(image: np.ndarray) -> tuple[float, float]:
    batch = image[None]
    return _scalar(metrics.entropy(batch)), _scalar(metrics.bits_per_pixel_png(batch))


def _reference_metrics(enhanced: np.ndarray, reference: np.ndarray) -> dict:
    a, b = _to_float(enhanced), _to_float(reference)
    diff = enhanced.astype(np.float64) / 255.0 - reference.astype(np.float64) / 255.0
    row = {"psnr": _scalar(metrics.psnr(a, b)), "mse": float(np.mean(diff * diff)),
           "ssim_rgb": _scalar(metrics.ssim(a, b, channel="rgb")),
           "ssim_luma": _scalar(metrics.ssim(a, b, channel="luma")), "ms_ssim": None}
    try:
        row["ms_ssim"] = _scalar(metrics.ms_ssim(a, b))
    except metrics.MetricShapeError as e:
        row["note"] = f"MS-SSIM not computed: {e}"
        return row
    height, width = enhanced.shape[:2]
    if min(height, width) < MS_SSIM_MIN_SIDE:
        row["note"] = (f"{height}x{width} < {MS_SSIM_MIN_SIDE} px: MS-SSIM's coarse scales use msssim.py's "
                       f"shrunken filter (the DPED code's protocol on its 100 px patches)")
    return row


class _BestWorst:
    """Keeps the thumbnails of the current best and worst ``NUM_BEST_WORST`` photos only (bounded memory)."""

    def __init__(self):
        self.scores: dict[str, float] = {}
        self.thumbs: dict[str, tuple] = {}

    def add(self, name: str, score: float | None, images: tuple) -> None:
        if score is None or math.isnan(score):
            return
        self.scores[name] = score
        self.thumbs[name] = tuple(_thumbnail(x) for x in images)
        keep = set(_best_worst_names(self.scores))
        for other in list(self.thumbs):
            if other not in keep:
                del self.thumbs[other]


def _best_worst_names(scores: dict[str, float]) -> list[str]:
    """Best first, then worst (the worst last); each name once."""
    ordered = sorted(scores, key=lambda k: (-scores[k], k))
    if len(ordered) <= 2 * NUM_BEST_WORST:
        return ordered
    return ordered[:NUM_BEST_WORST] + ordered[-NUM_BEST_WORST:]


def evaluate(generator, sources=None, reference_folder=None, *, outputs_folder=None, tile: int | None = None,
             memory_budget_mb: float | None = None, limit: int | None = None, save_enhanced_to=None,
             exclude: Sequence[str | os.PathLike] = (), progress: bool = True, visit=None) -> EvalResult:
    """Score a generator (``generator``, on ``sources``) or a folder of enhanced photos (``outputs_folder``,
    ``generator=None``) against ``reference_folder`` (or without one). See the module docstring.

    ``sources``: a folder, a file, or a list of them (required in model mode; optional in outputs mode, where it
    gives the inputs). ``tile`` / ``memory_budget_mb``: for :func:`wespe.inference.enhance.enhance`. ``limit``: only the
    first N photos (sorted by name). ``save_enhanced_to``: also write the enhanced photos there (model mode).
    ``exclude``: folders whose photos are never inputs (give the results folder: a rerun then does not score its
    own ``best_worst.png``); ``save_enhanced_to`` is always excluded. ``visit``: called as
    ``visit(name, enhanced, source)`` (8-bit arrays; ``source`` None when there is no input) for every photo
    scored, so a caller can gather more numbers without the photos being kept
    (:class:`wespe.evaluation.no_reference.SetStats`).
    Raises ``ValueError`` for a bad combination of arguments, ``FileNotFoundError`` for a missing folder;
    problems with single photos are reported in the result instead.
    """
    if generator is None and outputs_folder is None:
        raise UserError("give a generator (model mode) or outputs_folder (already enhanced photos)")
    if generator is not None and outputs_folder is not None:
        raise UserError("give a generator or outputs_folder, not both")
    if generator is not None and sources is None:
        raise UserError("model mode needs sources (the photos to enhance)")
    mode = "model" if generator is not None else "outputs"
    result = EvalResult(mode=mode, has_reference=reference_folder is not None)

    exclude = [*exclude, *([save_enhanced_to] if save_enhanced_to is not None else [])]
    source_index, dup = image_paths.index_images(sources, exclude=exclude) if sources is not None else ({}, [])
    result.skipped += dup
    items, dup = (source_index, []) if mode == "model" else image_paths.index_images(outputs_folder, exclude=exclude)
    result.skipped += dup
    # Every photo of the reference folder takes part in the pairing, duplicates included: a name two references
    # share pairs with neither (and is reported as ambiguous).
    found_references = (image_paths.keyed_images(reference_folder, exclude=exclude) if reference_folder is not None
                        else [])
    duplicate_references = {d["name"]: d for d in image_paths.index_keyed(found_references)[1]}
    references = image_paths.partners(items, found_references)
    inputs = image_paths.partners(items, list(source_index.items())) if mode == "outputs" else {}
    if limit is not None:
        items = dict(list(items.items())[:limit])

    best_worst = _BestWorst()
    rate = file_pipeline.Throughput()
    with tqdm(total=len(items), unit="img", desc="evaluating", dynamic_ncols=True, leave=False,
              disable=not progress) as bar:
        def read_input(item):  # model mode, on an accelerator: the next photo decodes while this one computes
            name, path = item
            needed = not result.has_reference or name in references
            return image_io.read_image(path) if generator is not None and needed else None

        for (name, path), loaded, read_error in file_pipeline.read_ahead(items.items(), read_input,
                                                                          ahead=file_pipeline.overlap_depth()):
            try:
                if read_error is not None:
                    raise read_error
                row = _evaluate_one(generator, name, path, inputs, references, duplicate_references,
                                    result.has_reference, tile, memory_budget_mb, save_enhanced_to,
                                    best_worst=best_worst, loaded=loaded, visit=visit)
                result.rows.append(row)
                bar.set_postfix({"MP/s": rate.add(row["height"], row["width"])}, refresh=False)
            except Exception as e:  # noqa: BLE001 - one bad photo must not stop the evaluation
                reason = str(e) if isinstance(e, (image_io.ImageReadError, _Skip)) else f"{type(e).__name__}: {e}"
                bar.clear()
                logger.warning("skipped %s: %s", name, reason)
                logger.debug("traceback for %s", path, exc_info=True)
                result.skipped.append({"name": name, "path": str(path), "reason": reason})
            bar.update(1)
    result.aggregates = aggregate(result.rows, num_skipped=len(result.skipped))
    result.thumbnails = {k: best_worst.thumbs[k] for k in _best_worst_names(best_worst.scores)}
    return result


class _Skip(ValueError):
    """A photo that is reported and skipped (no reference, size mismatch)."""


def _evaluate_one(generator, name, path, inputs, references, duplicate_references, has_reference,
                  tile, memory_budget_mb, save_enhanced_to, *, best_worst, loaded=None, visit=None) -> dict:
    """``inputs`` / ``references``: ``{name: path}`` of the photos paired with the evaluated ones (outputs mode's
    inputs; the references)."""
    reference = None
    if has_reference:  # before the (expensive) enhancement: a missing pair costs nothing
        if name in duplicate_references:
            raise _Skip(f"ambiguous reference: {duplicate_references[name]['reason']}")
        if name not in references:
            raise _Skip(f"no reference image named {name}.* in the reference folder")
    if generator is not None:
        from wespe.inference.enhance import enhance
        source, info = loaded if loaded is not None else image_io.read_image(path)
        enhanced = image_io.to_uint8(enhance(generator, source, tile=tile, memory_budget_mb=memory_budget_mb))
        if save_enhanced_to is not None:
            out = Path(save_enhanced_to) / (name + path.suffix)
            fmt = info.format if info.format in image_io.WRITABLE_FORMATS else None
            image_io.write_image(out if fmt else out.with_suffix(".png"), enhanced, info if fmt else None)
    else:
        enhanced, _ = image_io.read_image(path)
        source = None
        if name in inputs:
            try:
                source, _ = image_io.read_image(inputs[name])
            except image_io.ImageReadError as e:
                logger.warning("input of %s unreadable, input metrics left out: %s", name, e)
    if has_reference:
        reference, _ = image_io.read_image(references[name])
        if reference.shape != enhanced.shape:
            raise _Skip(f"size mismatch: enhanced {enhanced.shape[0]}x{enhanced.shape[1]}, reference "
                        f"{reference.shape[0]}x{reference.shape[1]} ({references[name]})")
    height, width = enhanced.shape[:2]
    row = dict.fromkeys(ROW_FIELDS)
    row.update(name=name, status="ok", height=height, width=width)
    if reference is not None:
        row.update(_reference_metrics(enhanced, reference))
    row["entropy"], row["bpp"] = _no_reference_metrics(enhanced)
    if source is not None:
        row["input_entropy"], row["input_bpp"] = _no_reference_metrics(source)
    best_worst.add(name, row["psnr"] if has_reference else row["entropy"], (source, enhanced, reference))
    if visit is not None:
        visit(name, enhanced, source)
    return row


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def aggregate(rows: Sequence[dict], num_skipped: int = 0) -> dict:
    """The aggregate numbers of :data:`AGGREGATE_FIELDS` from per-image rows (``None`` where nothing to average)."""
    out = {k: None for k in AGGREGATE_FIELDS}
    scored = [r for r in rows if r.get("mse") is not None]
    if scored:
        pixels = np.array([r["height"] * r["width"] for r in scored], np.float64)
        mse = float(np.sum(np.array([r["mse"] for r in scored]) * pixels) / pixels.sum())
        out["mse_pooled"] = mse
        out["psnr_pooled"] = float(10.0 * np.log10(1.0 / mse)) if mse > 0 else math.inf
    for key in ("psnr", "ssim_rgb", "ssim_luma", "ms_ssim", "entropy", "bpp", "input_entropy", "input_bpp"):
        out[f"{key}_mean"] = _mean(r.get(key) for r in rows)
    out["num_evaluated"] = len(rows)
    out["num_skipped"] = num_skipped
    out["num_ms_ssim"] = sum(r.get("ms_ssim") is not None for r in rows)
    return out


# -------------------------------------------------------------------------------------------------- writing

def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


AGGREGATE_LABELS = {
    "psnr_mean": "PSNR, mean per image (dB)", "psnr_pooled": "PSNR, pooled MSE / DPED (dB)",
    "mse_pooled": "MSE, pooled", "ssim_rgb_mean": "SSIM (RGB), mean", "ssim_luma_mean": "SSIM (luma), mean",
    "ms_ssim_mean": "MS-SSIM, mean", "entropy_mean": "entropy (bits), mean", "bpp_mean": "PNG bits/pixel, mean",
    "input_entropy_mean": "input entropy (bits), mean", "input_bpp_mean": "input PNG bits/pixel, mean",
    "num_evaluated": "images evaluated", "num_skipped": "images skipped", "num_ms_ssim": "images with MS-SSIM"}


def write_results(result: EvalResult, output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write results.json, results.csv, results.md and best_worst.png into ``output_dir``; returns their paths."""
    from wespe.atomic_write import atomic_write
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: output_dir / f"results.{k}" for k in ("json", "csv", "md")}

    with atomic_write(paths["json"]) as f:
        f.write((json.dumps(result.to_json(), indent=2) + "\n").encode())

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ROW_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        writer.writerow(row)
    for s in result.skipped:
        writer.writerow({"name": s["name"], "status": "skipped", "note": s["reason"]})
    a = result.aggregates
    aggregate_rows = {"[mean]": {k: a.get(f"{k}_mean") for k in ("psnr", "ssim_rgb", "ssim_luma", "ms_ssim",
                                                                  "entropy", "bpp", "input_entropy", "input_bpp")},
                      "[pooled]": {"psnr": a.get("psnr_pooled"), "mse": a.get("mse_pooled")}}
    if not result.has_reference:
        del aggregate_rows["[pooled]"]
    for name, values in aggregate_rows.items():
        writer.writerow({"name": name, "status": "aggregate", **values,
                         "note": f"{a.get('num_evaluated')} evaluated, {a.get('num_skipped')} skipped"})
    with atomic_write(paths["csv"]) as f:
        f.write(buf.getvalue().encode())

    keys = [k for k in AGGREGATE_FIELDS if a.get(k) is not None] + list(COUNT_FIELDS[:2 + result.has_reference])
    md = [f"# Evaluation ({result.mode} mode, {'with' if result.has_reference else 'no'} reference)\n",
          markdown_table(["metric", "value"], [(AGGREGATE_LABELS[k], a.get(k)) for k in keys])]
    if result.no_reference is not None:
        from wespe.evaluation import no_reference
        md.append("\n" + no_reference.markdown(result.no_reference))
    if result.skipped:
        md.append("\nSkipped:\n")
        md += [f"- `{s['name']}`: {s['reason']}" for s in result.skipped]
        md.append("")
    with atomic_write(paths["md"]) as f:
        f.write("\n".join(md).encode())

    if result.thumbnails:
        paths["png"] = save_best_worst(result, output_dir / "best_worst.png")
    return paths


def save_best_worst(result: EvalResult, path: str | os.PathLike) -> Path:
    """A grid of the best and worst photos (rows) as [input | enhanced | reference] (columns)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.thumbnails)
    metric = result.ranking_metric
    scores = {r["name"]: r[metric] for r in result.rows}
    best = set(names[:NUM_BEST_WORST]) if len(names) > 2 * NUM_BEST_WORST else set(names[:(len(names) + 1) // 2])
    columns = ["input", "enhanced"] + (["reference"] if result.has_reference else [])
    fig, axes = plt.subplots(len(names), len(columns), figsize=(3 * len(columns), 3 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        thumbs = result.thumbnails[name]
        for j, title in enumerate(columns):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            if thumbs[j] is None:
                ax.text(0.5, 0.5, "(not available)", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.imshow(thumbs[j])
            if i == 0:
                ax.set_title(title)
        axes[i, 0].set_ylabel(f"{'best' if name in best else 'worst'}: {name}\n{metric} {_fmt(scores[name], 2)}",
                              fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------- generators
