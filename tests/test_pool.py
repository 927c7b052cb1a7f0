"""The shared-memory pool: zero-copy batches that stay valid while referenced."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

import fastload

from .datasets import BigSamples, Indices, Ragged, Squares, record_collate


def slot_mappings() -> dict[str, tuple[int, int]]:
    """This process's mappings of fastload slots (memfds), by name: (start, end) address."""
    mappings = {}
    with open("/proc/self/maps") as f:
        for line in f:
            if "/memfd:fastload-slot-" in line:
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                mappings[line.split("/memfd:")[1].split()[0]] = (start, end)
    return mappings


def test_keeping_every_batch_of_an_epoch_keeps_them_intact(no_leaks):
    loader = fastload.DataLoader(Squares(200), batch_size=4, num_workers=2, min_slot_bytes=4096)
    kept = list(loader)
    assert len(kept) == 50
    for b, (images, labels, names) in enumerate(kept):
        expected = torch.arange(b * 4, b * 4 + 4)
        assert torch.equal(labels, expected)
        assert torch.equal(images[:, 0, 0], (expected * expected).float())
        assert list(names) == [f"s{i}" for i in expected.tolist()]


def test_batches_live_in_shared_memory_without_copies():
    it = iter(fastload.DataLoader(BigSamples(n=8, mb=1), batch_size=4, num_workers=1))
    batch = next(it)
    # The batch's memory is the worker's slot, mapped here: no copy was made.
    pointer = batch.untyped_storage().data_ptr()
    assert any(start <= pointer < end for start, end in slot_mappings().values())


def test_slots_are_reused_when_batches_are_dropped():
    loader = fastload.DataLoader(BigSamples(n=200, mb=0.25), batch_size=4, num_workers=2, min_slot_bytes=1 << 20)
    seen_slots = set()
    for batch in loader:
        seen_slots.update(slot_mappings())
        del batch
    # 50 batches but only a handful of slots: prefetch_factor (2) + in flight + released-not-yet-told
    assert len(seen_slots) <= 2 * 5


def test_batch_larger_than_a_slot_gets_a_larger_slot():
    loader = fastload.DataLoader(BigSamples(n=6, mb=3), batch_size=3, num_workers=1, min_slot_bytes=1 << 20)
    batches = list(loader)
    assert [b.shape for b in batches] == [torch.Size([3, 3 << 18])] * 2
    assert torch.equal(batches[1][:, 0], torch.tensor([3.0, 4.0, 5.0]))


def test_batches_of_varying_shapes():
    loader = fastload.DataLoader(Ragged(), batch_size=None, num_workers=2, min_slot_bytes=4096)
    for i, sample in enumerate(loader):
        assert sample.shape == (i % 5 + 1, 4)
        assert torch.equal(sample, torch.arange((i % 5 + 1) * 4, dtype=torch.float64).view(-1, 4) + i)


def test_custom_collate_numpy_and_nontensor_leaves_cross_intact():
    loader = fastload.DataLoader(Squares(20), batch_size=5, num_workers=2, collate_fn=record_collate)
    records = list(loader)
    assert type(records[0]).__name__ == "Record"
    assert isinstance(records[1].meta["ids"], np.ndarray) and records[1].meta["ids"].tolist() == [5, 6, 7, 8, 9]
    assert records[3].meta["names"] == ["s15", "s16", "s17", "s18", "s19"]
    assert records[2].image.shape == (5, 3, 4)


def test_batches_outlive_the_loader_and_its_workers(no_leaks):
    loader = fastload.DataLoader(Squares(16), batch_size=4, num_workers=2)
    kept = list(loader)
    del loader
    gc.collect()
    assert [int(b[1][0]) for b in kept] == [0, 4, 8, 12]
    assert torch.equal(kept[3][0][3], torch.full((3, 4), 225.0))


def test_writing_to_a_batch_does_not_corrupt_later_batches():
    it = iter(fastload.DataLoader(Squares(40), batch_size=4, num_workers=1))
    first = next(it)
    first[0].fill_(-1)
    rest = list(it)
    assert all((b[0] >= 0).all() for b in rest)


@pytest.mark.parametrize("bad_min", [0, -5])
def test_min_slot_bytes_must_be_positive(bad_min):
    with pytest.raises(ValueError, match="min_slot_bytes"):
        fastload.DataLoader(Squares(), num_workers=1, min_slot_bytes=bad_min)


@pytest.mark.parametrize("in_order", [True, False])
def test_a_persistent_loader_left_early_delivers_its_next_epoch_whole(no_leaks, in_order):
    # The left epoch's tasks are still in the workers when the next one starts.
    loader = fastload.DataLoader(Indices(40, slow=tuple(range(40)), delay=0.02), batch_size=2, num_workers=2,
                                 persistent_workers=True, in_order=in_order)
    iterator = iter(loader)
    next(iterator)
    del iterator
    assert sorted(int(v) for batch in loader for v in batch.flatten()) == list(range(40))
