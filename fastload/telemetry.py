"""Per-stage timings of a loader's epoch, and the data-stall fraction.

NOTE [ Telemetry ]

With ``DataLoader(telemetry=True)`` every batch carries how long its stages took:

* ``fetch``: the dataset's ``__getitem__`` calls for the batch (in the worker);
* any stage the dataset reports itself with :func:`stage` (fastload's ImageFolder reports
  ``read`` and ``decode``, LidarDataset ``read``, ``augment`` and ``voxelize``), nested
  in ``fetch``;
* ``collate``: collating and writing the batch into its shared-memory slot;
* ``transfer``: receiving it in the main process (message, slot mapping, tensors);
* ``pin`` and ``h2d``: pinning, and packing into the pinned ring for the copy to the
  device, where used; both run on the host thread (NOTE [ Host thread ] in prefetch.py),
  overlapping the training loop;
* ``wait``: how long the training loop waited in ``next(loader)``: the training
  thread's time per batch, all it spends on loading.

``loader.stats()`` sums them over the current (or last) epoch, with percentiles, and
gives batches/s, samples/s and the **data-stall fraction**: the share of the training
loop's wall time (from its first request for a batch to now or to the epoch's end) spent
waiting for batches. Near 1, training is data-bound; near 0, the loader keeps up.
The first batch's wait (starting workers, filling the pipeline) is reported apart as
``startup_s`` and left out of the fraction. Off (the default), nothing is measured.

Times are ``time.perf_counter()`` (CLOCK_MONOTONIC on Linux, shared by all processes), so
worker and main-process spans line up in :meth:`EpochTelemetry.chrome_trace`. On the hot
path each batch only appends its raw timestamps (a tuple, one per side); durations and
percentiles are computed when :meth:`stats` is called.
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

#: batches per process in the Chrome trace
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


def collect_into(reported: dict[str, float] | None) -> dict[str, float] | None:
    """From now on :func:`stage` adds to ``reported`` (one batch's fetch); returns what
    was collected into before, for :func:`collect_into` to restore. A plain function, not
    a context manager: it runs once per batch, on the hot path."""
    global _active
    previous, _active = _active, reported
    return previous


#: One batch as measured: (pid, fetch start, fetch end, collate end, arrival in the main
#: process, unpacked, samples, reported stages). Durations are derived when asked for.
BatchRecord = tuple[int, float, float, float, float, float, int, "dict[str, float] | None"]


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
    """What the main process gathers over one epoch: raw timestamps, appended once per
    batch (the cheap part); durations, percentiles and traces are computed when asked for."""

    epoch: int
    records: list[BatchRecord] = field(default_factory=list)
    waits: list[tuple[float, float]] = field(default_factory=list)
    #: pin and h2d durations, measured on the main process's host thread
    extra: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))

    def add(self, record: BatchRecord) -> None:
        self.records.append(record)

    def add_stage(self, name: str, seconds: float) -> None:
        self.extra[name].append(seconds)

    def waited(self, start: float, end: float) -> None:
        """The training loop asked for a batch at ``start`` and got it at ``end``."""
        self.waits.append((start, end))

    def durations(self) -> dict[str, list[float]]:
        stages: dict[str, list[float]] = collections.defaultdict(list)
        for _pid, started, fetched, collated, arrived, unpacked, _samples, reported in self.records:
            stages["fetch"].append(fetched - started)
            for name, seconds in (reported or {}).items():
                stages[name].append(seconds)
            stages["collate"].append(collated - fetched)
            if unpacked > arrived:  # 0, 0 in the main process: no transfer
                stages["transfer"].append(unpacked - arrived)
        stages.update(self.extra)
        if len(self.waits) > 1:
            stages["wait"] = [end - start for start, end in self.waits[1:]]
        return stages

    def stats(self, now: float | None = None, finished: bool = False) -> LoaderStats:
        started = self.waits[0][1] if self.waits else None
        end = (self.waits[-1][1] if self.waits else None) if finished or now is None else now
        wall = 0.0 if started is None or end is None else max(0.0, end - started)
        stages = {}
        durations = self.durations()
        for name, values in durations.items():
            ordered = sorted(values)
            stages[name] = StageStats(
                count=len(values), total_s=sum(values), mean_ms=1e3 * statistics.fmean(values),
                p50_ms=1e3 * _quantile(ordered, 0.5), p90_ms=1e3 * _quantile(ordered, 0.9),
                p99_ms=1e3 * _quantile(ordered, 0.99),
            )
        batches = len(self.waits)
        samples = sum(record[6] for record in self.records)
        steady = (batches - 1) / wall if wall else 0.0  # the batches that arrived within `wall`
        return LoaderStats(
            epoch=self.epoch, batches=batches, samples=samples, wall_s=wall,
            startup_s=self.waits[0][1] - self.waits[0][0] if self.waits else 0.0,
            batches_per_s=steady, samples_per_s=steady * samples / len(self.records) if self.records else 0.0,
            stall_fraction=sum(durations.get("wait", [])) / wall if wall else 0.0, stages=stages,
        )

    def chrome_trace(self, last: int = TRACE_BATCHES) -> dict[str, Any]:
        """The last ``last`` batches of each process as Chrome's trace-event JSON (open in
        chrome://tracing or Perfetto): fetch and collate per worker, transfer and the
        training loop's waits in the main process."""
        main = os.getpid()
        per_process: dict[int, list[BatchRecord]] = collections.defaultdict(list)
        for record in self.records:
            per_process[record[0]].append(record)
        events = []

        def span(name: str, pid: int, start: float, end: float) -> None:
            events.append({"name": name, "cat": "fastload", "ph": "X", "pid": pid, "tid": pid, "ts": start * 1e6,
                           "dur": max(0.0, end - start) * 1e6})

        for pid, records in per_process.items():
            for _pid, started, fetched, collated, arrived, unpacked, _samples, _reported in records[-last:]:
                span("fetch", pid, started, fetched)
                span("collate", pid, fetched, collated)
                if unpacked > arrived:
                    span("transfer", main, arrived, unpacked)
        for start, end in self.waits[-last:]:
            span("wait", main, start, end)
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def write_chrome_trace(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w") as f:
            json.dump(self.chrome_trace(), f)


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0
