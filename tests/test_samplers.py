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


def test_token_batches_are_formed_once_so_every_epoch_has_len_batches():
    sampler = fastload.BucketBatchSampler(LENGTHS, max_tokens=1200, seed=2, sort_window=200)
    epochs = [list(sampler) for _ in range(4)]
    assert {len(e) for e in epochs} == {len(sampler)}
    assert all(sorted(i for b in e for i in b) == list(range(1000)) for e in epochs)
    assert epochs[0] != epochs[1] and sorted(map(sorted, epochs[0])) == sorted(map(sorted, epochs[1]))


def test_fixed_size_bucket_batches_are_formed_anew_every_epoch():
    sampler = fastload.BucketBatchSampler(LENGTHS, 16, seed=2, sort_window=200)
    first, second = list(sampler), list(sampler)
    assert sorted(map(sorted, first)) != sorted(map(sorted, second))


@pytest.mark.parametrize("mode", [dict(batch_size=16), dict(max_tokens=1200)])
def test_a_bucket_sampler_given_a_distributed_sampler_splits_as_the_distributed_one(mode):
    for rank in range(3):
        injected = tud.DistributedSampler(range(1000), num_replicas=3, rank=rank)  # what Lightning injects
        given = fastload.BucketBatchSampler(LENGTHS, seed=7, sampler=injected, **mode)
        twin = fastload.DistributedBucketBatchSampler(LENGTHS, seed=7, num_replicas=3, rank=rank, **mode)
        assert isinstance(given, tud.BatchSampler) and given.sampler is injected
        assert (given.num_replicas, given.rank) == (3, rank) and len(given) == len(twin)
        assert list(given) == list(twin)
        injected.set_epoch(5)  # Lightning sets the injected sampler's epoch
        twin.set_epoch(5)
        assert list(given) == list(twin) and given.epoch == 5


def test_a_bucket_sampler_given_another_sampler_stays_whole():
    # Lightning re-creates batch samplers for prediction on one device too, with a SequentialSampler
    given = fastload.BucketBatchSampler(LENGTHS, 16, seed=4, sampler=tud.SequentialSampler(range(1000)))
    assert (given.num_replicas, given.rank) == (1, 0)
    assert list(given) == list(fastload.BucketBatchSampler(LENGTHS, 16, seed=4))


def test_a_bucket_sampler_needs_its_lengths_first():
    with pytest.raises(TypeError, match="BucketBatchSampler got a DistributedSampler where the sample lengths go"):
        fastload.BucketBatchSampler(tud.DistributedSampler(range(10), num_replicas=2, rank=0), batch_size=4,
                                    drop_last=False)
    with pytest.raises(ValueError, match="give one or the other"):
        fastload.DistributedBucketBatchSampler(LENGTHS, 16, num_replicas=2, rank=0,
                                               sampler=tud.DistributedSampler(range(1000), num_replicas=3, rank=0))


def test_bucket_distributed_keeps_the_configuration_split_across_ranks():
    sampler = fastload.BucketBatchSampler(LENGTHS, max_tokens=1200, seed=3, shuffle=False, sort_window=100)
    parts = [sampler.distributed(2, r) for r in (0, 1)]
    assert [type(p).__name__ for p in parts] == ["DistributedBucketBatchSampler"] * 2
    assert {tuple(sorted(b)) for p in parts for b in p} == {tuple(sorted(b)) for b in sampler}
    assert len(parts[0]) == len(parts[1]) == -(-len(sampler) // 2)


def test_distributed_wrappers_are_torch_distributed_samplers():
    random = fastload.DistributedSamplerWrapper(tud.RandomSampler(range(10)), num_replicas=2, rank=0)
    ordered = fastload.DistributedSamplerWrapper(range(10), num_replicas=2, rank=1)
    assert isinstance(random, tud.DistributedSampler) and random.shuffle and not ordered.shuffle
    assert (random.num_samples, random.total_size) == (5, 10)


@pytest.mark.parametrize("n", [45, 48, 3])
def test_distributed_batch_sampler_gives_full_batches_real_samples_first_at_the_last_step(n):
    world, size = 2, 4
    parts = [list(fastload.DistributedBatchSampler(range(n), size, world, r)) for r in range(world)]
    steps = -(-n // (size * world))
    assert all(len(p) == steps and all(len(b) == size for b in p) for p in parts)
    gathered = [i for step in range(steps) for p in parts for i in p[step]]  # gather, rank after rank
    assert gathered[:n] == list(range(n)) and gathered[n:] == [i % n for i in range(len(gathered) - n)]
    assert len(fastload.DistributedBatchSampler(range(n), size, world, 0)) == steps


@pytest.mark.parametrize("n", [45, 48, 3])
def test_a_distributed_batch_sampler_of_a_batch_sampler_keeps_its_batches_and_completes_the_last_step(n):
    world = 2
    batches = tud.BatchSampler(range(n), 4, drop_last=False)
    parts = [list(fastload.DistributedBatchSampler(batches, None, world, r)) for r in range(world)]
    assert len(parts[0]) == len(parts[1]) == len(fastload.DistributedBatchSampler(batches, None, world, 0))
    assert all(len(b) == 4 for p in parts for b in p)  # one shape for every rank's batch of a step
    gathered = [i for step in range(len(parts[0])) for p in parts for i in p[step]]
    assert gathered[:n] == list(range(n))  # the real samples first
    assert n < 8 or (parts[0][0], parts[1][0]) == ([0, 1, 2, 3], [4, 5, 6, 7])  # its batches, dealt in turn


def test_a_distributed_batch_sampler_of_batches_without_a_size_repeats_whole_batches():
    batches = [[0, 1, 2], [3], [4, 5]]
    parts = [list(fastload.DistributedBatchSampler(batches, None, 2, r)) for r in (0, 1)]
    assert parts == [[[0, 1, 2], [4, 5]], [[3], [0, 1, 2]]]


def test_a_distributed_batch_sampler_over_a_distributed_sampler_only_batches_it():
    # What Lightning makes of one when it injects its DistributedSampler: no second split
    injected = tud.DistributedSampler(range(20), num_replicas=2, rank=1, shuffle=False)
    sampler = fastload.DistributedBatchSampler(injected, 4, drop_last=False)
    assert sampler.presplit and list(sampler) == [[1, 3, 5, 7], [9, 11, 13, 15], [17, 19]] and len(sampler) == 3
    injected.set_epoch(3)  # Lightning sets the injected sampler's epoch
    list(sampler)
    assert sampler.epoch == 3
    with pytest.raises(ValueError, match="distributed already; it is batched as it is"):
        fastload.DistributedBatchSampler(injected, 4, num_replicas=2, rank=0)


def test_distributed_batch_sampler_drop_last_repeats_nothing():
    parts = [list(fastload.DistributedBatchSampler(range(45), 4, 2, r, drop_last=True)) for r in (0, 1)]
    seen = [i for p in parts for b in p for i in b]
    assert [len(p) for p in parts] == [5, 5] and sorted(seen) == list(range(40))


def test_distributed_batch_sampler_orders_a_random_sampler_by_seed_and_epoch_and_resumes():
    def make(rank):
        return fastload.DistributedBatchSampler(tud.RandomSampler(range(30)), 4, 2, rank, seed=5)
    first, again = make(0), make(0)
    epochs = []
    for epoch in range(2):
        first.set_epoch(epoch)
        epochs.append(list(first))
    assert epochs[0] != epochs[1] and list(again) == epochs[0]
    both = [i for b in epochs[0] + list(make(1)) for i in b]
    assert set(both) == set(range(30)) and len(both) == 32  # two repeated to fill the last step
    sampler = make(0)
    sampler.set_epoch(1)
    it = iter(sampler)
    head = [next(it) for _ in range(2)]
    resumed = make(0)
    resumed.load_state_dict(json.loads(json.dumps(sampler.state_dict())))
    assert head + list(resumed) == epochs[1]
    with pytest.raises(ValueError, match="batch_size: 4 in the state, 5 here"):
        fastload.DistributedBatchSampler(tud.RandomSampler(range(30)), 5, 2, 0).load_state_dict(sampler.state_dict())


def test_a_distributed_samplers_state_loads_on_another_rank():
    sampler = fastload.DistributedSampler(range(30), num_replicas=2, rank=0, seed=1)
    it = iter(sampler)
    next(it)
    state = sampler.state_dict()
    assert "rank" not in state["config"]
    other = fastload.DistributedSampler(range(30), num_replicas=2, rank=1, seed=1)
    other.load_state_dict(state)  # Lightning restores rank 0's loader state on every rank
    assert list(other) == list(fastload.DistributedSampler(range(30), num_replicas=2, rank=1, seed=1))[1:]


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
