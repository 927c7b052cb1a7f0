"""fastload loaders under Lightning's DDP strategy (2 CPU processes, gloo): the sampler
injection with each bucketing and distributed sampler, mid-epoch resume from Lightning's
checkpoints, and loaders Lightning re-creates."""

from __future__ import annotations

import json

import pytest

from .helpers import run_distributed

pytest.importorskip("pytorch_lightning")
N, MAX_TOKENS = 101, 200
KINDS = ["bucket", "distributed_bucket", "batch", "wrapper"]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("lightning")
    run_distributed("lightning_run.py", str(out), launcher="python", timeout=400)  # Lightning starts rank 1
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def flat(batches):
    return [i for b in batches for i in b]


@pytest.mark.parametrize("kind", KINDS)
def test_ranks_are_disjoint_cover_everything_and_take_equal_steps(ranks, kind):
    for epoch in range(2):
        per_rank = [r[kind]["epochs"][epoch] for r in ranks]
        assert len(per_rank[0]) == len(per_rank[1])  # DDP needs as many steps on every rank
        samples = [flat(batches) for batches in per_rank]
        assert set(samples[0]) | set(samples[1]) == set(range(N))
        # duplicates are padding only: one index (the wrapper, Lightning's sampler), or whole
        # repeated batches (bucketing)
        repeated = len(samples[0]) + len(samples[1]) - N
        assert repeated <= (1 if kind in ("wrapper", "batch") else max(map(len, per_rank[0] + per_rank[1])))


@pytest.mark.parametrize("kind", ["bucket", "distributed_bucket"])
def test_bucketing_keeps_its_token_budget_and_balances_the_ranks(ranks, kind):
    lengths = ranks[0]["lengths"]
    for epoch in range(2):
        costs = [[max(lengths[i] for i in b) * len(b) for b in r[kind]["epochs"][epoch]] for r in ranks]
        assert max(costs[0] + costs[1]) <= MAX_TOKENS
        assert abs(sum(costs[0]) - sum(costs[1])) / max(sum(costs[0]), sum(costs[1])) < 0.15


@pytest.mark.parametrize("kind", KINDS)
def test_the_order_follows_lightnings_epochs_without_warnings(ranks, kind):
    for r in ranks:
        assert r[kind]["epochs"][0] != r[kind]["epochs"][1]
        assert r[kind]["warnings"] == []


def test_the_samplers_are_kept_not_wrapped_again(ranks):
    for r in ranks:
        assert r["bucket"]["batch_sampler"] == "BucketBatchSampler"
        assert r["distributed_bucket"]["batch_sampler"] == "DistributedBucketBatchSampler"
        assert r["wrapper"]["sampler"] == "DistributedSamplerWrapper"
        assert r["batch"]["batch_sampler"] == "DistributedBatchSampler"  # re-created over Lightning's sampler


@pytest.mark.parametrize("kind", ["resume_injected", "resume_bucket"])
def test_resuming_from_a_mid_epoch_checkpoint_gives_exactly_the_remaining_batches(ranks, kind):
    for r in ranks:
        assert r[kind]["resumed"] == r[kind]["first"][3:]


def test_the_replay_warning_names_the_injected_sampler(ranks):
    for r in ranks:
        assert r["resume_injected"]["warnings"] == [
            "fastload: DistributedSampler cannot jump to a position; replaying its first 12 items to resume (exact: "
            "DistributedSampler's order comes from its seed and epoch)."]
        assert r["resume_bucket"]["warnings"] == []  # fastload's samplers jump


def test_a_recreated_loader_keeps_the_root_of_its_sample_seeds(ranks):
    for r in ranks:
        recreated = r["recreated"]
        assert not recreated["same_object"] and recreated["root"] == recreated["original_root"] is not None


def test_a_bucketing_sampler_outside_a_hook_gets_a_clear_error(ranks):
    for r in ranks:
        assert r["outside_bucket_error"].startswith("TypeError: BucketBatchSampler got a DistributedSampler where "
                                                    "the sample lengths go")
        assert "*_dataloader hook" in r["outside_bucket_error"]
