"""The two ways one epoch of a ``fastload.DataLoader`` runs: in-process, or over a pool.

Both mirror torch's ``_BaseDataLoaderIter`` contract: ``len()`` is the index sampler's
length and an ``IterableDataset`` yielding more than its ``len()`` warns. The epoch's
seeds come from the loader (NOTE [ Seeds ] in ``seeding.py``): ``base_seed``, drawn as
torch draws it, seeds new workers; ``sample_seed`` seeds samples (``seed_per_sample``)
and replacements.
"""

from __future__ import annotations

import itertools
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

from .fetch import SampleFetcher, SkippedTask, StreamExhausted
from .pool.budget import batches_in_flight
from .pool.pool import Received, WorkerPool
from .resume import EpochProgress, Positions, ResumePoint
from .sample_errors import ErrorLog, OnError
from .telemetry import EpochTelemetry, collect_into


@dataclass
class PoolLease:
    """The pool an epoch runs on, and who is responsible for it."""

    pool: WorkerPool
    #: the iterator shuts the pool down at the end of its epoch
    owned: bool
    #: the pool was just started (its workers already run this epoch's seed)
    fresh: bool
    #: called after the pool failed and was shut down
    on_failure: Callable[[], None]


class EpochIterator:
    """What ``iter(loader)`` returns: reports each batch actually handed to the user (the
    stages below it prefetch ahead) and the end of the epoch to its :class:`EpochProgress`
    (NOTE [ Resume ]), and with telemetry times how long the user waited for each batch.

    ``_workers``, as on torch's multi-process iterator: the worker processes (the pool's
    own list, so a restarted worker shows as its new process).
    """

    def __init__(self, source: Iterator[Any], progress: EpochProgress, telemetry: EpochTelemetry | None,
                 workers: list[BaseProcess] | None) -> None:
        self.restart(source, progress, telemetry, workers)

    def restart(self, source: Iterator[Any], progress: EpochProgress, telemetry: EpochTelemetry | None,
                workers: list[BaseProcess] | None) -> None:
        """Go on with a new epoch: a persistent loader's ``iter()`` resets its live
        iterator, as torch's does, instead of running two over one pool."""
        self._source = source
        self._progress = progress
        self._telemetry = telemetry
        self._worker_processes = workers

    @property
    def _workers(self) -> list[BaseProcess]:
        if self._worker_processes is None:  # torch's single-process iterator has none either
            raise AttributeError("'_workers': a loader with num_workers=0 runs in the main process, it has no workers")
        return self._worker_processes

    def __iter__(self) -> EpochIterator:
        return self

    def __len__(self) -> int:
        return len(self._source)  # type: ignore[arg-type]

    def __next__(self) -> Any:
        requested = time.perf_counter() if self._telemetry is not None else 0.0
        yields = self._progress.yields
        try:
            batch = next(self._source)
        except StopIteration:
            self._progress.finish()
            raise
        except BaseException as exc:
            if self._progress.accounted is not exc:
                self._progress.lost_since(yields)  # a stage above the loader's iterator raised for its batch
            self._progress.accounted = None
            raise
        self._progress.handed()
        if self._telemetry is not None:
            self._telemetry.waited(requested, time.perf_counter())
        return batch


@dataclass
class EpochSetup:
    """What an epoch's iterator takes from its loader, which gives it (so that this module
    never needs the loader)."""

    dataset: Any
    iterable: bool
    index_sampler: Any
    num_workers: int
    collate_fn: Callable[[Any], Any]
    auto_collation: bool
    drop_last: bool
    seed_per_sample: bool
    on_error: OnError
    timeout: float
    in_order: bool
    prefetch_factor: int | None
    #: the len() reported for an IterableDataset, which yielding more warns about (torch's rule)
    len_reported: int | None
    errors: ErrorLog
    telemetry: EpochTelemetry | None
    progress: EpochProgress
    warn_once: Callable[[str], None]


class LoaderIterator:
    """Common part: tasks, progress, sample seed, length and the IterableDataset length check.

    ``tasks()`` yields ``(task, positions)``: the indices (or, for an iterable dataset, the
    batch-sized placeholder) and what the task covers (NOTE [ Resume ]; for an iterable
    dataset, the number of items it draws from its stream). A subclass calls it once what
    can fail is set up, so that a failed start leaves the sampler as it was. ``length``:
    how many batches the epoch has (those left, after a resume), asked only by ``len()``.
    """

    def __init__(self, setup: EpochSetup, sample_seed: int, tasks: Callable[[], Iterator[tuple[Any, Any]]],
                 resume: ResumePoint | None, length: Callable[[], int]) -> None:
        self._dataset = setup.dataset
        self._errors = setup.errors
        self._telemetry = setup.telemetry
        self._progress = setup.progress
        self._iterable = setup.iterable
        self._index_sampler = setup.index_sampler
        self._len_reported = setup.len_reported
        self._num_workers = setup.num_workers
        self._make_tasks = tasks
        self._tasks: Iterator[tuple[Any, Any]] = iter(())
        self._length = length
        self._sample_seed = sample_seed
        self._num_yielded = resume.batches if resume is not None else 0
        #: iterable datasets: items each worker stream must skip (it had given them before a resume)
        self._skip_items = resume.stream_items if resume is not None else None

    def __iter__(self) -> LoaderIterator:
        return self

    def __len__(self) -> int:
        return self._length()

    def __next__(self) -> Any:
        data = self._next_data()
        self._num_yielded += 1
        if self._iterable and self._len_reported is not None and self._num_yielded > self._len_reported:
            # torch's words (tools match on them), then fastload's hint
            message = (f"Length of IterableDataset {self._dataset} was reported to be {self._len_reported}"
                       f"(when accessing len(dataloader)), but {self._num_yielded} samples have been fetched. ")
            if self._num_workers > 0:
                message += ("For multiprocessing data-loading, this could be caused by not properly configuring the "
                            "IterableDataset replica at each worker. Please see "
                            "https://pytorch.org/docs/stable/data.html#torch.utils.data.IterableDataset for examples. "
                            "fastload: each worker must yield its own shard (use get_worker_info() inside __iter__).")
            warnings.warn(message, stacklevel=2)
        return data

    def _next_data(self) -> Any:
        raise NotImplementedError

    def __getstate__(self) -> None:
        raise TypeError(f"{type(self).__name__} cannot be pickled")


class InProcessIterator(LoaderIterator):
    """``num_workers=0``: samples are fetched and collated in the calling thread."""

    def __init__(self, setup: EpochSetup, sample_seed: int, tasks: Callable[[], Iterator[tuple[Any, Any]]],
                 resume: ResumePoint | None, length: Callable[[], int]) -> None:
        super().__init__(setup, sample_seed, tasks, resume, length)
        self._collate_fn = setup.collate_fn
        self._fetcher = SampleFetcher(
            self._dataset,
            iterable=self._iterable,
            auto_collation=setup.auto_collation,
            drop_last=setup.drop_last,
            seed_per_sample=setup.seed_per_sample,
            restore_rng=True,
            on_error=setup.on_error,
            stream="the main process",
        )
        self._fetcher.start_epoch(self._sample_seed, self._skip_items[0] if self._skip_items else 0)
        self._tasks = self._make_tasks()

    def _next_data(self) -> Any:
        while True:
            task, positions = next(self._tasks)
            self._progress.drawn = True
            if self._iterable:
                positions = (0, positions)
            reported: dict[str, float] = {}
            started = time.perf_counter()
            previous = collect_into(reported) if self._telemetry is not None else None
            try:
                samples = self._fetcher.fetch(task)
            except StreamExhausted:
                self._errors.record(self._fetcher.take_failures())
                raise StopIteration from None
            except SkippedTask:
                self._progress.dropped(positions)
                self._errors.record(self._fetcher.take_failures())
                continue
            except Exception as exc:
                if self._fetcher.current_index is not None:
                    exc.add_note(f"(fastload: raised while fetching sample index {self._fetcher.current_index!r})")
                raise
            finally:
                if self._telemetry is not None:
                    collect_into(previous)
            fetched = time.perf_counter()
            batch = self._fetcher.collate(samples, self._collate_fn)
            self._errors.record(self._fetcher.take_failures())
            self._progress.yielded(positions)
            if self._telemetry is not None:
                count = len(samples) if self._fetcher.auto_collation else 1
                self._telemetry.add((os.getpid(), started, fetched, time.perf_counter(), 0.0, 0.0, count,
                                     reported or None))
            return batch


class PoolIterator(LoaderIterator):
    """``num_workers>0``: tasks go to a :class:`WorkerPool`; answers come back in order.

    NOTE [ Dispatch order ]

    At most ``prefetch_factor * num_workers`` tasks are outstanding (fewer when their
    batches would not fit in half the available memory). With ``in_order`` (torch's
    default) task ``k`` goes to the ``k``-th active worker in turn, as torch's loader deals
    them, and answers are yielded in task order (an early answer waits in ``_answers``):
    the batches of an epoch come out in the sampler's order whatever the workers' speed.
    A worker whose iterable stream has ended is retired for the epoch and skipped; a
    resumed epoch begins with the worker whose turn was next (NOTE [ Resume ]). Without
    ``in_order`` each task goes to the least loaded worker and answers are yielded as they
    arrive, which the state records (NOTE [ Resume ]: positions beyond the prefix).

    A pool that fails (dead worker, timeout, interrupt) is shut down before the error
    propagates: see NOTE [ Pool shutdown ] in ``pool/pool.py``.
    """

    def __init__(self, setup: EpochSetup, base_seed: int, sample_seed: int,
                 tasks: Callable[[], Iterator[tuple[Any, Any]]], resume: ResumePoint | None,
                 length: Callable[[], int], lease_pool: Callable[[int, int, list[int] | None], PoolLease]) -> None:
        super().__init__(setup, sample_seed, tasks, resume, length)
        lease = lease_pool(base_seed, sample_seed, self._skip_items)
        pool = self._pool = lease.pool
        self._owns_pool = lease.owned
        self._on_pool_failure = lease.on_failure
        self._timeout = setup.timeout if setup.timeout > 0 else None
        self._in_order = setup.in_order
        assert setup.prefetch_factor is not None  # torch sets it (2) when there are workers
        self._max_outstanding = setup.prefetch_factor * pool.num_workers
        self._arena_checked = False
        self._warn_once = setup.warn_once
        # In order, workers take turns; a resumed epoch goes on with the worker whose turn was next.
        first = resume.next_stream % pool.num_workers if resume is not None else 0
        self._worker_cycle = itertools.cycle([*range(first, pool.num_workers), *range(first)])
        self._next_to_yield = pool.next_task_id  # the epoch's first task (a persistent pool's: set below)
        self._sent: dict[int, Any] = {}  # task id -> positions, for tasks sent and not yet answered
        self._answers: dict[int, tuple[Received, Any]] = {}  # answered out of order, with their positions
        self._sampler_done = False
        try:
            if not lease.fresh:
                pool.reactivate()
                self._next_to_yield = pool.start_epoch(self._sample_seed, self._skip_items)
            self._tasks = self._make_tasks()
            for _ in range(self._max_outstanding):
                self._dispatch()
        except BaseException:
            self._fail()
            raise

    @property
    def workers(self) -> list[BaseProcess]:
        """The pool's worker processes."""
        return self._pool.processes

    def _dispatch(self) -> None:
        if self._sampler_done or len(self._sent) >= self._max_outstanding:
            return
        worker_id = self._choose_worker()
        if worker_id is None:
            return
        try:
            indices, positions = next(self._tasks)
            self._progress.drawn = True
        except StopIteration:
            self._sampler_done = True
            return
        task_id = self._pool.submit(worker_id, indices)
        self._sent[task_id] = (worker_id, positions) if self._iterable else positions

    def _choose_worker(self) -> int | None:
        active = [w for w in range(self._pool.num_workers) if self._pool.is_active(w)]
        if not active:
            return None
        if not self._in_order:
            worker_id = min(active, key=self._pool.load)
            return worker_id if self._pool.load(worker_id) < max(1, self._max_outstanding // len(active)) else None
        for _ in range(self._pool.num_workers):
            worker_id = next(self._worker_cycle)
            if self._pool.is_active(worker_id):
                return worker_id
        return None

    def _next_data(self) -> Any:
        while True:
            answered = self._next_answer()
            if answered is None:
                self._end_epoch()
                raise StopIteration
            answer, positions = answered
            self._dispatch()
            if answer.failures:
                try:
                    self._errors.record(answer.failures)
                except BaseException:
                    self._fail()
                    raise
            if answer.kind == "batch":
                if not self._arena_checked:
                    self._fit_arena(answer.nbytes)
                if answer.telemetry is not None and self._telemetry is not None:
                    self._telemetry.add(answer.telemetry)
                self._progress.yielded(positions)
                return answer.value
            if answer.kind == "error":
                answer.value.reraise()
            if answer.kind == "end":  # that worker's iterable dataset is exhausted for this epoch
                self._pool.retire_worker(answer.worker_id)
                positions = (answer.worker_id, 0)
            self._progress.dropped(positions)

    def _next_answer(self) -> tuple[Received, Positions] | None:
        """The next answer to yield and its task's positions, or None when the epoch is over."""
        while True:
            if self._in_order and self._next_to_yield in self._answers:
                self._next_to_yield += 1
                return self._answers.pop(self._next_to_yield - 1)
            if not self._sent:
                if self._answers:  # in order, every task up to the last answered was yielded
                    raise RuntimeError(f"fastload internal error: answers to tasks {sorted(self._answers)} are "
                                       f"left while task {self._next_to_yield} was never answered")
                return None
            try:
                answer = self._pool.receive(self._timeout)
            except BaseException:
                self._fail()
                raise
            answered = answer, self._sent.pop(answer.task_id)
            if not self._in_order:
                return answered
            self._answers[answer.task_id] = answered

    def _fit_arena(self, batch_bytes: int) -> None:
        """Once the first batch's size is known: keep the batches in flight (each in its
        own slot) within half the available memory, instead of being OOM-killed."""
        self._arena_checked = True
        fit = batches_in_flight(batch_bytes, self._max_outstanding, self._pool.num_workers)
        if fit < self._max_outstanding:
            self._warn_once(
                f"fastload: batches take {batch_bytes / 2**20:.1f} MB; {self._max_outstanding} in flight would not fit "
                f"in half the memory available, so only {fit} will be (prefetching less). A smaller batch_size or "
                "fewer workers would fit better."
            )
            self._max_outstanding = fit

    def _end_epoch(self) -> None:
        if self._owns_pool:
            self._pool.shutdown()

    def _fail(self) -> None:
        self._pool.shutdown(grace=0.0)
        self._on_pool_failure()
