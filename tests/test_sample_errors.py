"""on_error="skip" / "replace": failed and malformed samples are left out or replaced,
recorded in loader.errors, logged once, and bounded by max_errors (NOTE [ Sample errors ])."""

from __future__ import annotations

import logging

import pytest
import torch

import fastload

from .datasets import IteratorOverRaisingGenerator, RaisingGenerator, ShardedStream


class FlakySamples(torch.utils.data.Dataset):
    """Index i is (i, i, i) as floats; i % 10 == 3 raises, i % 10 == 7 is malformed (5 values)."""

    def __init__(self, length: int = 100) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        if i % 10 == 3:
            raise ValueError(f"sample {i} is corrupt")
        if i % 10 == 7:
            return torch.zeros(5)
        return torch.full((3,), float(i))


def delivered(batches) -> list[int]:
    return [int(v) for batch in batches for v in batch[:, 0].tolist()]


def loader(num_workers: int, on_error: str, seed: int = 0, **kwargs) -> fastload.DataLoader:
    return fastload.DataLoader(FlakySamples(), batch_size=8, shuffle=True, num_workers=num_workers, on_error=on_error,
                               generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_leaves_out_failed_and_malformed_samples_and_records_them(num_workers, no_leaks):
    data = loader(num_workers, "skip")
    batches = list(data)
    good = delivered(batches)
    failed = [f.index for f in data.errors]
    assert sorted(good) == [i for i in range(100) if i % 10 not in (3, 7)]  # each good sample exactly once
    assert sorted(failed) == [i for i in range(100) if i % 10 in (3, 7)]
    assert all("corrupt" in f.error for f in data.errors if f.index % 10 == 3)
    assert all(f.error.startswith("malformed") for f in data.errors if f.index % 10 == 7)
    assert len(batches) == 13 and all(1 <= len(b) <= 8 for b in batches)
    assert delivered(data) and len(data.errors) == 20  # the next epoch works, and its errors replace these


@pytest.mark.parametrize("num_workers", [0, 2])
def test_replace_keeps_batch_sizes_and_count_and_is_deterministic(num_workers, no_leaks):
    data = loader(num_workers, "replace")
    batches = list(data)
    assert [len(b) for b in batches] == [8] * 12 + [4]  # as without failures
    assert all(v % 10 not in (3, 7) for v in delivered(batches))
    assert {f.index for f in data.errors} >= {i for i in range(100) if i % 10 in (3, 7)}
    # The same seed gives the same replacements, with or without workers (every DDP rank alike).
    other = loader(2 - num_workers, "replace")
    assert [b.tolist() for b in other] == [b.tolist() for b in batches]


def test_a_batch_whose_samples_all_fail_is_left_out(no_leaks):
    class EveryOtherBatchFails(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 40

        def __getitem__(self, i: int) -> torch.Tensor:
            if (i // 4) % 2:
                raise OSError(f"unreadable file {i}.jpg")
            return torch.tensor([i])

    data = fastload.DataLoader(EveryOtherBatchFails(), batch_size=4, num_workers=2, on_error="skip")
    batches = list(data)
    assert [b.flatten().tolist() for b in batches] == [list(range(s, s + 4)) for s in range(0, 40, 8)]
    assert len(data.errors) == 20 and data.errors[0].error.startswith("OSError: unreadable file 4.jpg")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_max_errors_turns_a_flood_into_one_clear_error(num_workers, no_leaks):
    data = loader(num_workers, "skip", max_errors=5)
    with pytest.raises(fastload.TooManySampleErrors, match=r"samples failed in this epoch, more than max_errors=5"):
        list(data)
    assert len(list(loader(num_workers, "skip", max_errors=20))) == 13  # 20 failures are allowed


def test_failures_are_logged_once_per_index(caplog):
    data = loader(0, "skip")
    with caplog.at_level(logging.WARNING, logger="fastload"):
        list(data)
        list(data)
    logged = [r.getMessage() for r in caplog.records if "failed and was left out" in r.getMessage()]
    assert len(logged) == 20  # two epochs, 20 failed indices, each logged once
    assert any(m.startswith("fastload: sample 3 failed") and "corrupt" in m for m in logged)


def test_skip_in_an_iterable_dataset(no_leaks):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return self

        def __init__(self) -> None:
            self.i = -1

        def __next__(self) -> int:
            self.i += 1
            if self.i >= 20:
                raise StopIteration
            if self.i % 5 == 0:
                raise ValueError(f"record {self.i} is truncated")
            return self.i

    data = fastload.DataLoader(Stream(), batch_size=4, on_error="skip")
    assert sum(len(b) for b in data) == 16
    assert [f.index for f in data.errors] == [None] * 4 and "record 0 is truncated" in data.errors[0].error


    assert [f.item for f in data.errors] == [1, 6, 11, 16] and not any(f.ended_stream for f in data.errors)


@pytest.mark.parametrize("dataset_class", [RaisingGenerator, IteratorOverRaisingGenerator])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_says_when_a_raising_generator_ended_its_stream(dataset_class, num_workers, caplog, no_leaks):
    # 50 items; item 8 raises: a generator is finished by it, so the rest of its stream is lost.
    loader = fastload.DataLoader(dataset_class(50, bad=8), batch_size=4, num_workers=num_workers, on_error="skip")
    delivered = [int(v) for batch in loader for v in batch]
    ended = [f for f in loader.errors if f.ended_stream]
    assert len(ended) == 1, loader.errors
    stream, item = ("the main process", 9) if num_workers == 0 else ("worker 0", 5)  # 0,2,4,6,8 in worker 0
    assert (ended[0].stream, ended[0].item) == (stream, item)
    lost = [v for v in range(50) if v not in delivered]
    assert lost == ([*range(8, 50)] if num_workers == 0 else [*range(8, 50, 2)])
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert f"the stream of {stream} ended at its item {item} after an error, so the rest of that stream is lost" \
        in logged
    # A generator is known to be finished when it raises; an iterator over one only when it then ends.
    assert ("failed and was left out" in logged) == (dataset_class is IteratorOverRaisingGenerator)


class Numbers(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(range(10))


def test_bad_policies_are_refused():
    with pytest.raises(ValueError, match="on_error must be one of"):
        fastload.DataLoader(FlakySamples(), on_error="ignore")
    with pytest.raises(ValueError, match="on_error='replace' needs a map-style dataset"):
        fastload.DataLoader(Numbers(), on_error="replace")
    with pytest.raises(ValueError, match="max_errors should be >= 0"):
        fastload.DataLoader(FlakySamples(), on_error="skip", max_errors=-1)


def test_raise_stays_the_default(no_leaks):
    with pytest.raises(ValueError, match="sample 3 is corrupt"):
        list(fastload.DataLoader(FlakySamples(), batch_size=8, num_workers=2))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_under_raise_a_malformed_sample_is_named(num_workers, no_leaks):
    with pytest.raises(RuntimeError) as caught:
        list(fastload.DataLoader(FlakySamples(), batch_size=4, num_workers=num_workers, sampler=[4, 5, 6, 7]))
    text = str(caught.value) + "".join(getattr(caught.value, "__notes__", []))
    assert "sample indices [7] differ in structure from the rest of the batch" in text


@pytest.mark.parametrize("num_workers", [0, 1])
def test_skip_in_an_iterable_dataset_goes_on_after_a_batch_that_failed_whole(num_workers, no_leaks):
    # Batches of 2: the first batch (items 0 and 1) fails whole; the stream goes on.
    loader = fastload.DataLoader(ShardedStream(10, failing=(0, 1)), batch_size=2, num_workers=num_workers,
                                 on_error="skip")
    assert [int(v) for batch in loader for v in batch] == list(range(2, 10))
    assert [f.item for f in loader.errors] == [1, 2]
