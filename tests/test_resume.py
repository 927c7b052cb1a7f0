"""A loader restored from state_dict() after k batches yields exactly the batches an
uninterrupted loader yields after k, this epoch and the next ones."""

from __future__ import annotations

import contextlib
import json
import re
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastload
from fastload.resume import SettledPositions

from .datasets import FailsFirstIter, Indices, RandomAugment, Range, Squares
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
    # Whole epochs run to StopIteration, as in uninterrupted(): a sampler drawing as torch's
    # does may draw once more when it is exhausted.
    before = [list(loader) for _ in range(stop_epoch)]
    it = iter(loader)
    before.append([next(it) for _ in range(stop_batch)])
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
    # the loader's own generator (its sampler has none) gives the seeds: the state keeps it
    "sequential_seed_per_sample": dict(batch_size=4, seed_per_sample=True),
    "no_batching": dict(batch_size=None, shuffle=True),
}


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_resume_mid_epoch_is_exact(case, num_workers):
    dataset = RandomAugment() if "seed_per_sample" in CASES[case] else Squares()
    kwargs = dict(CASES[case], num_workers=num_workers)
    full = uninterrupted(dataset, 3, **kwargs)
    before, rest, state = interrupted(dataset, 3, stop_epoch=1, stop_batch=3, **kwargs)
    assert state["epoch"] == 1 and state["batches"] == 3
    assert_same(before[0], full[0])
    assert_same(before[1], full[1][:3])
    assert_same(rest[0], full[1][3:])
    assert_same(rest[1], full[2])


@pytest.mark.parametrize("num_workers, persistent", [(0, False), (2, False), (2, True)])
def test_resume_without_a_generator_draws_nothing_again_from_the_global_rng(num_workers, persistent):
    """No generator anywhere: the seeds come from torch's global RNG, which a training
    framework checkpoints beside the loader's state. Restored both, the resumed run is the
    uninterrupted one: rest of the epoch, next epoch, and the global RNG after it."""
    kwargs = dict(batch_size=4, shuffle=True, seed_per_sample=True, num_workers=num_workers,
                  persistent_workers=persistent)
    torch.manual_seed(5)
    loader = fastload.DataLoader(RandomAugment(), **kwargs)
    full = [list(loader) for _ in range(3)]
    after = torch.rand(3)

    torch.manual_seed(5)
    loader = fastload.DataLoader(RandomAugment(), **kwargs)
    head = [list(loader)]
    it = iter(loader)
    head.append([next(it) for _ in range(5)])
    state, rng = json.loads(json.dumps(loader.state_dict())), torch.get_rng_state()
    del it, loader

    torch.manual_seed(99)  # a new process
    resumed = fastload.DataLoader(RandomAugment(), **kwargs)
    torch.set_rng_state(rng)
    resumed.load_state_dict(state)
    rest = [list(resumed) for _ in range(2)]
    assert_same(head[0], full[0])
    assert_same(head[1] + rest[0], full[1])
    assert_same(rest[1], full[2])
    assert torch.equal(torch.rand(3), after)


def test_resume_into_a_loader_without_persistent_workers_is_exact_for_the_epoch_and_says_what_changes():
    kwargs = dict(batch_size=4, shuffle=True, seed_per_sample=True)
    loader = make(RandomAugment(), 0, num_workers=2, persistent_workers=True, **kwargs)
    full = [list(loader) for _ in range(2)]
    loader = make(RandomAugment(), 0, num_workers=2, persistent_workers=True, **kwargs)
    list(loader)
    it = iter(loader)
    head = [next(it) for _ in range(3)]
    state = json.loads(json.dumps(loader.state_dict()))
    del it, loader
    resumed = make(RandomAugment(), 7, num_workers=0, **kwargs)
    with pytest.warns(UserWarning, match="taken from a loader with persistent workers and this one has none: the "
                                         "epoch in progress resumes exactly, but later epochs draw"):
        resumed.load_state_dict(state)
    assert_same(head + list(resumed), full[1])


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
    assert state["sampler"]["generator"] is not None  # where the epoch's order began
    assert len(json.dumps(state)) < 5 * 1024
    state["sampler"]["generator"] = None
    assert len(json.dumps(state)) < 1024, state
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
    with pytest.raises(ValueError, match="the sampler's class: 'fastload.samplers.RandomSampler' in the state, "
                                         "'fastload.samplers.SequentialSampler' here"):
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
            {"format": "other", "epoch": 0, "batches": 0, "settled": {}, "base_seed": 1, "sample_root": 1,
             "draws_once": False, "drawn": False, "generator": None, "sampler": None, "sampler_generator": None,
             "order": {}})


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


def epochs_of(make_loader, count):
    loader = make_loader()
    return [indices_of(loader) for _ in range(count)]


def interrupted_in_epoch_1(make_loader, taken, count=3):
    """Epoch 0 whole, ``taken`` batches of epoch 1, then a new loader resumes: every epoch's indices."""
    loader = make_loader()
    first = indices_of(loader)
    head = indices_of(take(loader, taken))
    state = json.loads(json.dumps(loader.state_dict()))
    resumed = make_loader()
    resumed.load_state_dict(state)
    return [first, head + indices_of(resumed)] + [indices_of(resumed) for _ in range(count - 2)]


class MyBatchSampler(torch.utils.data.BatchSampler):
    """A user's batch sampler: torch's, subclassed."""


@pytest.mark.parametrize("taken", [0, 2])
def test_a_fastload_sampler_inside_a_users_batch_sampler_resumes_its_epoch(taken):
    def make():
        dataset = Indices(24)
        return fastload.DataLoader(dataset, batch_sampler=MyBatchSampler(fastload.RandomSampler(dataset, seed=3), 4,
                                                                         False))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"fastload: MyBatchSampler \(over RandomSampler\) cannot jump", UserWarning)
        resumed = interrupted_in_epoch_1(make, taken)
    assert resumed == epochs_of(make, 3)


@pytest.mark.parametrize("batched", [False, True])
def test_the_replay_warning_names_the_sampler_that_keeps_the_order(batched):
    # What Lightning makes of a loader under DDP: torch's DistributedSampler injected, inside
    # the loader's own batch sampler or not.
    def make():
        dataset = Indices(24)
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=2, rank=1, seed=4)
        if batched:
            return fastload.DataLoader(dataset, batch_sampler=MyBatchSampler(sampler, 4, False))
        return fastload.DataLoader(dataset, sampler=sampler, batch_size=4)
    name, replayed = ("MyBatchSampler (over DistributedSampler)", "2 batches") if batched else \
        ("DistributedSampler", "8 items")
    expected = (f"fastload: {name} cannot jump to a position; replaying its first {replayed} to resume (exact: "
                "DistributedSampler's order comes from its seed and epoch)")
    with pytest.warns(UserWarning, match=re.escape(expected)):
        resumed = interrupted_in_epoch_1(make, 2)
    assert resumed == epochs_of(make, 3)


@pytest.mark.parametrize("sampler", [fastload.DistributedSampler, torch.utils.data.DistributedSampler])
def test_a_state_of_another_rank_resumes_in_order_positions_and_refuses_out_of_order_ones(sampler):
    def make(rank):
        dataset = Indices(40)
        return fastload.DataLoader(dataset, batch_size=4, sampler=sampler(dataset, num_replicas=2, rank=rank, seed=3))
    loader = make(0)
    it = iter(loader)
    next(it), next(it)
    state = json.loads(json.dumps(loader.state_dict()))

    def replayed():  # torch's sampler cannot jump, and says so
        if sampler is fastload.DistributedSampler:
            return contextlib.nullcontext()
        return pytest.warns(UserWarning, match="DistributedSampler cannot jump to a position; replaying its first 8")
    other = make(1)
    with replayed():
        other.load_state_dict(state)  # Lightning keeps rank 0's state for every rank: exact in lockstep
    assert indices_of(other) == indices_of(make(1))[8:]  # two batches of 4
    state["settled"]["beyond"] = [[12, 16]]  # batch 3 delivered before batch 2 (in_order=False)
    with replayed():
        make(0).load_state_dict(state)
    with pytest.raises(ValueError, match="positions delivered out of order by rank 0, which say nothing of what "
                                         "rank 1 delivered"):
        make(1).load_state_dict(state)


TORCH_SAMPLERS = {
    "random": lambda d, g: torch.utils.data.RandomSampler(d, generator=g),
    "weighted": lambda d, g: torch.utils.data.WeightedRandomSampler([i % 5 + 1.0 for i in range(len(d))], len(d),
                                                                     generator=g),
    "subset": lambda d, g: torch.utils.data.SubsetRandomSampler(range(0, len(d), 2), generator=g),
}


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("kind", list(TORCH_SAMPLERS))
def test_torch_samplers_with_a_generator_resume_from_its_state_at_the_epoch_start(kind, batched):
    def make():
        dataset = Indices(24)
        sampler = TORCH_SAMPLERS[kind](dataset, torch.Generator().manual_seed(5))  # a new process: seeded anew
        if batched:
            return fastload.DataLoader(dataset, batch_sampler=MyBatchSampler(sampler, 4, False))
        return fastload.DataLoader(dataset, sampler=sampler, batch_size=4)
    with pytest.warns(UserWarning, match="from its generator's state at the epoch's start"):
        resumed = interrupted_in_epoch_1(make, 2)
    assert resumed == epochs_of(make, 3)


def test_a_torch_sampler_without_a_generator_is_refused_mid_epoch():
    def make():
        return fastload.DataLoader(Indices(24), sampler=torch.utils.data.RandomSampler(Indices(24)), batch_size=4)
    loader = make()
    take(loader, 2)
    with pytest.raises(ValueError, match="RandomSampler has no generator of its own.*global random generator"):
        make().load_state_dict(loader.state_dict())


def test_a_users_batch_sampler_with_another_batch_size_is_refused():
    dataset = Indices(23)
    loader = fastload.DataLoader(dataset, batch_sampler=MyBatchSampler(torch.utils.data.SequentialSampler(dataset),
                                                                       6, False))
    take(loader, 2)
    other = fastload.DataLoader(dataset, batch_sampler=MyBatchSampler(torch.utils.data.SequentialSampler(dataset),
                                                                      7, False))  # also 4 batches
    with pytest.raises(ValueError, match="the batch sampler's batch_size: 6 in the state, 7 here"):
        other.load_state_dict(loader.state_dict())


def test_torchs_and_fastloads_samplers_of_one_name_are_told_apart():
    loader = make(Indices(20), 0, batch_size=4, shuffle=True)
    take(loader, 2)
    other = fastload.DataLoader(Indices(20), sampler=torch.utils.data.RandomSampler(Indices(20)), batch_size=4)
    with pytest.raises(ValueError, match="'fastload.samplers.RandomSampler' in the state, "
                                         "'torch.utils.data.sampler.RandomSampler' here"):
        other.load_state_dict(loader.state_dict())


def forged(state, path, value):
    state = json.loads(json.dumps(state))
    *parents, key = path
    target = state
    for parent in parents:
        target = target[parent]
    if value is KeyError:
        del target[key]
    else:
        target[key] = value
    return state


BAD_STATES = [
    (("epoch",), "one", ValueError, "epoch must be a whole number >= 0"),
    (("epoch",), -1, ValueError, "epoch must be a whole number >= 0"),
    (("epoch",), 1.5, ValueError, "epoch must be a whole number >= 0"),
    (("base_seed",), True, ValueError, r"base_seed must be a whole number in \[0, 2\*\*63\)"),
    (("base_seed",), -3, ValueError, r"base_seed must be a whole number in \[0, 2\*\*63\)"),
    (("base_seed",), 2**64 - 1, ValueError, r"base_seed must be a whole number in \[0, 2\*\*63\)"),
    (("sample_root",), "7", ValueError, r"sample_root must be a whole number in \[0, 2\*\*63\)"),
    (("sampler", "config"), None, ValueError, "RandomSampler.load_state_dict: config must be a mapping"),
    (("sampler", "config"), ["length"], ValueError, "RandomSampler.load_state_dict: config must be a mapping"),
    (("sampler", "generator"), "not base64!", ValueError, "RandomSampler.load_state_dict: generator is not the state of a cpu torch.Generator"),
    (("sampler", "generator"), None, ValueError, "RandomSampler.load_state_dict: a state with start=8 needs the generator state or the drawn_seed"),
    (("batches",), "3", ValueError, "batches must be a whole number >= 0"),
    (("settled", "prefix"), 2.7, ValueError, "settled.prefix must be a whole number >= 0"),
    (("settled", "prefix"), 10**6, ValueError, "reaches position 1000000, beyond the 40 of this epoch"),
    (("settled", "beyond"), [[30, 50]], ValueError, "reaches position 50, beyond the 40"),
    (("settled", "beyond"), [[2, 6]], ValueError, "increasing, disjoint ranges after the prefix 8"),
    (("settled", "beyond"), [12], ValueError, r"beyond\[0\] must be a \[start, end\] pair"),
    (("settled", "beyond"), KeyError, ValueError, "settled is malformed"),
    (("settled",), 3, ValueError, "settled must be a mapping"),
    (("sampler", "epoch"), -2, ValueError, "epoch must be a whole number >= 0"),
    (("sampler", "config"), KeyError, ValueError, "sampler must be the state of this loader's RandomSampler"),
    (("sampler",), None, ValueError, "sampler must be the state of this loader's RandomSampler"),
    (("order",), None, ValueError, "order must be a mapping"),
    (("generator",), KeyError, KeyError, "generator"),
]


@pytest.mark.parametrize("path, value, error, message", BAD_STATES)
def test_a_forged_state_is_refused_and_changes_nothing(path, value, error, message):
    loader = make(Indices(40), 0, batch_size=4, shuffle=True)
    full = [indices_of(loader) for _ in range(2)]
    take(loader, 2)
    state = forged(loader.state_dict(), path, value)
    fresh = make(Indices(40), 0, batch_size=4, shuffle=True)
    with pytest.raises(error, match=message):
        fresh.load_state_dict(state)
    assert [indices_of(fresh) for _ in range(2)] == full  # as if load_state_dict had not been called


@pytest.mark.parametrize("path, value, message", [
    (("settled", "stream_items"), [4], "stream_items has 1 entries for 2 worker streams"),
    (("settled", "stream_items"), [4, 4, 4], "stream_items has 3 entries for 2 worker streams"),
    (("settled", "next_stream"), 5, "next_stream is 5, beyond the 2 worker streams"),
    (("settled", "next_stream"), -1, "next_stream must be a whole number >= 0"),
])
def test_a_forged_iterable_state_is_refused(path, value, message):
    loader = fastload.DataLoader(Range(0, 30), batch_size=4, num_workers=2)
    take(loader, 3)
    with pytest.raises(ValueError, match=message):
        fastload.DataLoader(Range(0, 30), batch_size=4, num_workers=2).load_state_dict(
            forged(loader.state_dict(), path, value))


def test_a_state_that_is_not_a_mapping_is_a_type_error():
    with pytest.raises(TypeError, match="state must be a mapping"):
        fastload.DataLoader(Indices(4)).load_state_dict(None)


def test_an_iterator_that_failed_to_start_leaves_the_resume_point():
    loader = fastload.DataLoader(Range(0, 20), batch_size=2)
    head = indices_of(take(loader, 2))
    resumed = fastload.DataLoader(FailsFirstIter(20), batch_size=2)
    with pytest.warns(UserWarning, match="re-reads and discards"):
        resumed.load_state_dict(loader.state_dict())
    with pytest.raises(ConnectionError):
        iter(resumed)
    assert head + indices_of(resumed) == list(range(20))  # the retry resumes where the state said


class PicklesLater(Squares):
    """Cannot be sent to a forkserver worker until ``ready`` is set."""

    ready = False

    def __getstate__(self):
        if not type(self).ready:
            raise TypeError("not yet")
        return self.__dict__


def test_a_failed_iter_draws_nothing_the_retry_draws_again(no_leaks):
    """torch's draws (base seed, then the permutation, from the shared generator) come out
    as if the failed iter() had not happened."""
    def loader(dataset):
        return fastload.DataLoader(dataset, batch_size=4, shuffle=True, num_workers=2,
                                   multiprocessing_context="forkserver", generator=torch.Generator().manual_seed(3))

    failing = loader(PicklesLater(16))
    with pytest.raises(TypeError, match="cannot be pickled"), pytest.warns(UserWarning, match="Got pickle error"):
        iter(failing)
    PicklesLater.ready = True
    assert_same(list(failing), list(loader(Squares(16))))


def test_a_batch_lost_on_its_way_to_the_user_is_not_counted_as_delivered():
    lost = []

    def transform(batch):
        if int(batch[0]) == 4 and not lost:
            lost.append(batch)
            raise RuntimeError("the GPU augmentation ran out of memory")
        return batch

    loader = fastload.DataLoader(Indices(20), batch_size=4, batch_transform=transform)
    it = iter(loader)
    delivered = indices_of([next(it)])
    with pytest.raises(RuntimeError, match="out of memory"):
        next(it)
    delivered += indices_of([next(it)])  # the user carried on
    assert delivered == [0, 1, 2, 3, 8, 9, 10, 11]
    resumed = fastload.DataLoader(Indices(20), batch_size=4)
    resumed.load_state_dict(loader.state_dict())
    assert sorted(delivered + indices_of(resumed)) == list(range(20))


@pytest.mark.parametrize("kwargs", [dict(batch_size=4), dict(batch_size=4, drop_last=True), dict(batch_size=None),
                                    dict(batch_size=3, in_order=False, num_workers=2)])
def test_len_of_a_resumed_epochs_iterator_counts_the_batches_left(kwargs):
    loader = fastload.DataLoader(Indices(30), **kwargs)
    take(loader, 2)
    resumed = fastload.DataLoader(Indices(30), **kwargs)
    resumed.load_state_dict(loader.state_dict())
    it = iter(resumed)
    assert len(it) == len(list(it))


@pytest.mark.parametrize("sampler", ["random", "weighted"])
def test_a_torch_sampler_that_drew_from_the_global_rng_before_the_state_says_the_order_is_new(sampler):
    """With workers, iter() prefetches: a torch sampler without a generator has drawn its
    order from the global RNG before a state taken right after iter() (torch draws it then
    too). No position is settled, so every sample comes once; the order cannot be the same."""
    def build():
        dataset = Indices(24)
        chosen = torch.utils.data.RandomSampler(dataset) if sampler == "random" else \
            torch.utils.data.WeightedRandomSampler([1.0] * 24, 24, replacement=False)
        return fastload.DataLoader(dataset, batch_size=4, sampler=chosen, num_workers=2)

    loader = build()
    it = iter(loader)
    state = json.loads(json.dumps(loader.state_dict()))
    del it
    assert state["drawn"] and state["settled"]["prefix"] == 0
    resumed = build()
    with pytest.warns(UserWarning, match="had drawn its epoch's order from torch's global random generator"):
        resumed.load_state_dict(state)
    assert sorted(indices_of(resumed)) == list(range(24))
    in_process = fastload.DataLoader(Indices(24), batch_size=4, sampler=torch.utils.data.RandomSampler(range(24)))
    iter(in_process)  # in-process, torch's sampler draws at the first batch: nothing drawn yet
    assert not in_process.state_dict()["drawn"]


class WorkerSeeds(torch.utils.data.Dataset):
    """Sample i: i and the seed of the worker that fetched it."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([i, torch.utils.data.get_worker_info().seed])


def test_a_state_loaded_into_a_loader_with_running_persistent_workers_gets_its_seeds(no_leaks):
    def build(seed):
        return fastload.DataLoader(WorkerSeeds(), batch_size=2, shuffle=True, num_workers=2, persistent_workers=True,
                                   generator=torch.Generator().manual_seed(seed))

    original = build(0)
    full = torch.cat(list(original))
    original = build(0)
    it = iter(original)
    head = [next(it) for _ in range(3)]
    state = json.loads(json.dumps(original.state_dict()))
    del it, original
    running = build(1)
    list(running)  # its workers run, seeded from another base seed
    running.load_state_dict(state)
    rest = torch.cat(list(running))
    assert torch.equal(torch.cat(head + [rest])[:, 0], full[:, 0])
    # the workers are the state's: seeded base_seed + worker_id (which worker takes which
    # batch after a resume is not part of the state)
    assert set(rest[:, 1].tolist()) == {state["base_seed"], state["base_seed"] + 1} == set(full[:, 1].tolist())


class FlakyBatches(torch.utils.data.BatchSampler):
    """Raises once, after its sampler has drawn the epoch's order."""

    failed = False

    def __iter__(self):
        batches = super().__iter__()
        yield next(batches)
        if not type(self).failed:
            type(self).failed = True
            raise RuntimeError("the batch sampler failed")
        yield from batches


def test_a_failed_iter_gives_a_fastload_sampler_back_its_epoch(no_leaks):
    def build(batch_sampler_class):
        dataset = Indices(24)
        sampler = fastload.RandomSampler(dataset, generator=torch.Generator().manual_seed(5))
        return fastload.DataLoader(dataset, batch_sampler=batch_sampler_class(sampler, 4, False), num_workers=2,
                                   multiprocessing_context="fork", generator=torch.Generator().manual_seed(3))

    flaky = build(FlakyBatches)
    with pytest.raises(RuntimeError, match="the batch sampler failed"):
        iter(flaky)
    reference = build(torch.utils.data.BatchSampler)
    assert [indices_of(flaky) for _ in range(2)] == [indices_of(reference) for _ in range(2)]
