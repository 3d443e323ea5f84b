"""Enhance photo files with a generator: read, run, write in the same format; a bad file is reported, not fatal.

:func:`enhance_files` is the loop behind ``launch/enhance.py``: every photo named by the inputs (files, or
folders searched recursively, see :func:`wespe.image_paths.plan_outputs`) is read upright as 8-bit RGB
(:func:`wespe.image_io.read_image`), enhanced at full size by :func:`wespe.inference.enhance.enhance`, converted with
``round(clip(y, 0, 1) * 255)`` and written under the output folder with the same relative path, file name and
format, EXIF (orientation 1) and ICC profile kept. With ``save_raw`` the unclipped float32 output is also saved
as ``<stem>.npy`` beside it.

Nothing already in the output folder is replaced unless ``overwrite``: a photo one of whose output files (the
photo, or its ``.npy`` with ``save_raw``) exists is skipped with a line naming that file, so running the same
command again resumes an interrupted folder run.

A file that cannot be read, enhanced or written is logged with the reason and skipped; the others are still
done. On an accelerator the next photo is decoded and the previous one written in background threads while one
computes (:mod:`wespe.inference.file_pipeline`); the progress bar shows photos and megapixels per second. Problems found
before any work (a missing input, no photo at all, two inputs that would be written to the same output, an output
that would overwrite its input, an output folder that is an input folder) raise instead (:func:`plan`).

The generator comes from :mod:`wespe.inference.loading` (``launch/enhance.py``:
:func:`wespe.inference.loading.generator_for_flags`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wespe import image_io, image_paths
from wespe.atomic_write import atomic_write
from wespe.errors import UserError
from wespe.inference import file_pipeline
from wespe.inference.enhance import enhance
from wespe.models import Generator

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class EnhanceReport:
    """Outcome of :func:`enhance_files`: ``enhanced`` holds (input, output) pairs, ``skipped`` (input, the output
    file already there) the photos left alone, ``failed`` (input, reason)."""

    enhanced: list[tuple[Path, Path]] = dataclasses.field(default_factory=list)
    failed: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    skipped: list[tuple[Path, Path]] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        skipped = f"{len(self.skipped)} skipped (output exists), " if self.skipped else ""
        return f"{len(self.enhanced)} enhanced, {skipped}{len(self.failed)} failed"

    @property
    def ok(self) -> bool:
        """Some photo has its output: enhanced now, or already there (a resumed run over a finished folder)."""
        return bool(self.enhanced or self.skipped)


def raw_path(output: Path) -> Path:
    """Where ``save_raw`` puts the float32 output of the photo written to ``output``: ``<stem>.npy`` beside it."""
    return output.with_suffix(".npy")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as f:
        np.save(f, array)


def _check_raw_paths(pairs: Sequence[tuple[Path, Path]]) -> None:
    taken = {image_paths.resolved(output): source for source, output in pairs}
    for source, output in pairs:
        key = image_paths.resolved(raw_path(output))
        if key in taken:
            raise UserError(f"--save_raw: the raw output {raw_path(output)} of {source} clashes with the output "
                             f"of {taken[key]} (same name, different extension); enhance them separately")
        taken[key] = source


def output_files(output: Path, *, save_raw: bool) -> list[Path]:
    """Every file :func:`enhance_files` writes for the photo whose output is ``output``."""
    return [output, raw_path(output)] if save_raw else [output]


def existing_output(output: Path, *, save_raw: bool) -> Path | None:
    """The first of the photo's output files already there, or None. A file or a link (even a broken one)
    counts; a folder in the way does not: it is no earlier output, and writing there fails and is reported."""
    return next((path for path in output_files(output, save_raw=save_raw)
                 if os.path.isfile(path) or os.path.islink(path)), None)


def plan(inputs: Sequence[str | os.PathLike], output_dir: str | os.PathLike, *, save_raw: bool = False
         ) -> list[tuple[Path, Path]]:
    """The ``(photo, output)`` pairs :func:`enhance_files` will write, checked before any work (cheap: call it
    before loading a model). Raises :class:`wespe.errors.UserError` for a missing input, an output folder that
    cannot be one or that is an input folder (or holds one), clashing outputs, or no photo at all in
    ``inputs``."""
    inputs = list(inputs)
    pairs = image_paths.plan_outputs(inputs, output_dir)
    if not pairs:
        raise UserError(f"no photo found in {', '.join(map(str, inputs))} (looked for "
                        f"{' '.join(sorted(image_io.IMAGE_EXTENSIONS))}, in folders recursively)")
    if save_raw:
        _check_raw_paths(pairs)
    return pairs


def enhance_files(generator: Generator, inputs: Sequence[str | os.PathLike], output_dir: str | os.PathLike, *,
                  tile: int | None = None, memory_budget_mb: float | None = None, devices: Sequence | None = None,
                  save_raw: bool = False, overwrite: bool = False, progress: bool = True) -> EnhanceReport:
    """Enhance every photo named by ``inputs`` into ``output_dir`` (see the module docstring); returns the report.

    ``tile``, ``memory_budget_mb``, ``devices``: passed to :func:`wespe.inference.enhance.enhance` (``tile=None``:
    chosen from the memory budget). ``overwrite``: replace output files already there (else their photos are
    skipped).
    ``progress``: show a tqdm bar (images, rate, ETA) on stderr.
    """
    report = EnhanceReport()
    pairs = _skip_existing(plan(inputs, output_dir, save_raw=save_raw), report, save_raw=save_raw,
                           overwrite=overwrite)

    def read(pair: tuple[Path, Path]):
        image, info = image_io.read_image(pair[0])
        if info.format not in image_io.WRITABLE_FORMATS:
            raise image_io.ImageWriteError(f"{pair[0]}: format {info.format} cannot be written back; "
                                           f"supported: {', '.join(sorted(image_io.WRITABLE_FORMATS))}")
        return image, info

    def write(output: Path, raw: np.ndarray, info: image_io.ImageInfo) -> None:
        image_io.write_image(output, image_io.to_uint8(raw), info)
        if save_raw:
            _save_npy(raw_path(output), raw)

    def fail(source: Path, error: BaseException) -> None:
        reason = str(error) if isinstance(error, (image_io.ImageReadError, image_io.ImageWriteError)) \
            else f"{type(error).__name__}: {error}"
        bar.clear()
        logger.error("skipped %s", reason if reason.startswith(str(source)) else f"{source}: {reason}")
        logger.debug("traceback for %s", source, exc_info=error)
        report.failed.append((source, reason))

    def settle(written) -> None:
        for (source, output), error in written:
            if error is None:
                report.enhanced.append((source, output))
            else:
                fail(source, error)

    rate, depth = file_pipeline.Throughput(), file_pipeline.overlap_depth()
    # On an accelerator the next photo is decoded and the previous one written while this one computes.
    with tqdm(total=len(pairs), unit="img", desc="enhancing", dynamic_ncols=True, disable=not progress) as bar, \
            file_pipeline.BackgroundWriter(pending=depth) as writer:
        for (source, output), loaded, error in file_pipeline.read_ahead(pairs, read, ahead=depth):
            if error is None:
                try:
                    image, info = loaded
                    for note in info.notes:
                        logger.info("%s: %s", source, note)
                    raw = np.asarray(enhance(generator, image, tile=tile, memory_budget_mb=memory_budget_mb,
                                             devices=devices), np.float32)
                    writer.submit((source, output), write, output, raw, info)
                    bar.set_postfix({"MP/s": rate.add(*image.shape[:2])}, refresh=False)
                except Exception as e:  # noqa: BLE001 - one bad photo must not stop a folder of good ones
                    error = e
            if error is not None:
                fail(source, error)
            settle(writer.finished())
            bar.update(1)
        settle(writer.close())
    return report


def _skip_existing(pairs: Sequence[tuple[Path, Path]], report: EnhanceReport, *, save_raw: bool, overwrite: bool
                   ) -> list[tuple[Path, Path]]:
    """The pairs to enhance: without ``overwrite``, those none of whose output files exists; each other photo is
    recorded in ``report.skipped`` and named in one line."""
    if overwrite:
        return list(pairs)
    pending = []
    for source, output in pairs:
        existing = existing_output(output, save_raw=save_raw)
        if existing is None:
            pending.append((source, output))
        else:
            logger.warning("skipped %s: %s exists (--overwrite replaces it)", source, existing)
            report.skipped.append((source, existing))
    return pending
