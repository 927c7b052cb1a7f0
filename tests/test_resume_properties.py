"""Exact resume as a stateful property (hypothesis): over random datasets (map-style or
iterable, with random failing samples), random loader settings and random stops, saving
``state_dict()`` through JSON and resuming into a loader built with other settings, every
epoch delivers exactly what an uninterrupted loader delivers — no index lost, none
repeated (failed ones left out under ``on_error="skip"``, replaced alike under
``"replace"``) — or the resume is refused with a clear error."""

from __future__ import annotations

import collections
import json

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

import fastload

from .conftest import child_pids, wait_until
from .datasets import Indices, ShardedStream

# Resuming over a replayed sampler or an iterable dataset warns, as it should: not news here.
pytestmark = [pytest.mark.filterwarnings("ignore:fastload. resuming an IterableDataset:UserWarning"),
              pytest.mark.filterwarnings("ignore:fastload. .* cannot jump to a position:UserWarning")]

SETTINGS = settings(max_examples=300, stateful_step_count=6, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@st.composite
def configurations(draw):
    iterable = draw(st.integers(0, 2)) == 0
    n = draw(st.integers(0, 40))
    failing = tuple(sorted(draw(st.sets(st.integers(0, n - 1), max_size=6)))) if n and draw(st.booleans()) else ()
    policies = ["skip"] if iterable else ["skip", "replace"]
    on_error = draw(st.sampled_from(policies)) if failing else draw(st.sampled_from(["raise", *policies]))
    if on_error == "replace" and len(failing) * 2 > n:
        failing = failing[: n // 4]  # replace needs enough samples that load
    workers = draw(st.integers(0, 2))
    in_order = draw(st.booleans())
    # Out of order: a slow sample among the first batches makes later ones overtake it.
    slow = tuple(draw(st.sets(st.integers(0, min(n, 12) - 1), max_size=2))) if n and workers and not in_order else ()
    batch_size = draw(st.sampled_from([1, 2, 3, 4, 6] + ([] if iterable else [None])))
    # Who orders a map-style epoch: torch's own samplers and a user's batch sampler too.
    samplers = ["sequential"] + (["shuffle", "torch_random"] if n else []) + (["user_batch_sampler"] if n and batch_size
                                                                             else [])
    return {
        "iterable": iterable, "n": n, "failing": failing, "slow": slow, "batch_size": batch_size,
        "drop_last": draw(st.booleans()), "sampler": "stream" if iterable else draw(st.sampled_from(samplers)),
        "in_order": in_order, "num_workers": workers, "persistent_workers": draw(st.booleans()),
        "on_error": on_error,
    }


def dataset_of(config):
    if config["iterable"]:
        return ShardedStream(config["n"], config["failing"])
    return Indices(config["n"], slow=config["slow"], delay=0.05, failing=config["failing"])


class UsersBatchSampler(torch.utils.data.BatchSampler):
    """A batch sampler of the user's: torch's, subclassed."""


def build(config, generator_seed):
    """The loader ``config`` describes; ``generator_seed`` seeds its generators (a resumed
    loader gets another: the state must carry everything)."""
    dataset = dataset_of(config)
    kwargs = {k: config[k] for k in ("batch_size", "in_order", "num_workers", "on_error")}
    kwargs["persistent_workers"] = config["persistent_workers"] and config["num_workers"] > 0
    if config["batch_size"] is not None:
        kwargs["drop_last"] = config["drop_last"]
    if config["sampler"] == "shuffle":
        kwargs["shuffle"] = True
    elif config["sampler"] == "torch_random":
        kwargs["sampler"] = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(
            generator_seed))
    elif config["sampler"] == "user_batch_sampler":
        sampler = fastload.RandomSampler(dataset, seed=generator_seed)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("batch_size", "drop_last")}
        kwargs["batch_sampler"] = UsersBatchSampler(sampler, config["batch_size"], config["drop_last"])
    return fastload.DataLoader(dataset, generator=torch.Generator().manual_seed(generator_seed), **kwargs)


def indices(batch) -> list[int]:
    return [int(v) for v in batch.flatten()]


class Resume(RuleBasedStateMachine):
    """One logical run of epochs, interrupted and resumed at random."""

    @initialize(config=configurations())
    def start(self, config):
        self.config = dict(config)
        self.first_config = dict(config)
        self.loader = build(self.config, 0)
        self.iterator = None
        self.epoch = 0
        self.delivered: list[int] = []
        self.in_order_throughout = self.config["in_order"]
        #: an iterable's worker streams interleave in batches of another size than the
        #: reference's from a resume on, for good
        self.rebatched_streams = False
        self.reference: list[list[int]] | None = None
        #: torch's rule, which resumes keep: persistent workers draw one base seed, others one per epoch
        self.persistent = self.config["persistent_workers"] and self.config["num_workers"] > 0
        self.children = child_pids()

    def expected(self, epoch: int) -> list[int]:
        """What an uninterrupted loader with the first settings delivers in ``epoch``."""
        if self.reference is None or len(self.reference) <= epoch:
            first = dict(self.first_config, in_order=True)
            if not first["iterable"]:  # the same sequence for any num_workers, if persistent or not alike
                first["num_workers"] = 1 if self.persistent else 0
            loader = build(first, 0)
            self.reference = [[i for batch in loader for i in indices(batch)] for _ in range(epoch + 1)]
        return self.reference[epoch]

    def end_epoch(self) -> None:
        expected = self.expected(self.epoch)
        if self.in_order_throughout:
            assert self.delivered == expected, (self.config, self.epoch)
        else:
            assert collections.Counter(self.delivered) == collections.Counter(expected), (self.config, self.epoch)
        self.epoch += 1
        self.delivered = []
        self.iterator = None
        self.in_order_throughout = self.config["in_order"] and not self.rebatched_streams

    @rule(count=st.integers(1, 6))
    def take(self, count):
        if self.iterator is None:
            self.iterator = iter(self.loader)
        for _ in range(count):
            try:
                batch = next(self.iterator)
            except StopIteration:
                self.end_epoch()
                return
            self.delivered += indices(batch)

    @rule()
    def finish_epoch(self):
        self.take(10_000)

    @rule(workers=st.integers(0, 2), batch_size=st.sampled_from([None, 1, 2, 3, 5]), in_order=st.booleans(),
          persistent=st.booleans(), seed=st.integers(1, 2**31))
    def save_and_resume(self, workers, batch_size, in_order, persistent, seed):
        state = json.loads(json.dumps(self.loader.state_dict()))
        if self.persistent:  # another rule of draws changes later epochs' orders (a warning says so)
            persistent, workers = True, max(1, workers)
        elif persistent:
            workers = 0
        new = dict(self.config, in_order=in_order, persistent_workers=persistent, num_workers=workers)
        # A changed batch size is exact in samples; with drop_last the tail that is dropped would differ,
        # and a user's batch sampler of another batch size is refused.
        if self.config["batch_size"] is not None and batch_size is not None and not self.config["drop_last"] \
                and self.config["sampler"] != "user_batch_sampler":
            new["batch_size"] = batch_size
        self.iterator = self.loader = None  # their workers stop now: nothing holds them in a cycle
        resumed = build(new, seed)
        if new["iterable"] and max(1, workers) != max(1, self.config["num_workers"]):  # worker streams differ
            with pytest.raises(ValueError, match="worker streams of the IterableDataset"):
                resumed.load_state_dict(state)
            new["num_workers"] = self.config["num_workers"]
            resumed = build(new, seed)
        resumed.load_state_dict(state)
        if new["iterable"] and new["batch_size"] != self.first_config["batch_size"]:
            self.rebatched_streams = True  # the streams interleave in other batches
            self.in_order_throughout = False
        self.in_order_throughout &= in_order
        self.config = new
        self.loader = resumed

    def teardown(self):
        if getattr(self, "loader", None) is not None:
            if self.iterator is not None or self.delivered:
                self.finish_epoch()
            self.iterator = self.loader = None
            assert wait_until(lambda: child_pids() <= self.children), "worker processes left behind"


Resume.TestCase.settings = SETTINGS
test_resume_is_exact_whatever_the_interruptions = Resume.TestCase
