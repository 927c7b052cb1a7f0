"""loader.stats(): per-stage timings, rates and the data-stall fraction; the Chrome trace."""

from __future__ import annotations

import json
import time

import pytest
import torch

import fastload


class Images(torch.utils.data.Dataset):
    def __init__(self, length: int, decode_s: float = 0.0) -> None:
        self.length, self.decode_s = length, decode_s

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        with fastload.telemetry.stage("decode"):
            if self.decode_s:
                time.sleep(self.decode_s)
        return torch.full((3, 16, 16), float(i))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_slow_dataset_stalls_the_loop(num_workers, no_leaks):
    loader = fastload.DataLoader(Images(120, decode_s=0.004), batch_size=4, num_workers=num_workers, telemetry=True)
    for _batch in loader:
        pass
    stats = loader.stats()
    assert stats.stall_fraction > 0.9, stats
    assert stats.batches == 30 and stats.samples == 120
    assert stats.stages["decode"].count == 30 and stats.stages["decode"].mean_ms >= 4 * 4 * 0.9
    assert stats.stages["fetch"].total_s >= stats.stages["decode"].total_s
    assert ("transfer" in stats.stages) == (num_workers > 0)


def test_a_slow_consumer_does_not_wait(no_leaks):
    loader = fastload.DataLoader(Images(120), batch_size=4, num_workers=2, telemetry=True)
    for _batch in loader:
        time.sleep(0.02)  # the training step
    stats = loader.stats()
    assert stats.stall_fraction < 0.1, stats
    # Rates are over the wall time from the first batch on, which spans at least the 29 steps after it.
    assert stats.wall_s >= 29 * 0.02 and stats.batches_per_s == pytest.approx(29 / stats.wall_s)
    assert stats.samples_per_s == pytest.approx(4 * stats.batches_per_s)


def test_stats_describe_the_current_epoch_and_print_as_a_table(no_leaks):
    loader = fastload.DataLoader(Images(64), batch_size=8, num_workers=2, telemetry=True, persistent_workers=True)
    epoch = iter(loader)
    next(epoch), next(epoch), next(epoch)
    assert loader.stats().batches == 3 and loader.stats().epoch == 0
    list(epoch)
    list(loader)
    stats = loader.stats()
    assert stats.epoch == 1 and stats.batches == 8
    text = str(stats)
    assert "data stall" in text and "fetch" in text and "p99 ms" in text


def test_chrome_trace_holds_every_process_spans(tmp_path, no_leaks):
    loader = fastload.DataLoader(Images(64), batch_size=8, num_workers=2, telemetry=True)
    list(loader)
    path = tmp_path / "trace.json"
    loader.export_chrome_trace(path)
    events = json.loads(path.read_text())["traceEvents"]
    names = {e["name"] for e in events}
    assert {"fetch", "collate", "wait"} <= names
    assert len({e["pid"] for e in events if e["name"] == "fetch"}) == 2  # both workers
    assert all(e["ph"] == "X" and e["dur"] >= 0 for e in events)


def test_stats_need_telemetry():
    loader = fastload.DataLoader(Images(8))
    list(loader)
    with pytest.raises(RuntimeError, match="telemetry=True"):
        loader.stats()
