"""Moving batches towards the GPU: pinning, and a pinned ring with side-stream copies,
with the host copies on a thread of their own.

NOTE [ Host thread ]

Pinning a batch, or packing it into pinned memory, is a memcpy of the whole batch; done
inside ``next(loader)`` it is time the training thread does not train (torch's loader
pins on a thread for this reason). A :class:`HostThreadStage` runs that copy on one
background thread, with ``depth`` batches in work while the user holds one:

* the training thread still takes every batch from the stage below (the loader's
  iterator stays single-threaded: the pool, the resume bookkeeping, the sample seeds),
  submits its host copy to the thread, and hands out the results in order;
* an error keeps its place: the batches before it are handed out first. A batch whose
  host copy failed never reaches the user and stays unsettled for resume
  (``EpochProgress.lost_oldest``); an error from below is reported as it would be
  without the thread (``lost_since`` at the moment it was taken);
* the thread ends when the epoch does and when the iterator is dropped (``break``), at
  once and without the garbage collector's help: it holds no reference to the stage, and
  the stage keeps no error whose traceback holds the stage. Work not started is
  dropped. It is a daemon thread (torch's pin thread is one too): it never delays
  interpreter exit. It holds only the batches in work; dropping them releases their
  shared-memory slots (NOTE [ Slot protocol ]);
* the thread only copies host memory and, with CUDA, allocates pinned memory and waits
  on CUDA events, on the device it is bound to. Workers are never forked while it holds
  a lock of ours: a restarted worker is forked by the training thread, and the copy runs
  on buffers no worker touches.

NOTE [ Device prefetch ]

With ``device="cuda"`` a :class:`CudaPrefetcher` keeps ``depth`` batches in flight:

1. on the host thread, all tensor leaves of a batch are packed into one pinned staging
   buffer taken from a ring (one memcpy per leaf); a buffer is reused only after the CUDA
   event recorded behind its last host-to-device copy has completed (the host thread
   waits for it, not the training thread);
2. on the training thread, one ``non_blocking`` copy per batch moves the staging buffer
   to one device buffer on a side stream, as soon as the batch is packed; the leaves the
   user gets are views of that device buffer;
3. when a batch is handed out, the consumer's current stream waits on the copy's
   event, and the device buffer is ``record_stream``-ed on the consumer's stream so the
   caching allocator does not reuse it before the consumer's kernels are done.

With ``pin_memory=True`` and no ``device``, batches are pinned on the host thread with
torch's own ``pin_memory`` (its caching host allocator reuses freed pinned blocks), as
torch's loader does. Without CUDA both are pass-throughs and say so once.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import torch

from .device import cuda_usable
from .resume import EpochProgress
from .telemetry import EpochTelemetry
from .torch_private import pin_memory as torch_pin_memory


def map_tensors(data: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Apply ``fn`` to every tensor in a nested structure of mappings, namedtuples,
    tuples, lists and dataclasses; everything else is returned as is."""
    if isinstance(data, torch.Tensor):
        return fn(data)
    if isinstance(data, Mapping):
        mapped = {k: map_tensors(v, fn) for k, v in data.items()}
        try:
            return type(data)(mapped)  # type: ignore[call-arg]
        except TypeError:
            return mapped
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(map_tensors(v, fn) for v in data))
    if isinstance(data, (tuple, list)):
        return type(data)(map_tensors(v, fn) for v in data)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return dataclasses.replace(
            data, **{f.name: map_tensors(getattr(data, f.name), fn) for f in dataclasses.fields(data) if f.init}
        )
    return data


class MappedIterator:
    """``map(fn, source)`` that keeps ``len()``: a stage after the loader's iterator (the
    loader's ``batch_transform``, pinning)."""

    def __init__(self, source: Iterator[Any], fn: Callable[[Any], Any]) -> None:
        self._source = source
        self._fn = fn

    def __iter__(self) -> MappedIterator:
        return self

    def __len__(self) -> int:
        return len(self._source)  # type: ignore[arg-type]

    def __next__(self) -> Any:
        return self._fn(next(self._source))


Staged = TypeVar("Staged")


class _Job(Generic[Staged]):
    """One batch's host work, done on the host thread once ``finished`` is set: then
    ``result``, or the ``error`` it raised."""

    __slots__ = ("batch", "result", "error", "finished")

    def __init__(self, batch: Any) -> None:
        self.batch = batch
        self.result: Staged | None = None
        self.error: BaseException | None = None
        self.finished = threading.Event()


def _host_loop(jobs: queue.SimpleQueue[_Job[Any] | None], stop: threading.Event, host: Callable[[Any], Any],
               initializer: Callable[[], object] | None) -> None:
    """The host thread. It holds no reference to the stage, so dropping the stage stops it."""
    failed: BaseException | None = None
    if initializer is not None:
        try:
            initializer()
        except BaseException as exc:  # every batch then fails with it, in its turn
            failed = exc
    while not stop.is_set():
        job = jobs.get()
        if job is None or stop.is_set():
            return
        try:
            if failed is not None:
                raise failed
            job.result = host(job.batch)
        except BaseException as exc:
            job.error = exc
        finally:
            job.batch = None  # the input (slot-backed tensors) is released as soon as it is copied
            job.finished.set()
            job = None


def _take_each(source: Iterator[Any]) -> Iterator[tuple[Any, BaseException | None]]:
    """``(batch, None)`` for each batch of ``source``, ``(None, error)`` in the place of an
    error, which does not end it. The stage takes batches through this generator so that
    an error it keeps for its turn has a traceback that starts here: a suspended
    generator's frame has no caller, so the traceback does not reach the stage's frames
    (which hold the stage: a cycle that would keep the stage, its thread, its batches
    and the pool below until the garbage collector runs)."""
    while True:
        try:
            batch = next(source)
        except StopIteration:
            return
        except BaseException as exc:
            yield None, exc
        else:
            yield batch, None
            del batch


def _stop_host_thread(jobs: queue.SimpleQueue[_Job[Any] | None], stop: threading.Event) -> None:
    stop.set()
    jobs.put(None)


class _Entry(Generic[Staged]):
    """One batch on its way through a :class:`HostThreadStage`: its host job, or the
    error from below that took its place; for the device prefetcher, its launched copy."""

    __slots__ = ("job", "error", "launched")

    def __init__(self, job: _Job[Staged] | None = None, error: BaseException | None = None) -> None:
        self.job = job  # None: an error from below, in the batch's place
        self.error = error
        self.launched: Any = None


class HostThreadStage(Generic[Staged]):
    """Runs ``host(batch)`` on a background thread, with up to ``depth`` batches in work
    while the user holds one, and hands out the results in the source's order. See
    NOTE [ Host thread ].

    ``host`` must not refer to the stage (the thread would keep it alive past a
    ``break``). ``progress``: the epoch's, to report batches lost here (None: none kept).
    ``initializer`` runs first on the thread (binding it to a CUDA device).

    The thread is a daemon, like torch's pin thread: it never holds up interpreter exit,
    and a training loop on a thread other than the main one keeps its loader working
    after the main thread has finished.
    """

    def __init__(self, source: Iterator[Any], host: Callable[[Any], Staged], *, depth: int,
                 progress: EpochProgress | None, initializer: Callable[[], object] | None = None) -> None:
        self._source = source
        self._taken = _take_each(source)
        self._depth = max(1, depth)
        self._progress = progress
        self._pending: collections.deque[_Entry[Staged]] = collections.deque()
        self._exhausted = False
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        stop = threading.Event()
        threading.Thread(target=_host_loop, args=(self._jobs, stop, host, initializer), name="fastload-host",
                         daemon=True).start()
        self._close = weakref.finalize(self, _stop_host_thread, self._jobs, stop)

    def __iter__(self) -> HostThreadStage[Staged]:
        return self

    def __len__(self) -> int:
        return len(self._source)  # type: ignore[arg-type]

    def close(self) -> None:
        """End the thread (work not started is dropped); the stage hands out nothing more."""
        self._exhausted = True
        self._pending.clear()
        self._close()

    def __next__(self) -> Any:
        self._fill()
        self._advance()
        if not self._pending:
            self.close()
            raise StopIteration
        entry: _Entry[Staged] | None = self._pending.popleft()
        try:
            assert entry is not None
            if entry.error is not None:
                raise entry.error
            return self._finish(entry)
        except BaseException as exc:
            if self._progress is not None:
                if entry is not None and entry.job is not None:  # a batch the loader yielded, lost here
                    self._progress.lost_oldest()
                self._progress.accounted = exc
            raise
        finally:
            entry = None  # the error's traceback holds this frame: no cycle through the entry

    def _fill(self) -> None:
        # The user holds one batch; `depth` more are in work.
        while not self._exhausted and len(self._pending) <= self._depth:
            yields = self._progress.yields if self._progress is not None else 0
            taken = next(self._taken, None)
            if taken is None:
                self._exhausted = True
                return
            batch, error = taken
            del taken
            if error is not None:
                if self._progress is not None:
                    self._progress.lost_since(yields)  # a batch_transform below failed for its batch
                if not isinstance(error, Exception):  # KeyboardInterrupt and the like: now
                    if self._progress is not None:
                        self._progress.accounted = error
                    try:
                        raise error
                    finally:
                        error = None
                self._pending.append(_Entry(error=error))  # raised in its turn, after the batches before it
                return
            job: _Job[Staged] = _Job(batch)
            del batch
            self._jobs.put(job)
            self._pending.append(_Entry(job))

    def _advance(self) -> None:
        """After each fill, on the training thread: work on batches whose host part is done."""

    @staticmethod
    def _host_result(entry: _Entry[Staged]) -> Staged:
        """The entry's host result, once done (raises the host work's error)."""
        job = entry.job
        assert job is not None
        job.finished.wait()
        error, job.error = job.error, None  # raised once; the job must not keep it (a cycle through its traceback)
        if error is not None:
            try:
                raise error
            finally:
                error = None
        return job.result  # type: ignore[return-value]

    def _finish(self, entry: _Entry[Staged]) -> Any:
        """The batch handed out for the oldest entry (waits for its host part)."""
        return self._host_result(entry)


def _on_device(device: torch.device) -> Callable[[], object]:
    """The host thread's initializer: make ``device`` its current one, as torch's pin thread does."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return lambda: torch.cuda.set_device(index)


def _pinner(telemetry: EpochTelemetry | None) -> Callable[[Any], Any]:
    def pin(batch: Any) -> Any:
        started = time.perf_counter()
        pinned = torch_pin_memory(batch)
        if telemetry is not None:
            telemetry.add_stage("pin", time.perf_counter() - started)
        return pinned

    return pin


@dataclasses.dataclass
class _Staging:
    buffer: torch.Tensor  # pinned uint8
    done: torch.cuda.Event | None = None


class _StagingRing:
    """Pinned staging buffers: taken on the host thread, given back by the training thread
    once the copy out of one is enqueued, reused once that copy has completed."""

    def __init__(self) -> None:
        self._free: collections.deque[_Staging] = collections.deque()  # appends/pops are thread-safe

    def take(self, nbytes: int) -> _Staging:
        if self._free:
            staging = self._free.popleft()
            if staging.done is not None:
                staging.done.synchronize()  # on the host thread: the training thread never waits here
            if staging.buffer.numel() >= nbytes:
                return staging
        return _Staging(torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=True))

    def give_back(self, staging: _Staging) -> None:
        self._free.append(staging)


@dataclasses.dataclass
class _Packed:
    """A batch whose CPU leaves sit in one pinned staging buffer, at ``offsets``."""

    batch: Any
    leaves: list[torch.Tensor]
    offsets: list[int]
    total: int
    staging: _Staging


_ALIGN = 256  # device views start at 256-byte boundaries, as cudaMalloc's do


def _packer(ring: _StagingRing, telemetry: EpochTelemetry | None) -> Callable[[Any], _Packed]:
    def pack(batch: Any) -> _Packed:
        started = time.perf_counter()
        # Only CPU leaves travel: a batch_transform may already have put some on the GPU.
        leaves: list[torch.Tensor] = []
        map_tensors(batch, lambda t: leaves.append(t) if t.device.type == "cpu" else None)
        offsets, total = [], 0
        for leaf in leaves:
            offsets.append(total)
            total += -(-leaf.numel() * leaf.element_size() // _ALIGN) * _ALIGN
        staging = ring.take(total)
        for leaf, offset in zip(leaves, offsets):
            nbytes = leaf.numel() * leaf.element_size()
            staging.buffer[offset : offset + nbytes].view(leaf.dtype).view(leaf.shape).copy_(leaf)
        if telemetry is not None:
            telemetry.add_stage("h2d", time.perf_counter() - started)
        return _Packed(batch, leaves, offsets, total, staging)

    return pack


class CudaPrefetcher(HostThreadStage[_Packed]):
    """Copies batches to ``device`` ``depth`` batches ahead. See NOTE [ Device prefetch ]."""

    def __init__(self, source: Iterator[Any], device: torch.device, depth: int, progress: EpochProgress | None,
                 telemetry: EpochTelemetry | None = None) -> None:
        self._device = device
        self._stream = torch.cuda.Stream(device=device)
        self._ring = _StagingRing()
        super().__init__(source, _packer(self._ring, telemetry), depth=depth, progress=progress,
                         initializer=_on_device(device))

    def _advance(self) -> None:
        # Enqueue the copies of the batches packed so far, in order, so that they overlap
        # the consumer's work on earlier batches. A failure here is left to the batch's
        # turn (_finish launches it again and raises), so no error is kept.
        for entry in self._pending:
            if entry.launched is not None or entry.error is not None:
                continue
            job = entry.job
            if job is None or not job.finished.is_set() or job.error is not None:
                return
            try:
                entry.launched = self._launch(job.result)  # type: ignore[arg-type]
            except Exception:
                return

    def _finish(self, entry: _Entry[_Packed]) -> Any:
        if entry.launched is None:
            entry.launched = self._launch(self._host_result(entry))
        batch, device_buffer, copied = entry.launched
        entry.launched = None
        consumer = torch.cuda.current_stream(self._device)
        consumer.wait_event(copied)
        if device_buffer.numel():
            device_buffer.record_stream(consumer)
        return batch

    def _launch(self, packed: _Packed) -> tuple[Any, torch.Tensor, torch.cuda.Event]:
        with torch.cuda.stream(self._stream):
            device_buffer = torch.empty(packed.total, dtype=torch.uint8, device=self._device)
            device_buffer.copy_(packed.staging.buffer[: packed.total], non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._stream)
        packed.staging.done = copied
        self._ring.give_back(packed.staging)
        views = iter(
            device_buffer[offset : offset + leaf.numel() * leaf.element_size()].view(leaf.dtype).view(leaf.shape)
            for leaf, offset in zip(packed.leaves, packed.offsets)
        )
        return map_tensors(packed.batch, lambda t: next(views) if t.device.type == "cpu" else t), device_buffer, copied


def transfer_stage(source: Iterator[Any], *, pin_memory: bool, device: torch.device | None, depth: int,
                   warn_once: Callable[[str], None], progress: EpochProgress | None = None,
                   telemetry: EpochTelemetry | None = None) -> Iterator[Any]:
    """Wrap a loader iterator with what ``pin_memory``/``device`` ask for, or pass it through."""
    if device is not None and device.type == "cuda":
        if cuda_usable():
            return CudaPrefetcher(source, device, depth, progress, telemetry)
        warn_once(f"fastload: device={str(device)!r} requested but CUDA is not available; batches stay on the CPU.")
        return source
    if pin_memory:
        if cuda_usable():
            return HostThreadStage(source, _pinner(telemetry), depth=depth, progress=progress,
                                   initializer=_on_device(torch.device("cuda")))
        warn_once("fastload: pin_memory=True but CUDA is not available; batches are not pinned.")
    return source
