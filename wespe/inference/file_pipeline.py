"""A folder of photos through a model with the file work off the critical path: the next photo is decoded and
the previous one encoded and written in background threads while the current one computes.

On a GPU decoding and encoding a large photo on one core take far longer than the network, so the file work is
most of the time; on a CPU the network takes far longer and keeps every core busy, so the work stays inline
(:func:`overlap_depth`; timings: the README's Benchmarks). Both threads hold at most a couple of photos
(``ahead`` / ``pending``), so memory stays bounded on any folder size. Errors stay with their photo: a photo that
cannot be read or written is reported by the caller and the others go on.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


def read_ahead(items: Iterable, read: Callable[[Any], Any], ahead: int = 1
               ) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """``(item, read(item), None)`` or ``(item, None, error)`` for each item, in order; ``read`` runs in one
    background thread, at most ``ahead`` items before the one being consumed."""
    if ahead == 0:  # inline, in the caller's thread
        for item in items:
            try:
                value = read(item)
            except Exception as e:  # noqa: BLE001 - the caller reports it with its photo
                yield item, None, e
            else:
                yield item, value, None
        return
    iterator = iter(items)
    queued: collections.deque[tuple[Any, Future]] = collections.deque()
    with ThreadPoolExecutor(1, thread_name_prefix="wespe-read") as pool:
        def fill(size: int):
            while len(queued) < size:
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                queued.append((item, pool.submit(read, item)))

        fill(ahead + 1)
        while queued:
            item, future = queued.popleft()
            fill(ahead)  # the next read starts before this one is handed out
            try:
                yield item, future.result(), None
            except Exception as e:  # noqa: BLE001 - the caller reports it with its photo
                yield item, None, e


class BackgroundWriter:
    """Runs write jobs in one background thread, in submission order, with at most ``pending`` waiting (a
    submit beyond that waits for the oldest): ``with BackgroundWriter() as w: w.submit(key, fn, *args)``.
    :meth:`finished` hands out ``(key, error or None)`` of the jobs done so far, :meth:`close` of all."""

    def __init__(self, pending: int = 2):
        self.pending = pending
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="wespe-write")
        self._jobs: collections.deque[tuple[Any, Future]] = collections.deque()
        self._done: list[tuple[Any, BaseException | None]] = []

    def submit(self, key: Any, fn: Callable, *args) -> None:
        if self.pending == 0:  # inline, in the caller's thread
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - reported with its key
                self._done.append((key, e))
            else:
                self._done.append((key, None))
            return
        while len(self._jobs) >= self.pending:
            self._collect(self._jobs.popleft())
        self._jobs.append((key, self._pool.submit(fn, *args)))

    def _collect(self, job: tuple[Any, Future]) -> None:
        key, future = job
        self._done.append((key, future.exception()))  # waits for it

    def finished(self) -> list[tuple[Any, BaseException | None]]:
        while self._jobs and self._jobs[0][1].done():
            self._collect(self._jobs.popleft())
        done, self._done = self._done, []
        return done

    def close(self) -> list[tuple[Any, BaseException | None]]:
        while self._jobs:
            self._collect(self._jobs.popleft())
        self._pool.shutdown()
        return self.finished()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def overlap_depth() -> int:
    """How many photos to read ahead and write behind: 1 where the model runs on an accelerator, 0 (inline) on
    CPU: XLA:CPU already keeps every core busy, so a decode beside it only competes for them (overlapping was
    no faster there and held more memory)."""
    import jax
    return 0 if jax.default_backend() == "cpu" else 1


class Throughput:
    """Megapixels per second since the first photo started, for a progress bar's postfix."""

    def __init__(self):
        self.start, self.pixels = time.perf_counter(), 0

    def add(self, height: int, width: int) -> str:
        self.pixels += height * width
        return f"{self.pixels / 1e6 / max(time.perf_counter() - self.start, 1e-9):.3g}"
