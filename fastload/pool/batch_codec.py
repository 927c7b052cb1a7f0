"""How a batch crosses from a worker to the main process: leaves in a slot, the rest pickled.

A batch of any structure (tuples, dicts, dataclasses, user objects) is pickled with a
``persistent_id`` hook. Every large leaf — a plain CPU tensor, a numeric numpy array or a
:class:`~fastload.collate.StackPlan` — is replaced in the pickle by its index in a
*layout*: ``(offset, nbytes, dtype, shape, kind, stride)`` with ``kind`` ``"t"`` (tensor)
or ``"n"`` (ndarray). The leaves are written into one slot at those offsets. A tensor
whose elements fill the storage they span, in another order or repeated (a transposed
view, channels_last, an expanded tensor), keeps its strides, as through torch's
DataLoader: that span is copied and the main process views it with the same strides
(``stride`` is None otherwise). A view with gaps (a column of a matrix, a crop) is
copied compact and contiguous instead: its strides would cost the storage it skips,
for every batch (torch shares a storage once per worker, fastload copies per batch). The message
that crosses the socket is the pickle plus the layout: a few hundred bytes for a typical
batch, whatever the batch's size. See NOTE [ Slot protocol ] in ``arena.py``.

Leaves that cannot live in a slot (tensor subclasses, tensors requiring grad, sparse or
non-CPU tensors, object arrays) are pickled as usual.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..collate import StackPlan
from .arena import LEAF_ALIGNMENT, AcquiredSlot, WorkerSlots, align_up

# (offset, nbytes, dtype, shape, kind, stride)
LayoutEntry = tuple[int, int, Any, tuple[int, ...], str, tuple[int, ...] | None]


@dataclass
class PackedBatch:
    """The message body for one batch; ``slot`` is None when no leaf needed one."""

    skeleton: bytes
    layout: list[LayoutEntry]
    nbytes: int
    slot: AcquiredSlot | None


def _slot_leaf(obj: Any) -> tuple[int, Any, tuple[int, ...], str, tuple[int, ...] | None] | None:
    """(nbytes, dtype, shape, kind, stride) if ``obj`` travels through the slot, else None."""
    if isinstance(obj, StackPlan):
        return obj.nbytes, obj.dtype, obj.shape, "t", None
    if type(obj) is torch.Tensor:
        if obj.device.type == "cpu" and obj.layout == torch.strided and not obj.requires_grad and not obj.is_quantized:
            shape, stride = tuple(obj.shape), tuple(obj.stride())
            if stride == _contiguous_strides(shape) or not _dense(obj):
                return obj.numel() * obj.element_size(), obj.dtype, shape, "t", None
            return _span(obj) * obj.element_size(), obj.dtype, shape, "t", stride
        return None
    if type(obj) is np.ndarray and obj.dtype.kind in "biufc" and not obj.dtype.hasobject:
        return obj.nbytes, obj.dtype, obj.shape, "n", None
    return None


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _dense(tensor: torch.Tensor) -> bool:
    """Whether the storage a tensor spans holds nothing but its elements (repeated along
    stride-0 dimensions): no gaps."""
    distinct = 1
    for size, stride in zip(tensor.shape, tensor.stride()):
        if stride:
            distinct *= size
    return _span(tensor) == distinct or tensor.numel() == 0


def _span(tensor: torch.Tensor) -> int:
    """How many elements of storage a tensor's view reaches, from its first (torch's
    strides are never negative)."""
    if tensor.numel() == 0:
        return 0
    return 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))


class _LeafCollector(pickle.Pickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.leaves: list[Any] = []
        self.layout: list[LayoutEntry] = []
        self.nbytes = 0

    def persistent_id(self, obj: Any) -> int | None:
        leaf = _slot_leaf(obj)
        if leaf is None:
            return None
        nbytes, dtype, shape, kind, stride = leaf
        self.layout.append((self.nbytes, nbytes, dtype, shape, kind, stride))
        self.leaves.append(obj)
        self.nbytes = align_up(self.nbytes + nbytes, LEAF_ALIGNMENT)
        return len(self.layout) - 1


def pack_batch(batch: Any, slots: WorkerSlots) -> PackedBatch:
    """Write ``batch``'s leaves into a slot from ``slots``; pickle the rest (worker side)."""
    file = io.BytesIO()
    collector = _LeafCollector(file)
    collector.dump(batch)
    if collector.nbytes == 0:
        return PackedBatch(file.getvalue(), collector.layout, 0, None)
    slot = slots.acquire(collector.nbytes)
    try:
        _write_leaves(slot.buffer, collector.layout, collector.leaves)
    except BaseException:
        slots.release_unsent(slot.slot_id)
        raise
    return PackedBatch(file.getvalue(), collector.layout, collector.nbytes, slot)


def _write_leaves(buffer: Any, layout: list[LayoutEntry], leaves: list[Any]) -> None:
    # Views of the slot must not outlive this call: they would keep the slot mapped
    # after it is retired.
    whole = torch.frombuffer(buffer, dtype=torch.uint8)
    for (offset, nbytes, dtype, shape, kind, stride), leaf in zip(layout, leaves):
        if nbytes == 0:
            continue
        if kind == "n":
            np.frombuffer(buffer, dtype=dtype, count=leaf.size, offset=offset).reshape(shape)[...] = leaf
        elif isinstance(leaf, StackPlan):
            leaf.stack_into(whole[offset : offset + nbytes].view(dtype).view(shape))
        elif stride is not None:  # the storage span it addresses, gaps and shared elements as they are
            span = nbytes // leaf.element_size()
            whole[offset : offset + nbytes].view(dtype).copy_(leaf.as_strided((span,), (1,)))
        else:
            whole[offset : offset + nbytes].view(dtype).view(shape).copy_(leaf)


class _LeafResolver(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, layout: list[LayoutEntry], view: np.ndarray | None) -> None:
        super().__init__(file)
        self.layout = layout
        self.view = view

    def persistent_load(self, pid: int) -> Any:
        offset, nbytes, dtype, shape, kind, stride = self.layout[pid]
        if kind == "n":
            if nbytes == 0:
                return np.empty(shape, dtype=dtype)
            assert self.view is not None  # a batch with data in a slot comes with its view
            return self.view[offset : offset + nbytes].view(dtype).reshape(shape)
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype) if stride is None else torch.empty_strided(shape, stride, dtype=dtype)
        # The tensor's storage holds a reference to the slot view: see NOTE [ Slot protocol ].
        flat = torch.frombuffer(self.view, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset)
        return flat.view(shape) if stride is None else flat.as_strided(shape, stride)


def unpack_batch(skeleton: bytes, layout: list[LayoutEntry], view: np.ndarray | None) -> Any:
    """Rebuild a batch whose leaves are zero-copy views of the slot ``view`` (main side)."""
    return _LeafResolver(io.BytesIO(skeleton), layout, view).load()
