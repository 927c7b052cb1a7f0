"""Pinning and device prefetch: real on CUDA, a pass-through that says so without it."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

import fastload
from fastload.device import cuda_usable
from fastload.prefetch import map_tensors

from .datasets import Mixed, Squares
from .helpers import assert_same, needs_cuda



@pytest.mark.skipif(cuda_usable(), reason="checks the fallback without CUDA")
@pytest.mark.parametrize("kwargs", [dict(pin_memory=True), dict(device="cuda")])
def test_without_cuda_batches_pass_through_with_one_warning(kwargs):
    loader = fastload.DataLoader(Squares(), batch_size=4, num_workers=0, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = list(loader)
        second = list(loader)
    ours = [w for w in caught if "fastload" in str(w.message)]
    assert len(ours) == 1 and "CUDA is not available" in str(ours[0].message)
    assert first[0][0].device.type == "cpu"
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second))


def test_device_cpu_is_a_no_op():
    assert_same(list(fastload.DataLoader(Squares(), batch_size=4, device="cpu")),
                list(fastload.DataLoader(Squares(), batch_size=4)))


def test_map_tensors_keeps_structure():
    sample = Mixed()[3]
    doubled = map_tensors(sample, lambda t: t * 2)
    assert type(doubled["pair"]).__name__ == "Pair"
    assert torch.equal(doubled["tensor"], sample["tensor"] * 2)
    assert doubled["str"] == sample["str"]


@needs_cuda
@pytest.mark.parametrize("num_workers", [0, 2])
def test_device_batches_equal_cpu_batches(num_workers):
    cpu = list(fastload.DataLoader(Mixed(), batch_size=5, num_workers=num_workers))
    gpu = list(fastload.DataLoader(Mixed(), batch_size=5, num_workers=num_workers, device="cuda", device_prefetch=3))
    assert len(cpu) == len(gpu)
    for c, g in zip(cpu, gpu):
        assert g["tensor"].device.type == "cuda" and g["pair"].x.device.type == "cuda"
        assert_same(c, map_tensors(g, lambda t: t.cpu()))


@needs_cuda
def test_device_batches_stay_valid_while_consumer_stream_works():
    loader = fastload.DataLoader(Squares(400), batch_size=8, num_workers=2, device="cuda", device_prefetch=2)
    side = torch.cuda.Stream()
    results = []
    for images, labels, _ in loader:
        with torch.cuda.stream(side):
            side.wait_stream(torch.cuda.current_stream())
            images.record_stream(side)
            results.append((images.sum(dim=(1, 2, 3)), labels))
    torch.cuda.synchronize()
    for sums, labels in results:
        assert torch.equal(sums.cpu(), (labels.cpu().double() ** 2 * 12).float())


@needs_cuda
def test_pin_memory_returns_pinned_batches():
    batch = next(iter(fastload.DataLoader(Squares(), batch_size=4, num_workers=2, pin_memory=True)))
    assert batch[0].is_pinned() and batch[1].is_pinned()


@needs_cuda
@pytest.mark.parametrize("kwargs", [dict(pin_memory=True), dict(device="cuda", device_prefetch=3)])
def test_pinning_and_packing_run_off_the_training_thread_and_resume_exactly(kwargs):
    # The host thread (NOTE [ Host thread ]) does the pinning or packing, and telemetry
    # times it apart from the training thread's wait. A state taken mid-epoch resumes
    # with exactly the rest.
    loader = fastload.DataLoader(Squares(64), batch_size=4, num_workers=2, telemetry=True, **kwargs)
    seen, iterator = [], iter(loader)
    for _ in range(5):
        seen.append(next(iterator)[1].cpu())
    assert any(t.name.startswith("fastload-host") for t in threading.enumerate())
    state = loader.state_dict()
    stages = loader.stats().stages
    assert ("pin" if kwargs.get("pin_memory") else "h2d") in stages and "wait" in stages
    del iterator
    resumed = fastload.DataLoader(Squares(64), batch_size=4, num_workers=2, **kwargs)
    resumed.load_state_dict(state)
    rest = [labels.cpu() for _, labels, _ in resumed]
    assert torch.cat(seen + rest).tolist() == list(range(64))
