"""Collate functions.

``default_collate`` is torch's: the structure rules (dicts, namedtuples, sequences,
numbers, strings, numpy) come from ``torch.utils.data._utils.collate.collate`` and its
type registry, so fastload cannot drift from torch. Only how a list of tensors becomes
one tensor is ours:

* :func:`default_collate` stacks into ordinary memory. (torch's version allocates shared
  memory when it runs in a torch worker; in fastload's workers the batch is written into
  a reusable slot instead, see NOTE [ Slot protocol ].)
* :func:`deferred_collate` returns :class:`StackPlan` leaves instead of stacked tensors:
  the worker first learns how many bytes the batch needs, then picks a slot and stacks
  every leaf straight into it. The batch is written once, in shared memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data._utils.collate import collate, default_collate_fn_map, default_convert

__all__ = ["StackPlan", "default_collate", "default_convert", "deferred_collate", "is_default_collate"]


def _check_stackable(elem: torch.Tensor) -> None:
    # Same errors, same words as torch's collate_tensor_fn.
    if elem.is_nested:
        raise RuntimeError(
            "Batches of nested tensors are not currently supported by the default collate_fn; "
            "please provide a custom collate_fn to handle them appropriately."
        )
    if elem.layout in {torch.sparse_coo, torch.sparse_csr, torch.sparse_bsr, torch.sparse_csc, torch.sparse_bsc}:
        raise RuntimeError(
            "Batches of sparse tensors are not currently supported by the default collate_fn; "
            "please provide a custom collate_fn to handle them appropriately."
        )


def _stack(batch: Sequence[torch.Tensor], *, collate_fn_map: dict | None = None) -> torch.Tensor:
    _check_stackable(batch[0])
    return torch.stack(list(batch), 0)


class StackPlan:
    """A stack of equally shaped, equally typed tensors, not performed yet.

    ``shape``/``dtype``/``nbytes`` describe the result; :meth:`stack_into` writes it.
    """

    __slots__ = ("tensors", "shape", "dtype", "nbytes")

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        first = tensors[0]
        self.tensors = tensors
        self.shape = (len(tensors), *first.shape)
        self.dtype = first.dtype
        self.nbytes = first.numel() * first.element_size() * len(tensors)

    def stack_into(self, out: torch.Tensor) -> None:
        torch.stack(self.tensors, 0, out=out)


def _plan_stack(batch: Sequence[torch.Tensor], *, collate_fn_map: dict | None = None) -> StackPlan | torch.Tensor:
    first = batch[0]
    _check_stackable(first)
    shape, dtype = first.shape, first.dtype
    if (
        type(first) is torch.Tensor
        and first.device.type == "cpu"
        and not first.requires_grad
        and all(type(t) is torch.Tensor and t.shape == shape and t.dtype == dtype for t in batch)
    ):
        return StackPlan(list(batch))
    # Mixed dtypes (type promotion), mismatched shapes (torch's error), subclasses,
    # autograd: let torch.stack decide, exactly as default_collate would.
    return torch.stack(list(batch), 0)


_COLLATE_MAP: dict[type | tuple[type, ...], Callable] = {**default_collate_fn_map, torch.Tensor: _stack}
_DEFERRED_COLLATE_MAP: dict[type | tuple[type, ...], Callable] = {**default_collate_fn_map, torch.Tensor: _plan_stack}


def default_collate(batch: Sequence[Any]) -> Any:
    """Collate a list of samples into a batch, exactly like ``torch.utils.data.default_collate``.

    Tensors and numpy arrays are stacked along a new first dimension; Python numbers
    become 1-D tensors (float64 for floats, int64 for ints); strings and bytes stay a list;
    dicts, namedtuples and sequences are collated per field (a tuple becomes a list,
    as in torch). Raises ``TypeError`` for unsupported element types and
    ``RuntimeError`` for ragged sequences or tensors of different shapes.
    """
    return collate(batch, collate_fn_map=_COLLATE_MAP)


def deferred_collate(batch: Sequence[Any]) -> Any:
    """``default_collate`` whose stackable tensor leaves are :class:`StackPlan` objects."""
    return collate(batch, collate_fn_map=_DEFERRED_COLLATE_MAP)


def is_default_collate(fn: Callable | None) -> bool:
    """True for torch's and fastload's default collate: those may be built in a slot."""
    return fn is default_collate or fn is torch.utils.data.default_collate
