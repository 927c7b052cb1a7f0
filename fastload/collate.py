"""Collate functions: torch's default, and padding collators for text and voxels.

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

NOTE [ Deferred collation ]

Both read torch's registry, ``default_collate_fn_map``, at every call: users extend it in
place, at any time, and torch's ``default_collate`` sees their entries at once. Only the
entry for ``torch.Tensor`` is replaced by fastload's, and only while it is torch's own
(a user's function for tensors wins, as it does in torch).

A :class:`StackPlan` is a placeholder: no user code may ever see one. So
:func:`deferred_collate` defers stacks only inside containers whose construction and
pickling run no user code: exact ``dict``, ``list`` and ``tuple``, and namedtuples that
use the methods ``collections.namedtuple`` generated (the main process rebuilds those
from the pickle with the real tensors). Anything else, including every function a user
registered, is collated by torch's ``collate`` with real tensors (their leaves are then
copied into the slot: one more copy, for those batches only). Where torch's ``collate``
constructs containers itself, the results and the errors are torch's.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from .torch_private import (
    collate,
    collate_float_fn,
    collate_int_fn,
    collate_numpy_array_fn,
    collate_numpy_scalar_fn,
    collate_str_fn,
    collate_tensor_fn,
    default_collate_fn_map,
    default_convert,
)

__all__ = [
    "Deferred",
    "PadCollator",
    "StackPlan",
    "VoxelCollator",
    "default_collate",
    "default_convert",
    "deferred_collate",
    "is_default_collate",
    "pad_stack",
]


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


class Deferred:
    """Base of sample leaves that the main process finishes per batch (e.g. JPEGs decoded
    on the GPU, see ``fastload.image``): collated as a plain list, left untouched."""


def _keep_list(batch: Sequence[Deferred], *, collate_fn_map: dict | None = None) -> list[Deferred]:
    return list(batch)


CollateMap = dict[type | tuple[type, ...], Callable]


def _collate_map(tensor_fn: Callable) -> CollateMap:
    """torch's registry as it is now, with ``tensor_fn`` in place of torch's own function
    for tensors (not of a user's) and :class:`Deferred` leaves kept as lists."""
    collate_map = dict(default_collate_fn_map)
    if collate_map.get(torch.Tensor) is collate_tensor_fn:
        collate_map[torch.Tensor] = tensor_fn
    collate_map.setdefault(Deferred, _keep_list)
    return collate_map


#: Registry functions that run no user code and return no container: they may be given
#: the deferring map (NOTE [ Deferred collation ]). By identity: a user's callable may
#: be unhashable, or define ``==``.
_LEAF_FNS = frozenset(map(id, (_plan_stack, _keep_list, collate_numpy_array_fn, collate_numpy_scalar_fn,
                               collate_float_fn, collate_int_fn, collate_str_fn)))


def default_collate(batch: Sequence[Any]) -> Any:
    """Collate a list of samples into a batch, exactly like ``torch.utils.data.default_collate``.

    Tensors and numpy arrays are stacked along a new first dimension; Python numbers
    become 1-D tensors (float64 for floats, int64 for ints); strings and bytes stay a list;
    dicts, namedtuples and sequences are collated per field (a tuple becomes a list,
    as in torch); :class:`Deferred` leaves stay a list. Raises ``TypeError`` for unsupported element types and
    ``RuntimeError`` for ragged sequences or tensors of different shapes.
    """
    return collate(batch, collate_fn_map=_collate_map(_stack))


def deferred_collate(batch: Sequence[Any]) -> Any:
    """``default_collate`` whose stackable tensor leaves are :class:`StackPlan` objects,
    where no user code can see them (NOTE [ Deferred collation ])."""
    return _collate_deferred(batch, _collate_map(_plan_stack))


def _collate_deferred(batch: Sequence[Any], deferring: CollateMap) -> Any:
    # The order of torch's ``collate``: the registry (exact type, then the first key
    # ``elem`` is an instance of), then containers.
    elem = batch[0]
    elem_type = type(elem)
    fn = deferring.get(elem_type)
    if fn is None:
        for key, key_fn in deferring.items():
            if isinstance(elem, key):
                fn = key_fn
                break
    if fn is not None:
        if id(fn) in _LEAF_FNS:
            return fn(batch, collate_fn_map=deferring)
        return fn(batch, collate_fn_map=_collate_map(_stack))
    if elem_type is dict:
        return {key: _collate_deferred([d[key] for d in batch], deferring) for key in elem}
    if elem_type is tuple or elem_type is list:
        size = len(elem)
        if not all(len(e) == size for e in batch):
            raise RuntimeError("each element in list of batch should be of equal size")  # torch's words
        return [_collate_deferred(samples, deferring) for samples in zip(*batch)]
    plain = _PLAIN_NAMEDTUPLE.get(elem_type)
    if plain is None:
        plain = _PLAIN_NAMEDTUPLE[elem_type] = _is_plain_namedtuple(elem_type)
    if plain:
        return elem_type(*(_collate_deferred(samples, deferring) for samples in zip(*batch)))
    return collate(batch, collate_fn_map=_collate_map(_stack))


#: type -> whether it is a plain namedtuple (the test takes microseconds; a batch has many)
_PLAIN_NAMEDTUPLE: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()
_NAMEDTUPLE_METHODS = ("__new__", "__init__", "__getnewargs__", "__reduce__", "__reduce_ex__", "__getstate__")


def _is_plain_namedtuple(cls: type) -> bool:
    """Whether ``cls`` is a namedtuple (or a subclass) that constructs and pickles itself
    with the methods ``collections.namedtuple`` generated, and whose construction no
    metaclass of the user's intercepts: no user code."""
    if type(cls) is not type:
        return False
    base = next((k for k in cls.__mro__ if "_fields" in vars(k)), None)
    if base is None or base.__bases__ != (tuple,):
        return False
    generated_new = getattr(base.__new__, "__globals__", {}).get("_tuple_new") is tuple.__new__
    return generated_new and all(getattr(cls, name) is getattr(base, name) for name in _NAMEDTUPLE_METHODS)


def is_default_collate(fn: Callable | None) -> bool:
    """True for torch's and fastload's default collate: those may be built in a slot."""
    return fn is default_collate or fn is torch.utils.data.default_collate


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    """``value`` (tensor, ndarray, nested list of numbers) as a tensor, or a clear error."""
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ValueError(
            f"{what} cannot be padded: it is not a tensor, a numeric array or a rectangular list of numbers "
            f"(ragged nested input?): {exc}"
        ) from exc


def pad_stack(
    tensors: Sequence[torch.Tensor], length: int, padding_value: float, *, left: bool = False, what: str = "value"
) -> torch.Tensor:
    """Stack tensors of shapes ``(T_i, *F)`` into ``(B, length, *F)``, padding (or cutting)
    dim 0 to ``length``; ``left`` puts the padding first. Trailing dims must agree."""
    trailing = tensors[0].shape[1:]
    for i, t in enumerate(tensors):
        if t.dim() == 0 or t.shape[1:] != trailing:
            raise ValueError(
                f"{what}: sample {i} has shape {tuple(t.shape)}, but sample 0 has {tuple(tensors[0].shape)}; "
                "only the first dimension may vary"
            )
    out = torch.full((len(tensors), length, *trailing), padding_value, dtype=tensors[0].dtype)
    for i, t in enumerate(tensors):
        n = min(len(t), length)
        if left:
            out[i, length - n :] = t[:n]
        else:
            out[i, :n] = t[:n]
    return out


class PadCollator:
    """Collate variable-length sequences into padded batches with a mask and lengths.

    Samples are sequences (1-D token ids: tensors, numpy arrays or lists) or dicts. In a
    dict, every value that is a tensor/array with a first dimension, or a list of
    numbers, is a *sequence key* and is padded along its first dimension (trailing
    dimensions must agree); other values go through :func:`default_collate`. Plain
    sequences are returned under ``"input_ids"``.

    Output (a dict): the padded sequence keys ``(B, L, ...)``, ``attention_mask``
    ``(B, L)`` int64 (1 = real token, the Hugging Face convention) and ``lengths`` ``(B,)``
    int64, both taken from the first sequence key (``input_ids`` if present).

    Args:
        padding_value: fill for sequence keys not named elsewhere.
        padding_values: fill per key, e.g. ``{"input_ids": tokenizer.pad_token_id}``.
        label_keys: keys padded with ``label_padding_value`` (ignored by cross-entropy).
        label_padding_value: default -100.
        padding_side: ``"right"`` or ``"left"`` (decoder-only generation pads left).
        pad_to_multiple_of: round ``L`` up to a multiple (tensor-core friendly shapes).
        max_length: truncate sequences to this many steps (keeping the first ones).
        return_lengths: include ``lengths``; off for models whose ``forward`` takes the
            batch's keys as its arguments and has none by that name (Hugging Face's).

    Raises:
        ValueError: bad options; a ragged nested value, or trailing dimensions that differ,
            naming the key and the sample.
    """

    def __init__(
        self,
        padding_value: float = 0,
        *,
        padding_values: Mapping[str, float] | None = None,
        label_keys: Sequence[str] = ("labels",),
        label_padding_value: float = -100,
        padding_side: str = "right",
        pad_to_multiple_of: int | None = None,
        max_length: int | None = None,
        return_lengths: bool = True,
    ) -> None:
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.padding_value = padding_value
        self.padding_values = dict(padding_values or {})
        self.label_keys = tuple(label_keys)
        self.label_padding_value = label_padding_value
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_length = max_length
        self.return_lengths = return_lengths

    def _fill(self, key: str) -> float:
        if key in self.padding_values:
            return self.padding_values[key]
        return self.label_padding_value if key in self.label_keys else self.padding_value

    def __call__(self, samples: Sequence[Any]) -> dict[str, Any]:
        if not samples:
            raise ValueError("PadCollator: empty batch")
        if not isinstance(samples[0], Mapping):
            samples = [{"input_ids": s} for s in samples]
        keys = list(samples[0])
        for i, sample in enumerate(samples):
            if list(sample) != keys:
                raise ValueError(f"PadCollator: sample {i} has keys {list(sample)}, sample 0 has {keys}")
        sequence_keys = [k for k in keys if _is_sequence(samples[0][k])]
        if not sequence_keys:
            raise ValueError(f"PadCollator: no sequence to pad among keys {keys}")
        batch: dict[str, Any] = {}
        lengths: torch.Tensor | None = None
        for key in keys:
            if key not in sequence_keys:
                batch[key] = default_collate([s[key] for s in samples])
                continue
            tensors = [_as_tensor(s[key], f"PadCollator: key {key!r} of sample {i}") for i, s in enumerate(samples)]
            key_lengths = torch.tensor([len(t) if t.dim() else 0 for t in tensors], dtype=torch.int64)
            if self.max_length is not None:
                key_lengths.clamp_(max=self.max_length)
            length = int(key_lengths.max())
            if self.pad_to_multiple_of:
                length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
            batch[key] = pad_stack(tensors, length, self._fill(key), left=self.padding_side == "left",
                                   what=f"PadCollator: key {key!r}")
            if lengths is None or key == "input_ids":
                lengths, mask_length = key_lengths, length
        assert lengths is not None
        positions = torch.arange(mask_length)
        if self.padding_side == "left":
            positions = positions.flip(0)
        batch["attention_mask"] = (positions[None, :] < lengths[:, None]).to(torch.int64)
        if self.return_lengths:
            batch["lengths"] = lengths
        return batch


def _is_sequence(value: Any) -> bool:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.ndim >= 1
    return isinstance(value, (list, tuple)) and (not value or isinstance(value[0], (int, float, list, tuple)))


class VoxelCollator:
    """Collate per-sample voxelized point clouds.

    Each sample is a dict with ``voxels (M, P, C)``, ``coords (M, 3)`` (int32, z y x)
    and ``num_points (M,)`` (numpy or torch), plus any other keys.

    * ``mode="concat"`` (OpenPCDet / mmdet3d): voxels and num_points are concatenated
      along M; coords become ``(ΣM, 4)`` int32 with the sample's batch index first.
    * ``mode="pad"``: everything is padded to the largest M: ``voxels (B, M, P, C)``,
      ``coords (B, M, 3)``, ``num_points (B, M)``, and ``voxel_mask (B, M)`` bool.

    Keys in ``object_keys`` (per-object annotations such as ``gt_boxes (K, 7+)``) are
    padded to the largest K, with ``<key>_mask (B, K)``. Other keys go through
    :func:`default_collate`.

    Raises:
        ValueError: a bad mode, a missing key, or voxels/coords/num_points whose shapes
            disagree, naming the sample.
    """

    VOXEL_KEYS = ("voxels", "coords", "num_points")

    def __init__(self, mode: str = "concat", *, object_keys: Sequence[str] = ("gt_boxes", "gt_labels"),
                 object_padding_value: float = 0) -> None:
        if mode not in ("concat", "pad"):
            raise ValueError(f"mode must be 'concat' or 'pad', got {mode!r}")
        self.mode = mode
        self.object_keys = tuple(object_keys)
        self.object_padding_value = object_padding_value

    def _voxel_tensors(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, list[torch.Tensor]]:
        tensors: dict[str, list[torch.Tensor]] = {k: [] for k in self.VOXEL_KEYS}
        for i, sample in enumerate(samples):
            missing = [k for k in self.VOXEL_KEYS if k not in sample]
            if missing:
                raise ValueError(f"VoxelCollator: sample {i} lacks {missing}")
            voxels, coords, num_points = (_as_tensor(sample[k], f"VoxelCollator: {k!r} of sample {i}")
                                          for k in self.VOXEL_KEYS)
            m = voxels.shape[0] if voxels.dim() == 3 else -1
            if m < 0 or coords.shape != (m, 3) or num_points.shape != (m,):
                raise ValueError(
                    f"VoxelCollator: sample {i} has voxels {tuple(voxels.shape)}, coords {tuple(coords.shape)}, "
                    f"num_points {tuple(num_points.shape)}; expected (M, P, C), (M, 3), (M,)"
                )
            if tensors["voxels"] and voxels.shape[1:] != tensors["voxels"][0].shape[1:]:
                raise ValueError(
                    f"VoxelCollator: sample {i} has voxels {tuple(voxels.shape)}, sample 0 has "
                    f"{tuple(tensors['voxels'][0].shape)}; P and C must agree"
                )
            for key, tensor in zip(self.VOXEL_KEYS, (voxels, coords, num_points)):
                tensors[key].append(tensor)
        return tensors

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("VoxelCollator: empty batch")
        tensors = self._voxel_tensors(samples)
        batch: dict[str, Any] = {}
        counts = torch.tensor([len(v) for v in tensors["voxels"]], dtype=torch.int64)
        if self.mode == "concat":
            batch["voxels"] = torch.cat(tensors["voxels"])
            batch["num_points"] = torch.cat(tensors["num_points"])
            index = torch.repeat_interleave(torch.arange(len(samples), dtype=torch.int32), counts)
            batch["coords"] = torch.cat([index[:, None], torch.cat(tensors["coords"]).to(torch.int32)], dim=1)
        else:
            m = int(counts.max())
            for key in self.VOXEL_KEYS:
                batch[key] = pad_stack(tensors[key], m, 0, what=f"VoxelCollator: {key!r}")
            batch["voxel_mask"] = torch.arange(m)[None, :] < counts[:, None]
        for key in samples[0]:
            if key in self.VOXEL_KEYS:
                continue
            values = [s[key] for s in samples]
            if key in self.object_keys:
                objects = [_as_tensor(v, f"VoxelCollator: {key!r} of sample {i}") for i, v in enumerate(values)]
                k = max(len(o) for o in objects)
                batch[key] = pad_stack(objects, k, self.object_padding_value, what=f"VoxelCollator: {key!r}")
                batch[f"{key}_mask"] = torch.arange(k)[None, :] < torch.tensor([len(o) for o in objects])[:, None]
            else:
                batch[key] = default_collate(values)
        return batch
