"""Sample types for the collate tests: module level, so that spawn workers import them.

Importing this module registers a collate function for :class:`Reading` in torch's
registry, as a library would when it is imported: after ``import fastload``, and in a
spawn worker when the dataset is unpickled.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import collate, default_collate_fn_map


def _require_tensor(owner: str, value: object) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{owner} holds tensors only, not {type(value).__name__}")


@dataclass
class Reading:
    """A sensor value: no collate rule of torch's applies to it."""

    celsius: float


@dataclass
class Readings:
    celsius: torch.Tensor

    def __post_init__(self) -> None:
        _require_tensor("Readings", self.celsius)


def collate_readings(batch, *, collate_fn_map):
    # torch's documented pattern: recurse with the map it was given.
    return Readings(collate([torch.tensor(r.celsius) for r in batch], collate_fn_map=collate_fn_map))


default_collate_fn_map[Reading] = collate_readings


class WithReadings(Dataset):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int):
        return {"reading": Reading(i / 2), "x": torch.full((2,), float(i))}


class CheckedPair(namedtuple("CheckedPair", "image label")):
    """A namedtuple whose ``__new__`` validates its fields."""

    __slots__ = ()

    def __new__(cls, image, label):
        _require_tensor("CheckedPair", image)
        _require_tensor("CheckedPair", label)
        return super().__new__(cls, image, label)


class _Validating(type):
    """A metaclass whose call (the construction of an instance) validates the fields."""

    def __call__(cls, *fields):
        for value in fields:
            _require_tensor(cls.__name__, value)
        return super().__call__(*fields)


class MetaCheckedPair(namedtuple("MetaCheckedPair", "image label"), metaclass=_Validating):
    """A namedtuple whose metaclass validates its fields: the generated methods, and yet user code."""

    __slots__ = ()


class TensorDict(dict):
    """A dict whose ``update`` validates the values."""

    def update(self, other=(), **kwargs):
        for value in dict(other, **kwargs).values():
            _require_tensor("TensorDict", value)
        super().update(other, **kwargs)


class TensorList(list):
    """A list whose item assignment validates the value."""

    def __setitem__(self, index, value):
        _require_tensor("TensorList", value)
        super().__setitem__(index, value)


CONTAINERS = {
    "validating_namedtuple": lambda image, label: CheckedPair(image, label),
    "namedtuple_with_a_validating_metaclass": lambda image, label: MetaCheckedPair(image, label),
    "validating_dict": lambda image, label: TensorDict(image=image, label=label),
    "validating_list": lambda image, label: TensorList([image, label]),
}


class InContainers(Dataset):
    def __init__(self, container: str) -> None:
        self.container = container

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int):
        return CONTAINERS[self.container](torch.full((2, 3), float(i)), torch.tensor(i))
