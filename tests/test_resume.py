"""A loader restored from state_dict() after k batches yields exactly the batches an
uninterrupted loader yields after k, this epoch and the next ones."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastload
from fastload.resume import SettledPositions

from .datasets import Indices, RandomAugment, Range, Squares
from .helpers import assert_same


def make(dataset, seed, **kwargs):
    return fastload.DataLoader(dataset, generator=torch.Generator().manual_seed(seed), **kwargs)


def uninterrupted(dataset, epochs, **kwargs):
    loader = make(dataset, 0, **kwargs)
    return [list(loader) for _ in range(epochs)]


def interrupted(dataset, epochs, stop_epoch, stop_batch, **kwargs):
    """Run until ``stop_batch`` batches of epoch ``stop_epoch``, save, restore into a new
    loader (built with another generator seed: the state must carry everything), go on."""
    loader = make(dataset, 0, **kwargs)
    before = []
    for epoch in range(stop_epoch + 1):
        it = iter(loader)
        batches = [next(it) for _ in range(stop_batch if epoch == stop_epoch else len(loader))]
        before.append(batches)
    state = json.loads(json.dumps(loader.state_dict()))
    del it, loader
    resumed = make(dataset, 99, **kwargs)
    resumed.load_state_dict(state)
    rest = [list(resumed) for _ in range(epochs - stop_epoch)]
    return before, rest, state


CASES = {
    "sequential": dict(batch_size=5),
    "shuffle": dict(batch_size=5, shuffle=True),
    "shuffle_drop_last": dict(batch_size=7, shuffle=True, drop_last=True),
    "seed_per_sample": dict(batch_size=4, shuffle=True, seed_per_sample=True),
    "no_batching": dict(batch_size=None, shuffle=True),
}


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_resume_mid_epoch_is_exact(case, num_workers):
    dataset = RandomAugment() if case == "seed_per_sample" else Squares()
    kwargs = dict(CASES[case], num_workers=num_workers)
    full = uninterrupted(dataset, 3, **kwargs)
    before, rest, state = interrupted(dataset, 3, stop_epoch=1, stop_batch=3, **kwargs)
    assert state["epoch"] == 1 and state["batches"] == 3
    assert_same(before[0], full[0])
    assert_same(before[1], full[1][:3])
    assert_same(rest[0], full[1][3:])
    assert_same(rest[1], full[2])


def test_state_after_a_finished_epoch_points_at_the_next_epoch():
    full = uninterrupted(Squares(), 2, batch_size=8, shuffle=True)
    loader = make(Squares(), 0, batch_size=8, shuffle=True)
    list(loader)
    state = loader.state_dict()
    assert (state["epoch"], state["batches"]) == (1, 0)
    resumed = make(Squares(), 5, batch_size=8, shuffle=True)
    resumed.load_state_dict(state)
    assert_same(list(resumed), full[1])


def test_state_is_small_and_json():
    loader = make(Squares(1_000_000), 0, batch_size=8, shuffle=True, num_workers=2)
    it = iter(loader)
    for _ in range(500):
        next(it)
    state = loader.state_dict()
    text = json.dumps(state)
    assert len(text) < 1024, text
    assert state["batches"] == 500


def test_resume_with_a_bucket_batch_sampler(tmp_path):
    lengths = [int(x) for x in torch.randint(1, 50, (200,), generator=torch.Generator().manual_seed(0))]
    def sampler():
        return fastload.BucketBatchSampler(lengths, max_tokens=120, seed=4)

    full = list(fastload.DataLoader(Squares(200), batch_sampler=sampler(), num_workers=2))
    loader = fastload.DataLoader(Squares(200), batch_sampler=sampler(), num_workers=2)
    it = iter(loader)
    head = [next(it) for _ in range(6)]
    state = loader.state_dict()
    resumed = fastload.DataLoader(Squares(200), batch_sampler=sampler())
    resumed.load_state_dict(state)
    assert_same(head + list(resumed), full)


def test_torch_samplers_are_replayed_with_a_warning():
    order = list(range(39, -1, -1))  # any deterministic sampler: a plain list of indices
    full = list(fastload.DataLoader(Squares(), sampler=order, batch_size=4))
    loader = fastload.DataLoader(Squares(), sampler=order, batch_size=4)
    it = iter(loader)
    head = [next(it) for _ in range(3)]
    resumed = fastload.DataLoader(Squares(), sampler=order, batch_size=4)
    with pytest.warns(UserWarning, match="replaying its first 12 items"):
        resumed.load_state_dict(loader.state_dict())
    assert_same(head + list(resumed), full)


def test_iterable_datasets_are_fast_forwarded_with_a_warning():
    full = list(fastload.DataLoader(Range(0, 30), batch_size=4, num_workers=2))
    loader = fastload.DataLoader(Range(0, 30), batch_size=4, num_workers=2)
    it = iter(loader)
    head = [next(it) for _ in range(3)]
    resumed = fastload.DataLoader(Range(0, 30), batch_size=4, num_workers=2)
    with pytest.warns(UserWarning, match="re-reads and discards the 12 items"):
        resumed.load_state_dict(loader.state_dict())
    assert_same(head + list(resumed), full)


def test_load_state_dict_rejects_incomplete_state():
    with pytest.raises(KeyError, match="batches"):
        fastload.DataLoader(Squares()).load_state_dict({"seed": 1, "epoch": 0})


def indices_of(batches) -> list[int]:
    return [int(v) for batch in batches for v in batch.flatten()]


def take(loader, count):
    it = iter(loader)
    return [next(it) for _ in range(count)]


@pytest.mark.parametrize("resume_workers", [0, 2])
def test_resume_after_out_of_order_delivery_delivers_every_sample_once(resume_workers):
    # Batch 1 (samples 4-7) is slow: with in_order=False batches 0, 2, 3 arrive first.
    dataset = Indices(40, slow=(4,), delay=1.0)
    loader = fastload.DataLoader(dataset, batch_size=4, num_workers=2, in_order=False)
    before = indices_of(take(loader, 3))
    assert 4 not in before  # the scenario: delivered out of order
    state = json.loads(json.dumps(loader.state_dict()))
    del loader
    resumed = fastload.DataLoader(Indices(40), batch_size=4, num_workers=resume_workers, in_order=False)
    resumed.load_state_dict(state)
    after = indices_of(resumed)
    assert sorted(before + after) == list(range(40))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_after_a_batch_that_failed_whole_repeats_nothing(num_workers):
    dataset = Indices(40, failing=(4, 5, 6, 7))  # batch 1 fails whole: it is left out
    loader = fastload.DataLoader(dataset, batch_size=4, num_workers=num_workers, on_error="skip")
    before = indices_of(take(loader, 3))
    assert before == [0, 1, 2, 3, *range(8, 16)]
    resumed = fastload.DataLoader(dataset, batch_size=4, num_workers=num_workers, on_error="skip")
    resumed.load_state_dict(json.loads(json.dumps(loader.state_dict())))
    assert indices_of(resumed) == list(range(16, 40))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("new_batch_size", [3, 8])
def test_resume_with_another_batch_size_continues_at_the_same_sample(shuffle, new_batch_size):
    full = indices_of(make(Indices(40), 0, batch_size=4, shuffle=shuffle))
    loader = make(Indices(40), 0, batch_size=4, shuffle=shuffle, num_workers=2)
    before = indices_of(take(loader, 3))
    resumed = make(Indices(40), 5, batch_size=new_batch_size, shuffle=shuffle)
    resumed.load_state_dict(json.loads(json.dumps(loader.state_dict())))
    batches = list(resumed)
    assert {len(b) for b in batches[:-1]} == {new_batch_size}
    assert before + indices_of(batches) == full


def test_resume_with_another_num_workers_is_exact():
    full = uninterrupted(Squares(), 1, batch_size=5, shuffle=True, num_workers=2)[0]
    loader = make(Squares(), 0, batch_size=5, shuffle=True, num_workers=2)
    head = take(loader, 3)
    resumed = make(Squares(), 7, batch_size=5, shuffle=True, num_workers=0)
    resumed.load_state_dict(loader.state_dict())
    assert_same(head + list(resumed), full)


@pytest.mark.parametrize("shuffle", [False, True])
def test_resume_into_a_dataset_of_another_length_is_refused(shuffle):
    loader = make(Indices(40), 0, batch_size=4, shuffle=shuffle)
    take(loader, 3)
    resumed = make(Indices(41), 0, batch_size=4, shuffle=shuffle)
    with pytest.raises(ValueError, match=r"len\(dataset\): 40 in the state, 41 here"):
        resumed.load_state_dict(loader.state_dict())


def test_resume_into_another_sampler_is_refused():
    loader = make(Indices(40), 0, batch_size=4, shuffle=True)
    take(loader, 3)
    with pytest.raises(ValueError, match="the sampler's class: 'RandomSampler' in the state, 'SequentialSampler' here"):
        make(Indices(40), 0, batch_size=4).load_state_dict(loader.state_dict())


def test_resume_of_an_iterable_dataset_with_another_num_workers_is_refused():
    loader = fastload.DataLoader(Range(0, 30), batch_size=4, num_workers=2)
    take(loader, 3)
    with pytest.raises(ValueError, match="worker streams"):
        fastload.DataLoader(Range(0, 30), batch_size=4).load_state_dict(loader.state_dict())


def test_resume_of_an_iterable_dataset_with_another_batch_size_continues_at_the_same_item():
    full = indices_of(fastload.DataLoader(Range(0, 30), batch_size=4, num_workers=2))
    loader = fastload.DataLoader(Range(0, 30), batch_size=4, num_workers=2)
    before = indices_of(take(loader, 3))
    resumed = fastload.DataLoader(Range(0, 30), batch_size=3, num_workers=2)
    with pytest.warns(UserWarning, match="re-reads and discards the 12 items"):
        resumed.load_state_dict(loader.state_dict())
    assert sorted(before + indices_of(resumed)) == sorted(full)


def test_a_state_that_is_not_fastloads_is_refused():
    with pytest.raises(ValueError, match="state format 'other' is not"):
        fastload.DataLoader(Squares()).load_state_dict(
            {"format": "other", "seed": 1, "epoch": 0, "batches": 0, "settled": {}, "sampler": None, "order": {}})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 10)), max_size=15))
def test_settled_positions_are_the_positions_added(ranges):
    settled, positions = SettledPositions(), set()
    for start, length in ranges:
        settled.add(start, start + length)
        positions.update(range(start, start + length))
    beyond = settled.beyond_prefix()
    assert set(range(settled.prefix)) | {p for start, end in beyond for p in range(start, end)} == positions
    assert settled.prefix not in positions
    assert all(end < next_start for (_, end), (next_start, _) in zip(beyond, beyond[1:]))  # disjoint, apart
