"""fastload.DataLoader behaves like torch.utils.data.DataLoader: same arguments, same batches."""

from __future__ import annotations

import gc

import pytest
import torch
import torch.utils.data as tud

import fastload

from .datasets import BatchFetched, Mixed, Range, Ragged, Squares, WorkerInfoDataset, record_collate, record_worker_init
from .helpers import assert_same


def both(dataset, make_kwargs=None, **kwargs):
    """The batches of torch's loader and of ours, built with equal arguments.

    ``seed`` becomes a fresh ``generator`` per loader; ``make_kwargs`` builds stateful
    arguments (samplers) anew for each loader.
    """
    def run(cls):
        args = dict(kwargs)
        if "seed" in args:
            args["generator"] = torch.Generator().manual_seed(args.pop("seed"))
        if make_kwargs is not None:
            args.update(make_kwargs())
        return list(cls(dataset, **args))

    return run(tud.DataLoader), run(fastload.DataLoader)


def test_is_a_torch_dataloader():
    assert isinstance(fastload.DataLoader(Squares()), tud.DataLoader)


SCENARIOS = {
    "batched": (Squares, dict(batch_size=8)),
    "torch_random_sampler_drop_last": (Squares, dict(batch_size=6, drop_last=True, make_kwargs=lambda: dict(
        sampler=tud.RandomSampler(range(40), generator=torch.Generator().manual_seed(3))))),
    "batch_size_none": (Squares, dict(batch_size=None)),
    "sampler": (Squares, dict(batch_size=4, sampler=[5, 1, 7, 3, 9, 0, 2])),
    "batch_sampler": (Squares, dict(batch_sampler=[[3, 1], [0, 2, 4], [39]])),
    "weighted_sampler": (Squares, dict(batch_size=5, make_kwargs=lambda: dict(
        sampler=tud.WeightedRandomSampler([1.0] * 40, 20, generator=torch.Generator().manual_seed(1))))),
    "mixed_leaves": (Mixed, dict(batch_size=5)),
    "ragged_no_batching": (Ragged, dict(batch_size=None)),
    "custom_collate": (Squares, dict(batch_size=7, collate_fn=record_collate)),
    "getitems": (BatchFetched, dict(batch_size=6)),
    "out_of_order_allowed_but_one_worker": (Squares, dict(batch_size=3, in_order=False, num_workers=1)),
}


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_same_batches_as_torch(name, num_workers):
    make, kwargs = SCENARIOS[name]
    kwargs = {"num_workers": num_workers, **kwargs}
    expected, got = both(make(), **kwargs)
    assert len(got) == len(expected) > 0
    for i, (e, g) in enumerate(zip(expected, got)):
        assert_same(e, g, f"batch {i}")


@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
def test_multiprocessing_contexts(context, no_leaks):
    expected, got = both(Squares(), batch_size=8, num_workers=2, multiprocessing_context=context,
                         worker_init_fn=record_worker_init)
    for e, g in zip(expected, got):
        assert_same(e, g)


@pytest.mark.parametrize("num_workers", [0, 1, 3])
@pytest.mark.parametrize("batch_size", [None, 4])
def test_iterable_dataset_sharded_like_torch(num_workers, batch_size):
    expected, got = both(Range(0, 23), batch_size=batch_size, num_workers=num_workers)
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        assert_same(e, g)


def test_iterable_dataset_drop_last():
    expected, got = both(Range(0, 23), batch_size=4, drop_last=True, num_workers=2)
    assert [b.tolist() for b in got] == [b.tolist() for b in expected]


def test_in_order_false_delivers_every_batch_once():
    loader = fastload.DataLoader(Squares(60), batch_size=4, num_workers=3, in_order=False)
    labels = sorted(int(i) for batch in loader for i in batch[1])
    assert labels == list(range(60))


def test_len_matches_torch():
    for kwargs in [dict(batch_size=7), dict(batch_size=7, drop_last=True), dict(batch_size=None)]:
        assert len(fastload.DataLoader(Squares(), **kwargs)) == len(tud.DataLoader(Squares(), **kwargs))
    assert len(fastload.DataLoader(Range(0, 23), batch_size=4)) == len(tud.DataLoader(Range(0, 23), batch_size=4))
    it = iter(fastload.DataLoader(Squares(), batch_size=7, num_workers=2))
    assert len(it) == 6


def test_argument_errors_match_torch():
    cases = [
        dict(num_workers=-1),
        dict(timeout=-1),
        dict(prefetch_factor=2),
        dict(persistent_workers=True),
        dict(shuffle=True, sampler=[0, 1]),
        dict(batch_sampler=[[0]], batch_size=2),
        dict(batch_size=None, drop_last=True),
        dict(multiprocessing_context="fork"),
    ]
    for kwargs in cases:
        with pytest.raises(ValueError) as torch_error:
            tud.DataLoader(Squares(), **kwargs)
        with pytest.raises(ValueError) as ours:
            fastload.DataLoader(Squares(), **kwargs)
        assert str(ours.value) == str(torch_error.value)
    with pytest.raises(ValueError, match="expected unspecified shuffle"):
        fastload.DataLoader(Range(0, 3), shuffle=True)


def test_worker_info_is_torchs_inside_workers():
    loader = fastload.DataLoader(WorkerInfoDataset(), batch_size=None, num_workers=2, generator=torch.Generator().manual_seed(5))
    epochs = [list(loader) for _ in range(2)]
    for infos in epochs:
        assert {i["id"] for i in infos} == {0, 1}
        assert all(i["num_workers"] == 2 and i["dataset_is_self"] and i["same"] for i in infos)
        # torch's seeding rule: worker w is seeded base_seed + w, and torch's RNG with it
        assert len({i["seed"] - i["id"] for i in infos}) == 1
        assert all(i["torch_seed"] == i["seed"] for i in infos)
    assert epochs[0][0]["seed"] != epochs[1][0]["seed"]
    assert fastload.get_worker_info() is None


def test_shuffle_gives_a_new_permutation_each_epoch_reproducibly():
    def epochs(seed):
        loader = fastload.DataLoader(Squares(), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed))
        assert isinstance(loader.sampler, tud.RandomSampler)  # what Lightning checks
        return [[int(i) for b in loader for i in b[1]] for _ in range(3)]

    first = epochs(0)
    assert all(sorted(e) == list(range(40)) for e in first)
    assert first[0] != first[1] != first[2]
    assert epochs(0) == first and epochs(1) != first


@pytest.mark.parametrize("num_workers", [0, 2])
def test_reiteration_gives_full_epochs(num_workers, no_leaks):
    loader = fastload.DataLoader(Squares(), batch_size=8, shuffle=True, num_workers=num_workers)
    for _ in range(3):
        labels = sorted(int(i) for batch in loader for i in batch[1])
        assert labels == list(range(40))


def test_persistent_workers_keep_their_processes_across_epochs(no_leaks):
    loader = fastload.DataLoader(WorkerInfoDataset(), batch_size=None, num_workers=2, persistent_workers=True)
    pids = [{info["pid"] for info in loader} for _ in range(3)]
    assert pids[0] == pids[1] == pids[2] and len(pids[0]) == 2
    del loader
    gc.collect()


def test_persistent_iterable_restarts_each_epoch(no_leaks):
    loader = fastload.DataLoader(Range(0, 10), batch_size=3, num_workers=2, persistent_workers=True)
    epochs = [sorted(int(v) for b in loader for v in b) for _ in range(3)]
    assert epochs == [list(range(10))] * 3
    del loader
    gc.collect()


@pytest.mark.parametrize("persistent", [False, True])
def test_early_break_then_new_epoch(persistent, no_leaks):
    loader = fastload.DataLoader(Squares(), batch_size=4, num_workers=2, persistent_workers=persistent)
    for i, _ in enumerate(loader):
        if i == 2:
            break
    labels = [int(v) for batch in loader for v in batch[1]]
    assert labels == list(range(40))
    del loader
    gc.collect()


def test_del_loader_and_iterator_mid_epoch_stops_workers(no_leaks):
    loader = fastload.DataLoader(Squares(), batch_size=4, num_workers=2)
    it = iter(loader)
    next(it)
    del loader, it
    gc.collect()


def _two_live_iterators(loader_class, persistent):
    """What nested use of one loader delivers: (outer batches, inner batches per outer step,
    whether both ``iter()`` calls returned the same object)."""
    loader = loader_class(Squares(16), batch_size=4, num_workers=2, persistent_workers=persistent)
    outer, inner = [], []
    first = iter(loader)
    for batch in first:
        outer.append(batch[1].tolist())
        second = iter(loader)
        inner.append([b[1].tolist() for b in second])
    same = first is second
    del first, second, loader
    gc.collect()
    return outer, inner, same


@pytest.mark.parametrize("persistent", [False, True])
def test_two_live_iterators_behave_as_torchs(persistent, no_leaks):
    # torch: a persistent loader has one iterator, which iter() resets; otherwise each is independent.
    assert _two_live_iterators(fastload.DataLoader, persistent) == \
        _two_live_iterators(torch.utils.data.DataLoader, persistent)
