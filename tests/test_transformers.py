"""Hugging Face's Trainer with fastload loaders (``FastloadTrainer``): two processes under
torchrun (gloo, CPU), a tiny GPT-2 built from a config, resumed mid-epoch."""

from __future__ import annotations

import json

import pytest

from .helpers import run_distributed

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
BAD, EVAL_SAMPLES = 13, 12


def run(out, kind: str, *scenarios: str) -> None:
    run_distributed("trainer_run.py", str(out), *scenarios, timeout=400,
                    env={"BUCKET": str(int(kind == "bucket")), "OUT_OF_ORDER": str(int(kind == "out_of_order")),
                         "REBALANCE": str(int(kind == "rebalance")),
                         "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"})


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("trainer")
    run(out, "plain", "uninterrupted", "interrupted", "resumed", "counted")
    run(out, "bucket", "uninterrupted", "interrupted", "resumed")
    run(out, "out_of_order", "uninterrupted", "interrupted", "resumed", "counted")
    run(out, "rebalance", "uninterrupted")

    def record(kind: str, scenario: str, rank: int) -> dict:
        return json.loads((out / f"{kind}_{scenario}_rank{rank}.json").read_text())
    return record


def test_the_trainers_loaders_are_fastload_loaders_with_their_options(records):
    for rank in (0, 1):
        record = records("plain", "uninterrupted", rank)
        assert record["loader"] == record["eval_loader"] == "AcceleratedDataLoader"
        assert record["workers"] == 2 and record["on_error"] == "skip" and record["stats"] > 0
    assert [BAD] in [records("plain", "uninterrupted", rank)["errors"] for rank in (0, 1)]


@pytest.mark.parametrize("kind", ["plain", "bucket", "rebalance"])
def test_ranks_train_on_disjoint_shards_covering_the_dataset(kind, records):
    batches = [records(kind, "uninterrupted", rank)["batches"] for rank in (0, 1)]
    assert len(batches[0]) == len(batches[1])
    half = len(batches[0]) // 2  # two epochs of equal length
    for epoch in (slice(0, half), slice(half, None)):
        samples = [[i for b in per_rank[epoch] for i in b] for per_rank in batches]
        assert set(samples[0]) | set(samples[1]) == set(range(40)) - ({BAD} if kind != "rebalance" else set())
        assert len(samples[0]) + len(samples[1]) - len(set(samples[0]) | set(samples[1])) <= 4  # padding only
    assert batches[0][:half] != batches[0][half:]


@pytest.mark.parametrize("kind", ["plain", "bucket"])
def test_resuming_mid_epoch_gives_exactly_the_remaining_batches(kind, records):
    for rank in (0, 1):
        uninterrupted = records(kind, "uninterrupted", rank)["batches"]
        interrupted = records(kind, "interrupted", rank)
        assert interrupted["batches"] == uninterrupted[:7]
        assert f"fastload_train_loader_rank{rank}.json" in interrupted["checkpoint6"]
        resumed = records(kind, "resumed", rank)
        assert resumed["batches"] == uninterrupted[6:] and resumed["warnings"] == []


def test_a_checkpoint_without_the_loader_state_resumes_by_counting_with_a_warning(records):
    for rank in (0, 1):
        counted = records("plain", "counted", rank)
        assert counted["batches"] == records("plain", "uninterrupted", rank)["batches"][6:]
        assert len(counted["warnings"]) == 1 and "skips the batches the Trainer counts" in counted["warnings"][0]


def flat(batches):
    return sorted(i for b in batches for i in b)


def test_out_of_order_delivery_resumes_exactly_where_a_count_of_batches_would_not(records):
    # Five batches an epoch on each rank; checkpoint 6 holds one batch of epoch 1, delivered
    # before the epoch's first batch (whose first sample takes a second to load).
    for rank in (0, 1):
        epoch1 = flat(records("out_of_order", "uninterrupted", rank)["batches"][5:10])
        delivered = records("out_of_order", "interrupted", rank)["batches"][5:6]
        resumed = records("out_of_order", "resumed", rank)["batches"][:4]
        assert flat(delivered + resumed) == epoch1
        counted = records("out_of_order", "counted", rank)["batches"][:4]
        assert flat(delivered + counted) != epoch1  # the count skips the late batch and repeats an early one


def test_evaluation_sees_every_sample_once(records):
    for rank in (0, 1):
        metrics = records("plain", "uninterrupted", rank)["eval"]
        assert metrics["eval_count"] == EVAL_SAMPLES and metrics["eval_first_sum"] == sum(range(EVAL_SAMPLES))
