"""Per-stage timings of a loader's epoch, and the data-stall fraction.

NOTE [ Telemetry ]

With ``DataLoader(telemetry=True)`` every batch carries how long its stages took:

* ``fetch``: the dataset's ``__getitem__`` calls for the batch (in the worker);
* any stage the dataset reports itself with :func:`stage` (e.g. ``"decode"``), nested
  in ``fetch``;
* ``collate``: collating and writing the batch into its shared-memory slot;
* ``transfer``: receiving it in the main process (message, slot mapping, tensors);
* ``pin`` and ``h2d``: pinning, and the host side of the copy to the device, where used;
* ``wait``: how long the training loop waited in ``next(loader)``.

``loader.stats()`` sums them over the current (or last) epoch, with percentiles, and
gives batches/s, samples/s and the **data-stall fraction**: the share of the training
loop's wall time (from its first request for a batch to now or to the epoch's end) spent
waiting for batches. Near 1, training is data-bound; near 0, the loader keeps up.
The first batch's wait (starting workers, filling the pipeline) is reported apart as
``startup_s`` and left out of the fraction. Off (the default), nothing is measured.

Times are ``time.perf_counter()`` (CLOCK_MONOTONIC on Linux, shared by all processes), so
worker and main-process spans line up in :meth:`EpochTelemetry.chrome_trace`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

#: spans kept per process for the Chrome trace
TRACE_BATCHES = 256

_active: dict[str, float] | None = None  # the running fetch's reported stages, in this process


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Report a stage of ``__getitem__`` (e.g. ``with fastload.telemetry.stage("decode"):``);
    free when telemetry is off."""
    if _active is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        _active[name] = _active.get(name, 0.0) + time.perf_counter() - start


@contextlib.contextmanager
def collecting(into: dict[str, float]) -> Iterator[None]:
    """Within this block, :func:`stage` adds to ``into`` (one batch's fetch)."""
    global _active
    previous, _active = _active, into
    try:
        yield
    finally:
        _active = previous


@dataclass(frozen=True)
class StageStats:
    """One stage over an epoch: how many batches, their total, and per-batch percentiles (ms)."""

    count: int
    total_s: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float


@dataclass(frozen=True)
class LoaderStats:
    epoch: int
    batches: int
    samples: int
    #: the training loop's wall time since its first batch arrived (startup excluded)
    wall_s: float
    startup_s: float
    #: rates over ``wall_s``: the batches after the first one
    batches_per_s: float
    samples_per_s: float
    #: share of ``wall_s`` spent waiting for batches
    stall_fraction: float
    stages: dict[str, StageStats]

    def __str__(self) -> str:
        lines = [f"epoch {self.epoch}: {self.batches} batches, {self.samples} samples in {self.wall_s:.2f}s "
                 f"(+{self.startup_s:.2f}s startup): {self.batches_per_s:.1f} batches/s, "
                 f"{self.samples_per_s:.1f} samples/s, data stall {self.stall_fraction:.1%}",
                 f"{'stage':<10} {'batches':>8} {'total s':>9} {'mean ms':>9} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9}"]
        for name, s in self.stages.items():
            lines.append(f"{name:<10} {s.count:>8} {s.total_s:>9.3f} {s.mean_ms:>9.2f} {s.p50_ms:>9.2f} "
                         f"{s.p90_ms:>9.2f} {s.p99_ms:>9.2f}")
        return "\n".join(lines)


@dataclass
class EpochTelemetry:
    """What the main process gathers over one epoch."""

    epoch: int
    durations: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    samples: int = 0
    first_request: float | None = None
    started: float | None = None  # when the first batch arrived: the wall clock starts
    last_return: float | None = None
    startup: float = 0.0
    #: (name, pid, start, end) spans for the Chrome trace, the last TRACE_BATCHES per process
    spans: dict[int, collections.deque[tuple[str, float, float]]] = field(default_factory=dict)

    def add(self, timings: dict[str, float], samples: int = 0) -> None:
        for name, seconds in timings.items():
            self.durations[name].append(seconds)
        self.samples += samples

    def span(self, name: str, pid: int, start: float, end: float) -> None:
        self.spans.setdefault(pid, collections.deque(maxlen=TRACE_BATCHES * 4)).append((name, start, end))

    def waited(self, start: float, end: float) -> None:
        """The training loop asked for a batch at ``start`` and got it at ``end``."""
        if self.started is None:
            self.first_request, self.started, self.startup = start, end, end - start
        else:
            self.durations["wait"].append(end - start)
        self.last_return = end
        self.span("wait", os.getpid(), start, end)

    def stats(self, now: float | None = None, finished: bool = False) -> LoaderStats:
        end = self.last_return if finished or now is None else now
        wall = 0.0 if self.started is None or end is None else max(0.0, end - self.started)
        waits = self.durations.get("wait", [])
        batches = len(waits) + (self.started is not None)
        stages = {}
        for name, values in self.durations.items():
            ordered = sorted(values)
            stages[name] = StageStats(
                count=len(values), total_s=sum(values), mean_ms=1e3 * statistics.fmean(values),
                p50_ms=1e3 * _quantile(ordered, 0.5), p90_ms=1e3 * _quantile(ordered, 0.9),
                p99_ms=1e3 * _quantile(ordered, 0.99),
            )
        steady = len(waits) / wall if wall else 0.0  # the batches that arrived within `wall`
        return LoaderStats(
            epoch=self.epoch, batches=batches, samples=self.samples, wall_s=wall, startup_s=self.startup,
            batches_per_s=steady, samples_per_s=steady * self.samples / batches if batches else 0.0,
            stall_fraction=sum(waits) / wall if wall else 0.0, stages=stages,
        )

    def chrome_trace(self) -> dict[str, Any]:
        """The recent spans as Chrome's trace-event JSON (open in chrome://tracing or Perfetto)."""
        events = []
        for pid, spans in self.spans.items():
            for name, start, end in spans:
                events.append({"name": name, "ph": "X", "pid": pid, "tid": pid, "ts": start * 1e6,
                               "dur": (end - start) * 1e6, "cat": "fastload"})
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def write_chrome_trace(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w") as f:
            json.dump(self.chrome_trace(), f)


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0
