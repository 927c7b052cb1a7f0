"""fastload's samplers on their own (the distributed ones with explicit rank/world here;
under real torchrun in test_distributed.py)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.utils.data as tud

import fastload
from fastload.text import padding_fraction


def test_random_sampler_is_torchs_kind_and_reproducible():
    a = fastload.RandomSampler(range(50), generator=torch.Generator().manual_seed(1))
    b = fastload.RandomSampler(range(50), generator=torch.Generator().manual_seed(1))
    assert isinstance(a, tud.RandomSampler)
    epochs_a, epochs_b = [list(a) for _ in range(3)], [list(b) for _ in range(3)]
    assert epochs_a == epochs_b and all(sorted(e) == list(range(50)) for e in epochs_a)
    assert epochs_a[0] != epochs_a[1]


@pytest.mark.parametrize("kwargs, length", [(dict(replacement=True, num_samples=77), 77), (dict(num_samples=120), 120)])
def test_random_sampler_replacement_and_num_samples(kwargs, length):
    order = list(fastload.RandomSampler(range(50), seed=3, **kwargs))
    assert len(order) == length and all(0 <= i < 50 for i in order)


def test_sampler_state_resumes_its_own_iteration():
    sampler = fastload.RandomSampler(range(30), seed=9)
    list(sampler)
    it = iter(sampler)
    head = [next(it) for _ in range(7)]
    state = json.loads(json.dumps(sampler.state_dict()))
    assert {k: v for k, v in state.items() if k != "generator"} == {
        "drawn_seed": None, "epoch": 1, "start": 7, "config": {"length": 30, "replacement": False, "num_samples": 30}}
    other = fastload.RandomSampler(range(30), seed=0)
    other.load_state_dict(state)
    full = fastload.RandomSampler(range(30), seed=9)
    list(full)
    assert head + list(other) == list(full)


@pytest.mark.parametrize("saved, resumed, named", [
    (lambda: fastload.RandomSampler(range(30)), lambda: fastload.RandomSampler(range(31)), "length: 30 in the state, 31 here"),
    (lambda: fastload.RandomSampler(range(30)), lambda: fastload.RandomSampler(range(30), num_samples=20),
     "num_samples: 30 in the state, 20 here"),
    (lambda: fastload.DistributedSampler(range(30), num_replicas=2, rank=0),
     lambda: fastload.DistributedSampler(range(30), num_replicas=3, rank=0), "num_replicas: 2 in the state, 3 here"),
    (lambda: fastload.BucketBatchSampler([3, 1, 2] * 10, batch_size=4),
     lambda: fastload.BucketBatchSampler([3, 1, 2] * 10, batch_size=5), "batch_size: 4 in the state, 5 here"),
    (lambda: fastload.BucketBatchSampler([3, 1, 2] * 10, batch_size=4),
     lambda: fastload.BucketBatchSampler([3, 2, 1] * 10, batch_size=4), "lengths_crc32: "),
])
def test_a_sampler_state_is_refused_by_a_sampler_configured_otherwise(saved, resumed, named):
    state = saved().state_dict()
    with pytest.raises(ValueError, match=f"configured otherwise.*{named}"):
        resumed().load_state_dict(state)


def test_distributed_sampler_matches_torch_and_warns_once_without_set_epoch():
    ours = fastload.DistributedSampler(range(11), num_replicas=3, rank=2, seed=4)
    theirs = tud.DistributedSampler(range(11), num_replicas=3, rank=2, seed=4)
    for epoch in (0, 5):
        ours.set_epoch(epoch)
        theirs.set_epoch(epoch)
        assert list(ours) == list(theirs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second, third = list(ours), list(ours), list(ours)
    assert first != second != third
    assert len([w for w in caught if "set_epoch" in str(w.message)]) == 1
    with pytest.raises(ValueError, match="Invalid rank 3"):
        fastload.DistributedSampler(range(11), num_replicas=3, rank=3)


def test_distributed_sampler_needs_rank_without_process_group():
    with pytest.raises((RuntimeError, ValueError)):
        fastload.DistributedSampler(range(11))


@pytest.mark.parametrize("drop_last", [False, True])
def test_wrapper_splits_any_sampler_evenly(drop_last):
    def ranks(world):
        return [
            list(fastload.DistributedSamplerWrapper(
                tud.WeightedRandomSampler([1.0 + i % 3 for i in range(23)], 23, replacement=False),
                num_replicas=world, rank=r, drop_last=drop_last, seed=1))
            for r in range(world)
        ]
    parts = ranks(4)
    assert len({len(p) for p in parts}) == 1
    assert len(parts[0]) == (5 if drop_last else 6)
    seen = [i for p in parts for i in p]
    if drop_last:
        assert len(set(seen)) == len(seen) == 20
    else:
        assert set(seen) == set(range(23)) and len(seen) == 24


def test_wrapper_distributes_batch_samplers():
    batches = tud.BatchSampler(range(10), 3, drop_last=False)  # 4 batches
    parts = [list(fastload.DistributedSamplerWrapper(batches, num_replicas=2, rank=r)) for r in (0, 1)]
    assert parts == [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5], [9]]]


LENGTHS = np.random.default_rng(0).integers(1, 300, size=1000)


def test_bucket_batches_cover_every_index_once_and_cut_padding():
    sampler = fastload.BucketBatchSampler(LENGTHS, 16, seed=2)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert len(batches) == len(sampler) == 63
    random_batches = list(tud.BatchSampler(tud.RandomSampler(range(1000)), 16, False))
    assert padding_fraction(batches, LENGTHS) < padding_fraction(random_batches, LENGTHS) / 5


def test_bucket_token_budget_counts_padding():
    sampler = fastload.BucketBatchSampler(LENGTHS, max_tokens=1200, seed=2)
    batches = list(sampler)
    assert all(max(LENGTHS[b]) * len(b) <= 1200 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(1000))


def test_bucket_drop_last_and_no_shuffle():
    sampler = fastload.BucketBatchSampler(LENGTHS[:50], 16, drop_last=True, shuffle=False)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 and all(len(b) == 16 for b in batches)


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "exactly one of batch_size and max_tokens"),
    (dict(batch_size=4, max_tokens=10), "exactly one"),
    (dict(max_tokens=100), "sample 2 has length 400, more than max_tokens=100"),
    (dict(batch_size=0), "batch_size must be >= 1"),
])
def test_bucket_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fastload.BucketBatchSampler([1, 2, 400, 3], **kwargs)


def test_distributed_bucket_ranks_get_equal_counts_and_everything():
    parts = [list(fastload.DistributedBucketBatchSampler(LENGTHS, 16, num_replicas=3, rank=r, seed=7))
             for r in range(3)]
    assert len({len(p) for p in parts}) == 1
    assert set(i for p in parts for b in p for i in b) == set(range(1000))


def test_load_state_dict_validates():
    sampler = fastload.SequentialSampler(range(5))
    with pytest.raises(KeyError, match="epoch"):
        sampler.load_state_dict({"seed": 0})
    for bad in ({"start": -1}, {"start": 2.5}, {"start": "3"}, {"epoch": True}, {"seed": -1}):
        state = {"seed": 0, "epoch": 0, **bad}
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be a whole number >= 0"):
            sampler.load_state_dict(state)
    sampler.load_state_dict({"seed": 0, "epoch": 0, "start": 3})
    assert list(sampler) == [3, 4]


@pytest.mark.parametrize("drawn_seed", [2**63, -1, 1.5, "3"])
def test_a_random_sampler_state_with_a_seed_torch_never_draws_is_refused(drawn_seed):
    torch.manual_seed(0)
    sampler = fastload.RandomSampler(range(10))
    it = iter(sampler)
    head = [next(it) for _ in range(3)]
    state = sampler.state_dict()
    assert type(state["drawn_seed"]) is int and state["generator"] is None  # the seed it drew
    other = fastload.RandomSampler(range(10))
    with pytest.raises(ValueError, match=r"drawn_seed must be a whole number in \[0, 2\*\*63\)"):
        other.load_state_dict({**state, "drawn_seed": drawn_seed})
    other.load_state_dict(state)
    torch.manual_seed(0)
    assert head + list(other) == list(tud.RandomSampler(range(10)))
