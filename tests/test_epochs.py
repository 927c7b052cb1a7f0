"""What training frameworks call on a loader besides iterating it: ``set_epoch``,
``skip_first_batches``, ``sample_root`` (a loader re-created from its attributes), and
``constructor_arguments`` (how integrations re-create one)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.utils.data as tud
from hypothesis import given, settings
from hypothesis import strategies as st

import fastload
from fastload.loader import constructor_arguments

from .datasets import Indices, RandomAugment, ShardedStream

# The loaders below iterate fastload's DistributedSampler epoch after epoch, as its epochs come.
pytestmark = pytest.mark.filterwarnings("ignore:DistributedSampler was iterated again without set_epoch")


def values(batches):
    return [b.flatten().tolist() for b in batches]


def distributed(n=23, **kwargs):
    return fastload.DataLoader(Indices(n), batch_size=3,
                               sampler=fastload.DistributedSampler(Indices(n), num_replicas=2, rank=1, seed=4),
                               **kwargs)


# set_epoch


def test_set_epoch_gives_the_order_of_that_epoch():
    loader = distributed()
    epochs = [values(loader) for _ in range(4)]
    fresh = distributed()
    fresh.set_epoch(2)
    assert values(fresh) == epochs[2]
    assert values(fresh) == epochs[3]  # then on from there


def test_set_epoch_sets_the_epoch_of_the_sample_seeds():
    def make():
        return fastload.DataLoader(RandomAugment(), batch_size=4, seed_per_sample=True, sample_root=5)
    loader = make()
    epochs = [values(loader) for _ in range(3)]
    fresh = make()
    fresh.set_epoch(2)
    assert values(fresh) == epochs[2] != epochs[1]
    assert fresh.state_dict()["epoch"] == 3


def test_set_epoch_reaches_the_sampler_inside_a_batch_sampler():
    sampler = fastload.DistributedSampler(Indices(20), num_replicas=2, rank=0)
    loader = fastload.DataLoader(Indices(20), batch_sampler=tud.BatchSampler(sampler, 4, False))
    loader.set_epoch(7)
    assert sampler.epoch == 7


def test_set_epoch_keeps_a_state_of_the_same_epoch_and_drops_one_of_another():
    loader = distributed()
    values(loader)
    iterator = iter(loader)
    head = [next(iterator).tolist() for _ in range(2)]
    state = json.loads(json.dumps(loader.state_dict()))
    rest = values(iterator)
    same = distributed()
    same.load_state_dict(state)
    same.set_epoch(1)
    assert values(same) == rest
    other = distributed()
    other.load_state_dict(state)
    with pytest.warns(UserWarning, match=r"set_epoch\(3\) drops the loaded state's position in epoch 1"):
        other.set_epoch(3)
    assert len(values(other)) == len(head) + len(rest)


def test_set_epoch_of_the_loaded_epoch_keeps_the_samplers_epoch_from_the_state():
    def make():
        dataset = Indices(24)
        return fastload.DataLoader(dataset, batch_size=3,
                                   sampler=fastload.DistributedSampler(dataset, num_replicas=2, rank=0, seed=2))
    loader = make()
    loader.sampler.set_epoch(100)  # the sampler's epochs are the user's own, not the loader's
    iterator = iter(loader)
    next(iterator)
    state = loader.state_dict()
    rest = values(iterator)
    resumed = make()
    resumed.load_state_dict(state)
    resumed.set_epoch(0)  # the loader's epoch of that state
    assert values(resumed) == rest


def test_set_epoch_after_a_state_at_the_end_of_an_epoch_says_nothing():
    loader = distributed()
    iterator = iter(loader)
    for _ in range(len(loader)):  # every batch, without reaching StopIteration (as HF's Trainer does)
        next(iterator)
    state = loader.state_dict()
    resumed = distributed()
    resumed.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.set_epoch(1)


@pytest.mark.parametrize("epoch", [-1, 1.0, "2", True])
def test_set_epoch_refuses_what_is_not_an_epoch(epoch):
    with pytest.raises(ValueError, match="set_epoch: epoch must be a whole number >= 0"):
        distributed().set_epoch(epoch)


# skip_first_batches


def test_skip_first_batches_returns_the_loader_positioned_after_them():
    full = values(distributed(num_workers=2))
    loader = distributed(num_workers=2)
    assert loader.skip_first_batches(3) is loader
    assert values(loader) == full[3:]
    assert values(loader) != full[3:]  # the epoch after is whole


def test_skip_first_batches_counts_in_the_epoch_set_afterwards():
    loader = distributed()
    epochs = [values(loader) for _ in range(3)]
    skipped = distributed().skip_first_batches(2)
    skipped.set_epoch(2)  # as HF's Trainer calls them
    assert values(skipped) == epochs[2][2:]


def test_skip_first_batches_of_an_iterable_dataset_reads_and_drops_them():
    full = values(fastload.DataLoader(ShardedStream(30), batch_size=4, num_workers=2))
    loader = fastload.DataLoader(ShardedStream(30), batch_size=4, num_workers=2)
    loader.skip_first_batches(3)
    iterator = iter(loader)
    assert loader.state_dict()["batches"] == 3
    assert values(iterator) == full[3:]


def test_skip_first_batches_keeps_a_loaded_state_at_that_count_and_refuses_another():
    loader = distributed()
    iterator = iter(loader)
    next(iterator), next(iterator)
    state = loader.state_dict()
    rest = values(iterator)
    resumed = distributed()
    resumed.load_state_dict(state)
    assert values(resumed.skip_first_batches(2)) == rest
    again = distributed()
    again.load_state_dict(state)
    with pytest.raises(ValueError, match=r"already positions the loader after 2 batches of epoch 0"):
        again.skip_first_batches(3)


def test_skip_first_batches_of_an_order_drawn_from_the_global_rng_counts_in_that_order():
    torch.manual_seed(3)
    full = values(fastload.DataLoader(Indices(20), batch_size=3, shuffle=True))
    torch.manual_seed(3)
    assert values(fastload.DataLoader(Indices(20), batch_size=3, shuffle=True).skip_first_batches(2)) == full[2:]


def test_skip_first_batches_beyond_the_epoch_leaves_it_empty():
    loader = distributed()
    assert values(loader.skip_first_batches(100)) == []


@given(n=st.integers(1, 40), batch_size=st.integers(1, 7), drop_last=st.booleans(), workers=st.sampled_from([0, 2]),
       sampler=st.sampled_from(["sequential", "shuffle", "distributed", "torch_random", "bucket"]),
       skip=st.integers(0, 12))
@settings(max_examples=25, deadline=None)
def test_skip_first_batches_gives_the_rest_of_an_uninterrupted_epoch(n, batch_size, drop_last, workers, sampler,
                                                                     skip):
    def make():
        dataset = Indices(n)
        if sampler == "bucket":
            return fastload.DataLoader(dataset, num_workers=workers, batch_sampler=fastload.BucketBatchSampler(
                [i % 5 + 1 for i in range(n)], batch_size, drop_last=drop_last, seed=3))
        chosen = {"sequential": None, "shuffle": None,
                  "distributed": fastload.DistributedSampler(dataset, num_replicas=3, rank=2, seed=1),
                  "torch_random": tud.RandomSampler(dataset, generator=torch.Generator().manual_seed(2))}[sampler]
        return fastload.DataLoader(dataset, batch_size=batch_size, drop_last=drop_last, num_workers=workers,
                                   sampler=chosen, shuffle=sampler == "shuffle",
                                   generator=torch.Generator().manual_seed(9))
    full = values(make())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # replaying a torch sampler says so
        assert values(make().skip_first_batches(skip)) == full[skip:]


# sample_root


def test_a_loader_made_from_anothers_sample_root_seeds_its_samples_alike():
    first = fastload.DataLoader(RandomAugment(), batch_size=4, shuffle=True, seed_per_sample=True,
                                generator=torch.Generator().manual_seed(1))
    batches = values(first)
    assert first.sample_root is not None
    copy = fastload.DataLoader(RandomAugment(), batch_size=4, shuffle=True, seed_per_sample=True,
                               generator=torch.Generator().manual_seed(1), sample_root=first.sample_root)
    other = fastload.DataLoader(RandomAugment(), batch_size=4, shuffle=True, seed_per_sample=True,
                                generator=torch.Generator().manual_seed(1), sample_root=first.sample_root + 1)
    assert values(copy) == batches != values(other)


@pytest.mark.parametrize("root", [-1, 2**63, 1.5, "7"])
def test_sample_root_must_be_a_seed(root):
    with pytest.raises(ValueError, match="sample_root must be a whole number in"):
        fastload.DataLoader(Indices(4), sample_root=root)


# constructor_arguments


def test_constructor_arguments_rebuild_an_equal_loader():
    original = fastload.DataLoader(Indices(20), batch_size=3, shuffle=True, num_workers=2, drop_last=True,
                                   on_error="skip", telemetry=True, generator=torch.Generator().manual_seed(4))
    arguments = constructor_arguments(original)
    assert arguments["sampler"] is original.sampler and arguments["on_error"] == "skip" and arguments["telemetry"]
    assert "collate_fn" not in arguments  # the default one is the new loader's to choose
    rebuilt = fastload.DataLoader(**arguments)
    assert values(rebuilt) == values(fastload.DataLoader(Indices(20), batch_size=3, shuffle=True, num_workers=2,
                                                        drop_last=True, generator=torch.Generator().manual_seed(4)))


def test_constructor_arguments_of_a_torch_loader_make_a_fastload_one():
    torch_loader = tud.DataLoader(Indices(10), batch_size=4, num_workers=0, collate_fn=lambda b: len(b))
    loader = fastload.DataLoader(**constructor_arguments(torch_loader, on_error="skip"))
    assert list(loader) == [4, 4, 2] and loader.on_error == "skip"


def test_a_batching_change_replaces_the_batching_arguments():
    original = fastload.DataLoader(Indices(10), batch_size=4, drop_last=True)
    bucket = fastload.BucketBatchSampler([1] * 10, 5)
    arguments = constructor_arguments(original, batch_sampler=bucket)
    assert {"batch_size", "drop_last", "sampler"}.isdisjoint(arguments) and arguments["batch_sampler"] is bucket
    assert [len(b) for b in fastload.DataLoader(**arguments)] == [5, 5]
    arguments = constructor_arguments(original, sampler=[9, 8, 7, 6, 5])
    assert values(fastload.DataLoader(**arguments)) == [[9, 8, 7, 6]]  # batch_size and drop_last kept


def test_a_sampler_change_keeps_batch_size_none():
    original = fastload.DataLoader(Indices(6), batch_size=None)
    rebuilt = fastload.DataLoader(**constructor_arguments(original, sampler=[5, 4]))
    assert [b.tolist() for b in rebuilt] == [[5], [4]] and rebuilt.batch_size is None


@pytest.mark.parametrize("batch_size", [2, None])
def test_an_explicit_collate_fn_is_kept_unless_torch_would_pick_it(batch_size):
    convert = fastload.DataLoader(Indices(4), batch_size=batch_size, collate_fn=fastload.default_convert)
    collate = fastload.DataLoader(Indices(4), batch_size=batch_size, collate_fn=fastload.default_collate)
    assert ("collate_fn" in constructor_arguments(convert)) == (batch_size is not None)
    assert ("collate_fn" in constructor_arguments(collate)) == (batch_size is None)
