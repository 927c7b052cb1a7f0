"""fastload.text: token sequences in flat arrays, shared by workers instead of copied."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastload
from fastload.text import TokenSequences

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sequences_round_trip_and_lengths():
    data = [[1, 2, 3], [], [4], np.array([5, 6])]
    ds = TokenSequences.from_sequences(data)
    assert len(ds) == 4 and ds.lengths.tolist() == [3, 0, 1, 2]
    assert [ds[i].tolist() for i in range(4)] == [[1, 2, 3], [], [4], [5, 6]]
    assert ds[-1].tolist() == [5, 6]
    with pytest.raises(IndexError, match="index 4 out of range for 4"):
        ds[4]


def test_save_and_memory_mapped_load(tmp_path):
    ds = TokenSequences.from_sequences([[7, 8], [9]])
    ds.save(tmp_path)
    loaded = TokenSequences.load(tmp_path)
    assert isinstance(loaded.tokens, np.memmap)
    item = loaded[0]
    item += 1  # copy-on-write: writable, and the file does not change
    assert TokenSequences.load(tmp_path)[0].tolist() == [7, 8]
    with pytest.raises(FileNotFoundError, match="tokens.npy"):
        TokenSequences.load(tmp_path / "missing")


@pytest.mark.parametrize("tokens, offsets, message", [
    (np.zeros(3, np.float32), np.array([0, 3]), "integer"),
    (np.zeros(3, np.int32), np.array([0, 2]), "end at len"),
    (np.zeros(3, np.int32), np.array([0, 2, 1, 3]), "offsets\\[2\\] goes back"),
])
def test_bad_arrays_are_rejected(tokens, offsets, message):
    with pytest.raises(ValueError, match=message):
        TokenSequences(tokens, offsets)


def test_bucketed_padded_batches_from_workers(tmp_path):
    rng = np.random.default_rng(0)
    ds = TokenSequences.from_sequences([rng.integers(1, 100, size=n) for n in rng.integers(1, 60, size=300)])
    ds.save(tmp_path)
    ds = TokenSequences.load(tmp_path)
    loader = fastload.DataLoader(ds, batch_sampler=fastload.BucketBatchSampler(ds.lengths, 16),
                                 num_workers=2, collate_fn=fastload.PadCollator())
    seen = 0
    for batch in loader:
        assert torch.equal(batch["attention_mask"].sum(1), batch["lengths"])
        seen += len(batch["lengths"])
    assert seen == 300


def test_memory_report_shows_workers_share_token_arrays():
    result = subprocess.run([sys.executable, "benchmarks/text_memory.py", "--sequences", "200000"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    import json

    numbers = json.loads(result.stdout.split("JSON ", 1)[1])
    assert numbers["fastload"]["total_mb"] < numbers["list"]["total_mb"]
    assert max(numbers["fastload"]["workers_mb"]) < min(numbers["list"]["workers_mb"])
