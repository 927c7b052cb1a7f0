"""Distributed samplers under real torchrun (2 processes, gloo)."""

from __future__ import annotations

import json

import pytest

from .helpers import run_distributed
N = 101


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchrun")
    run_distributed("record_samplers.py", str(out), timeout=240)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def flat(batches):
    return [i for b in batches for i in b]


@pytest.mark.parametrize("kind", ["distributed", "wrapper"])
def test_ranks_are_disjoint_cover_everything_and_have_equal_counts(ranks, kind):
    for epoch in range(2):
        per_rank = [flat(r[kind]["epochs"][epoch]) for r in ranks]
        assert len(per_rank[0]) == len(per_rank[1]) == 51  # ceil(101 / 2): one padded index
        assert len(ranks[0][kind]["epochs"][epoch]) == len(ranks[1][kind]["epochs"][epoch]) == ranks[0][kind]["len"]
        assert set(per_rank[0]) | set(per_rank[1]) == set(range(N))
        overlap = set(per_rank[0]) & set(per_rank[1])
        assert len(overlap) <= 1  # only the documented padding repeats an index


@pytest.mark.parametrize("kind", ["distributed", "wrapper", "bucket"])
def test_set_epoch_changes_the_order(ranks, kind):
    for r in ranks:
        assert r[kind]["epochs"][0] != r[kind]["epochs"][1]


@pytest.mark.parametrize("kind", ["distributed", "wrapper", "bucket"])
def test_resume_mid_epoch_gives_the_same_per_rank_batches(ranks, kind):
    for r in ranks:
        assert r[kind]["resumed_epoch1"] == r[kind]["epochs"][1]


def test_bucket_batches_equal_counts_cover_and_balance_tokens(ranks):
    lengths = ranks[0]["lengths"]
    for epoch in range(2):
        per_rank = [r["bucket"]["epochs"][epoch] for r in ranks]
        assert len(per_rank[0]) == len(per_rank[1])
        assert set(flat(per_rank[0])) | set(flat(per_rank[1])) == set(range(N))
        for b0, b1 in zip(*per_rank):  # a step's batches cost about the same
            cost0 = max(lengths[i] for i in b0) * len(b0)
            cost1 = max(lengths[i] for i in b1) * len(b1)
            assert cost0 <= 200 and cost1 <= 200
        total = [sum(max(lengths[i] for i in b) * len(b) for b in batches) for batches in per_rank]
        assert abs(total[0] - total[1]) / max(total) < 0.15, total


def test_forgotten_set_epoch_advances_with_one_warning(ranks):
    for r in ranks:
        assert r["auto_epoch"]["changed"]
        assert len(r["auto_epoch"]["warnings"]) == 1 and "set_epoch" in r["auto_epoch"]["warnings"][0]


def test_distributed_sampler_order_is_torchs(ranks):
    assert all(r["same_as_torch_epoch1"] for r in ranks)
