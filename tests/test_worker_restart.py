"""max_worker_restarts: a dead worker is replaced and its unfinished batches re-issued, so
the epoch is delivered exactly once and in order (NOTE [ Worker restart ])."""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import signal
import threading

import pytest
import torch

import fastload


class Indices(torch.utils.data.Dataset):
    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> int:
        return i


class NoisyIndices(Indices):
    """(index, a random draw): the draw shows whether the sample was seeded the same."""

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i), float(torch.rand(()))])


def kill_a_worker(rng: random.Random) -> int:
    """SIGKILLs one of the live worker processes and waits until it is dead."""
    victim = rng.choice([p for p in multiprocessing.active_children() if p.is_alive()])
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    return victim.pid


@pytest.mark.timeout(120)
def test_twenty_kills_in_an_epoch_of_10k_samples_change_nothing(no_leaks, caplog):
    make = lambda workers, **kw: fastload.DataLoader(
        Indices(10_000), batch_size=10, shuffle=True, num_workers=workers,
        generator=torch.Generator().manual_seed(7), **kw)
    uninterrupted = [i for batch in make(0) for i in batch.tolist()]
    rng = random.Random(0)
    kill_after = set(rng.sample(range(5, 990), 20))
    delivered, killed = [], []
    with caplog.at_level(logging.WARNING, logger="fastload"):
        for n, batch in enumerate(make(2, max_worker_restarts=20)):
            delivered += batch.tolist()
            if n in kill_after:
                killed.append(kill_a_worker(rng))
    assert len(killed) == 20
    assert delivered == uninterrupted  # every index once, in the same order
    restarts = [r.getMessage() for r in caplog.records if "restarted it as pid" in r.getMessage()]
    assert len(restarts) == 20 and "SIGKILL" in restarts[0] and "restart 20 of max_worker_restarts=20" in restarts[-1]


@pytest.mark.timeout(120)
def test_restarted_workers_keep_per_sample_seeds_on_a_persistent_pool(no_leaks):
    def loader(restarts: int) -> fastload.DataLoader:
        return fastload.DataLoader(NoisyIndices(400), batch_size=8, num_workers=2, persistent_workers=True,
                                   seed_per_sample=True, generator=torch.Generator().manual_seed(3),
                                   max_worker_restarts=restarts)

    reference = loader(0)
    want = [[b.clone() for b in reference] for _epoch in range(2)]
    data, rng = loader(4), random.Random(1)
    got = []
    for epoch in range(2):
        kept = []
        for n, batch in enumerate(data):
            kept.append(batch)  # held across the kill: a dead worker's batches stay valid
            if n in (10, 30):
                kill_a_worker(rng)
        got.append(kept)
    for epoch in range(2):
        assert all(torch.equal(g, w) for g, w in zip(got[epoch], want[epoch], strict=True))


@pytest.mark.timeout(60)
def test_when_restarts_run_out_the_death_is_an_error(no_leaks):
    data = fastload.DataLoader(Indices(2000), batch_size=4, num_workers=2, max_worker_restarts=1)
    rng = random.Random(2)
    with pytest.raises(fastload.WorkerDiedError, match=r"SIGKILL.*after 1 worker restarts, max_worker_restarts=1"):
        for n, _batch in enumerate(data):
            if n in (10, 40):
                kill_a_worker(rng)


def test_restarts_need_a_map_style_dataset():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(range(10))

    with pytest.raises(ValueError, match="max_worker_restarts needs a map-style dataset"):
        fastload.DataLoader(Stream(), num_workers=2, max_worker_restarts=3)
    with pytest.raises(ValueError, match="max_worker_restarts should be >= 0"):
        fastload.DataLoader(Indices(10), max_worker_restarts=-1)


def test_a_worker_restarted_on_a_thread_that_then_exits_lives_on(no_leaks, caplog):
    it = iter(fastload.DataLoader(Indices(200), batch_size=4, num_workers=2, max_worker_restarts=1))
    delivered = next(it).tolist()

    def kill_and_go_on_until_restarted() -> None:
        nonlocal delivered
        kill_a_worker(random.Random(0))
        while not any("restarted it as pid" in r.getMessage() for r in caplog.records):
            delivered += next(it).tolist()

    with caplog.at_level(logging.WARNING, logger="fastload"):
        thread = threading.Thread(target=kill_and_go_on_until_restarted)
        thread.start()
        thread.join()
        delivered += [i for batch in it for i in batch.tolist()]  # on the main thread, with the new worker
    assert delivered == list(range(200))
    assert sum("restarted it as pid" in r.getMessage() for r in caplog.records) == 1
