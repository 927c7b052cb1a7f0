"""Thousands of batches over a dataset that fails in each way, under each policy: every
index is delivered once or reported failed (none duplicated, none lost), nothing hangs
(each test is bounded), no shared memory or process is left over, and the loader runs
its next epoch."""

from __future__ import annotations

import re

import pytest

from .scenarios import is_faulty, run

SAMPLES = 8000
FAULTY = sum(is_faulty(i) for i in range(SAMPLES))


def check_clean(outcome) -> None:
    assert outcome.duplicated == 0, outcome
    assert outcome.lost == 0, outcome
    assert outcome.leftover_shm == 0, outcome
    assert outcome.leftover_processes == 0, outcome


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", ["raise", "malformed"])
def test_bad_samples_under_raise_end_the_epoch_with_the_index(fault, tmp_path):
    outcome = run(fault, "raise", str(tmp_path), samples=SAMPLES)
    check_clean(outcome)
    assert outcome.error is not None and outcome.batches < SAMPLES // 4
    if fault == "raise":
        assert re.search(r"while fetching sample index \d+", outcome.error)
    assert outcome.next_epoch == outcome.error.split(":")[0]  # it raises the same error again, cleanly


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", ["raise", "malformed"])
def test_bad_samples_under_skip_are_left_out_and_reported(fault, tmp_path):
    outcome = run(fault, "skip", str(tmp_path), samples=SAMPLES)
    check_clean(outcome)
    assert outcome.error is None and outcome.failed == FAULTY > 50
    assert outcome.delivered_once + outcome.failed == SAMPLES
    assert outcome.next_epoch.startswith("complete")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", ["raise", "malformed"])
def test_bad_samples_under_replace_keep_every_batch_full(fault, tmp_path):
    outcome = run(fault, "replace", str(tmp_path), samples=SAMPLES)
    check_clean(outcome)
    assert outcome.error is None and outcome.batches == SAMPLES // 4
    assert outcome.replaced == FAULTY and outcome.delivered_once + outcome.replaced == SAMPLES
    assert outcome.next_epoch == f"complete ({SAMPLES // 4} batches)"


@pytest.mark.timeout(120)
def test_workers_killing_themselves_are_restarted_and_nothing_is_lost(tmp_path):
    outcome = run("kill", "raise", str(tmp_path), samples=SAMPLES, restarts=FAULTY)
    check_clean(outcome)
    assert outcome.error is None and outcome.delivered_once == SAMPLES and outcome.batches == SAMPLES // 4
    assert outcome.next_epoch.startswith("complete")


@pytest.mark.timeout(120)
def test_a_killed_worker_without_restarts_is_one_clear_error(tmp_path):
    outcome = run("kill", "skip", str(tmp_path), samples=SAMPLES)
    check_clean(outcome)
    assert outcome.error.startswith("WorkerDiedError") and "SIGKILL" in outcome.error
    assert outcome.next_epoch == "WorkerDiedError"  # the next epoch starts a new pool and meets the next crash


@pytest.mark.timeout(120)
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_sample_sleeping_past_the_timeout_ends_the_epoch_not_the_loader(on_error, tmp_path):
    outcome = run("sleep", on_error, str(tmp_path), samples=SAMPLES)
    check_clean(outcome)
    assert outcome.error.startswith("RuntimeError: DataLoader timed out after 2.0 seconds")
    assert outcome.next_epoch.startswith("complete")
