"""Moving batches towards the GPU: pinning, and a pinned ring with side-stream copies.

NOTE [ Device prefetch ]

With ``device="cuda"`` a :class:`CudaPrefetcher` keeps ``depth`` batches in flight:

1. all tensor leaves of a batch are packed into one pinned staging buffer taken from a
   ring (one host memcpy per leaf); a buffer is reused only after the CUDA event recorded
   behind its last host-to-device copy has completed;
2. one ``non_blocking`` copy per batch moves the staging buffer to one device buffer on
   a side stream; the leaves the user gets are views of that device buffer;
3. when a batch is handed out, the consumer's current stream waits on the copy's
   event, and the device buffer is ``record_stream``-ed on the consumer's stream so the
   caching allocator does not reuse it before the consumer's kernels are done.

With ``pin_memory=True`` and no ``device``, batches are pinned with torch's own
``pin_memory`` (its caching host allocator reuses freed pinned blocks), as torch's
loader does. Without CUDA both are pass-throughs and say so once.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from .device import cuda_usable
from .torch_private import pin_memory as torch_pin_memory
from .telemetry import EpochTelemetry


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


@dataclasses.dataclass
class _Staging:
    buffer: torch.Tensor  # pinned uint8
    done: torch.cuda.Event | None = None


class CudaPrefetcher:
    """Copies batches to ``device`` ``depth`` batches ahead. See NOTE [ Device prefetch ]."""

    _ALIGN = 256  # device views start at 256-byte boundaries, as cudaMalloc's do

    def __init__(self, source: Iterator[Any], device: torch.device, depth: int,
                 telemetry: EpochTelemetry | None = None) -> None:
        self._source = source
        self._telemetry = telemetry
        self._device = device
        self._depth = max(1, depth)
        self._stream = torch.cuda.Stream(device=device)
        self._ring: collections.deque[_Staging] = collections.deque()
        self._in_flight: collections.deque[tuple[Any, torch.Tensor, torch.cuda.Event]] = collections.deque()
        self._exhausted = False

    def __iter__(self) -> CudaPrefetcher:
        return self

    def __len__(self) -> int:
        return len(self._source)  # type: ignore[arg-type]

    def __next__(self) -> Any:
        while not self._exhausted and len(self._in_flight) < self._depth:
            try:
                batch = next(self._source)
            except StopIteration:
                self._exhausted = True
                break
            started = time.perf_counter()
            self._in_flight.append(self._launch(batch))
            if self._telemetry is not None:  # the host side: staging copy and enqueueing the transfer
                self._telemetry.add_stage("h2d", time.perf_counter() - started)
        if not self._in_flight:
            raise StopIteration
        batch, device_buffer, copied = self._in_flight.popleft()
        consumer = torch.cuda.current_stream(self._device)
        consumer.wait_event(copied)
        if device_buffer.numel():
            device_buffer.record_stream(consumer)
        return batch

    def _staging(self, nbytes: int) -> _Staging:
        # The oldest buffer is the first whose copy completes; wait for it if needed.
        if len(self._ring) > self._depth:
            staging = self._ring.popleft()
            if staging.done is not None:
                staging.done.synchronize()
            if staging.buffer.numel() >= nbytes:
                return staging
        return _Staging(torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=True))

    def _launch(self, batch: Any) -> tuple[Any, torch.Tensor, torch.cuda.Event]:
        # Only CPU leaves travel: a batch_transform may already have put some on the GPU.
        leaves: list[torch.Tensor] = []
        map_tensors(batch, lambda t: leaves.append(t) if t.device.type == "cpu" else None)
        offsets, total = [], 0
        for leaf in leaves:
            offsets.append(total)
            total += -(-leaf.numel() * leaf.element_size() // self._ALIGN) * self._ALIGN
        staging = self._staging(total)
        for leaf, offset in zip(leaves, offsets):
            nbytes = leaf.numel() * leaf.element_size()
            staging.buffer[offset : offset + nbytes].view(leaf.dtype).view(leaf.shape).copy_(leaf)
        with torch.cuda.stream(self._stream):
            device_buffer = torch.empty(total, dtype=torch.uint8, device=self._device)
            device_buffer.copy_(staging.buffer[:total], non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._stream)
        staging.done = copied
        self._ring.append(staging)
        views = iter(
            device_buffer[offset : offset + leaf.numel() * leaf.element_size()].view(leaf.dtype).view(leaf.shape)
            for leaf, offset in zip(leaves, offsets)
        )
        return map_tensors(batch, lambda t: next(views) if t.device.type == "cpu" else t), device_buffer, copied


def transfer_stage(source: Iterator[Any], *, pin_memory: bool, device: torch.device | None, depth: int,
                   warn_once: Callable[[str], None], telemetry: EpochTelemetry | None = None) -> Iterator[Any]:
    """Wrap a loader iterator with what ``pin_memory``/``device`` ask for, or pass it through."""
    if device is not None and device.type == "cuda":
        if cuda_usable():
            return CudaPrefetcher(source, device, depth, telemetry)
        warn_once(f"fastload: device={str(device)!r} requested but CUDA is not available; batches stay on the CPU.")
        return source
    if pin_memory:
        if cuda_usable():
            return MappedIterator(source, torch_pin_memory if telemetry is None else _timed_pin(telemetry))
        warn_once("fastload: pin_memory=True but CUDA is not available; batches are not pinned.")
    return source


def _timed_pin(telemetry: EpochTelemetry) -> Callable[[Any], Any]:
    def pin(batch: Any) -> Any:
        started = time.perf_counter()
        pinned = torch_pin_memory(batch)
        telemetry.add_stage("pin", time.perf_counter() - started)
        return pinned

    return pin
