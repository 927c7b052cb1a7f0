"""fastload.default_collate is torch's default_collate, case by case."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate as torch_collate

from fastload import default_collate
from fastload.collate import StackPlan, deferred_collate

from .datasets import Mixed, Pair
from .helpers import assert_same

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


@pytest.mark.parametrize("name", list(ERRORS))
def test_same_errors_as_torch(name):
    with pytest.raises(Exception) as torch_error:
        torch_collate(ERRORS[name])
    with pytest.raises(type(torch_error.value)) as ours:
        default_collate(ERRORS[name])
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
