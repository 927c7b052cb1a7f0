"""fastload.default_collate is torch's default_collate, case by case."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from hypothesis import given
from torch.utils.data import default_collate as torch_collate
from torch.utils.data._utils.collate import default_collate_fn_map

import fastload
from fastload import default_collate
from fastload.collate import StackPlan, deferred_collate

from .collate_types import CONTAINERS, InContainers, Reading, Readings, WithReadings
from .datasets import Mixed, Pair, Squares
from .helpers import assert_same
from .test_properties import PROPERTY, batches

Point = collections.namedtuple("Point", "x y")

CASES = {
    "tensors": [torch.arange(3), torch.arange(3, 6)],
    "bfloat16": [torch.ones(2, dtype=torch.bfloat16), torch.zeros(2, dtype=torch.bfloat16)],
    "numpy": [np.ones((2, 2), dtype=np.float32), np.zeros((2, 2), dtype=np.float32)],
    "numpy_scalars": [np.float64(1.5), np.float64(2.5)],
    "ints": [1, 2, 3],
    "floats": [1.0, 2.5],
    "bools": [True, False],
    "strings": ["a", "b"],
    "bytes": [b"a", b"b"],
    "dicts": [{"a": torch.tensor(1), "b": "x"}, {"a": torch.tensor(2), "b": "y"}],
    "ordered_dict": [collections.OrderedDict(a=1), collections.OrderedDict(a=2)],
    "namedtuples": [Point(1, torch.tensor([1.0])), Point(2, torch.tensor([2.0]))],
    "tuples": [(1, "a"), (2, "b")],
    "lists": [[1, 2], [3, 4]],
    "nested": [Mixed()[0], Mixed()[1], Mixed()[2]],
    "mixed_dtypes_promote": [torch.tensor([1], dtype=torch.int32), torch.tensor([1.5])],
    "pairs": [Pair(torch.ones(1), 1), Pair(torch.zeros(1), 2)],
}


@pytest.mark.parametrize("name", list(CASES))
def test_same_as_torch(name):
    assert_same(default_collate(CASES[name]), torch_collate(CASES[name]))


ERRORS = {
    "ragged_lists": [[1, 2], [3]],
    "ragged_tensors": [torch.ones(2), torch.ones(3)],
    "unsupported": [object(), object()],
    "string_arrays": [np.array(["a"]), np.array(["b"])],
}


@pytest.mark.parametrize("collate", [default_collate, deferred_collate])
@pytest.mark.parametrize("name", list(ERRORS))
def test_same_errors_as_torch(name, collate):
    with pytest.raises(Exception) as torch_error:
        torch_collate(ERRORS[name])
    with pytest.raises(type(torch_error.value)) as ours:
        collate(ERRORS[name])
    assert str(ours.value) == str(torch_error.value)


def test_deferred_collate_plans_stacks_of_uniform_tensors():
    batch = deferred_collate([{"x": torch.ones(2, 3), "y": 1}, {"x": torch.zeros(2, 3), "y": 2}])
    plan = batch["x"]
    assert isinstance(plan, StackPlan) and plan.shape == (2, 2, 3) and plan.dtype == torch.float32
    assert plan.nbytes == 2 * 2 * 3 * 4
    out = torch.empty(plan.shape)
    plan.stack_into(out)
    assert torch.equal(out, torch.stack([torch.ones(2, 3), torch.zeros(2, 3)]))
    assert torch.equal(batch["y"], torch.tensor([1, 2]))


def loader_batches(loader_class, dataset, num_workers, context=None):
    return list(loader_class(dataset, batch_size=4, num_workers=num_workers, multiprocessing_context=context))


WORKERS = [pytest.param(0, None, id="no_workers"), pytest.param(2, "fork", id="fork"),
           pytest.param(2, "spawn", id="spawn")]


def test_default_collate_applies_a_type_registered_after_import_as_torch_does():
    samples = [Reading(1.5), Reading(2.0)]
    assert_same(default_collate(samples), torch_collate(samples))


@pytest.mark.parametrize("num_workers, context", WORKERS)
def test_a_type_registered_after_import_is_collated_as_by_torch(num_workers, context, no_leaks):
    expected = loader_batches(torch.utils.data.DataLoader, WithReadings(), num_workers, context)
    got = loader_batches(fastload.DataLoader, WithReadings(), num_workers, context)
    assert type(got[0]["reading"]) is Readings
    assert_same(got, expected)


def concatenate(batch, *, collate_fn_map):
    return torch.cat(list(batch))


@pytest.fixture
def tensors_concatenated():
    """torch's registry, with a user's function for tensors in place of torch's."""
    original = default_collate_fn_map[torch.Tensor]
    default_collate_fn_map[torch.Tensor] = concatenate
    yield
    default_collate_fn_map[torch.Tensor] = original


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_users_collate_function_for_tensors_wins_as_in_torch(num_workers, tensors_concatenated, no_leaks):
    expected = loader_batches(torch.utils.data.DataLoader, Squares(12), num_workers)
    got = loader_batches(fastload.DataLoader, Squares(12), num_workers)
    assert got[0][0].shape == (12, 4)  # concatenated, not stacked
    assert_same(got, expected)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("container", list(CONTAINERS))
def test_user_containers_are_built_from_real_tensors_as_by_torch(container, num_workers, no_leaks):
    expected = loader_batches(torch.utils.data.DataLoader, InContainers(container), num_workers)
    got = loader_batches(fastload.DataLoader, InContainers(container), num_workers)
    assert_same(got, expected)


def finished(batch):
    """``batch`` with every StackPlan stacked: what the main process receives."""
    if isinstance(batch, StackPlan):
        out = torch.empty(batch.shape, dtype=batch.dtype)
        batch.stack_into(out)
        return out
    if isinstance(batch, dict):
        return type(batch)((k, finished(v)) for k, v in batch.items())
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(finished(v) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(finished(v) for v in batch)
    return batch


@pytest.mark.parametrize("name", list(CASES))
def test_deferred_collate_finished_is_torchs_collate(name):
    assert_same(finished(deferred_collate(CASES[name])), torch_collate(CASES[name]))


@PROPERTY
@given(batches())
def test_deferred_collate_finished_matches_torch_on_any_nesting(batch):
    assert_same(finished(deferred_collate(batch)), torch_collate(batch))
