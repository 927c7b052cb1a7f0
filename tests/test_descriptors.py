"""File descriptors: kept batches hold none, in the main process or in the workers, and
at the limit of open descriptors the error says so, with torch's advice."""

from __future__ import annotations

import multiprocessing
import os
import resource
import subprocess
import sys
import textwrap

import pytest
import torch

import fastload
from fastload.pool.arena import SLOT_BACKING_ENV

from .conftest import pid_alive, wait_until
from .datasets import Squares

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# torch's RuntimeError, word for word (torch/utils/data/dataloader.py)
TORCH_ADVICE = "Too many open files. Communication with the workers is no longer possible. Please increase the " \
               "limit using `ulimit -n` in the shell or change the sharing strategy by calling " \
               "`torch.multiprocessing.set_sharing_strategy('file_system')` at the beginning of your code"


def slot_descriptors(pid: int) -> list[str]:
    """The open descriptors of process ``pid`` that refer to a fastload slot (memfd or file)."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile
    return [t for t in targets if "fastload-slot-" in t]


def mapped_slots(pid: int) -> set[str]:
    """The fastload slots process ``pid`` has mapped, by the name of their file."""
    with open(f"/proc/{pid}/maps") as f:
        return {line.split(maxsplit=5)[5] for line in f if "fastload-slot-" in line}


def workers() -> list[multiprocessing.Process]:
    return [p for p in multiprocessing.active_children() if p.name.startswith("fastload-worker-")]


@pytest.fixture(params=["memfd", "file"])
def backing(request, monkeypatch):
    monkeypatch.setenv(SLOT_BACKING_ENV, request.param)
    return request.param


@pytest.mark.filterwarnings("ignore:fastload. slots are unlinked files")
def test_kept_batches_hold_no_descriptor_in_the_main_process(backing, no_leaks):
    loader = fastload.DataLoader(Squares(400), batch_size=4, num_workers=2, min_slot_bytes=4096)
    kept = list(loader)
    assert len(mapped_slots(os.getpid())) >= 100  # every batch in a slot of its own, all mapped here
    assert slot_descriptors(os.getpid()) == []
    assert int(kept[99][1][3]) == 399


@pytest.mark.filterwarnings("ignore:fastload. slots are unlinked files")
def test_workers_hold_no_descriptor_for_the_slots_they_sent(backing, no_leaks):
    loader = fastload.DataLoader(Squares(400), batch_size=4, num_workers=2, min_slot_bytes=4096,
                                 persistent_workers=True)
    kept = list(loader)  # the workers stay, idle: every slot they made has been sent
    assert len(kept) == 100
    for worker in workers():
        assert len(mapped_slots(worker.pid)) >= 50
        assert slot_descriptors(worker.pid) == []
    del loader


KEEP_MANY = """
    import resource
    import fastload
    from tests.datasets import Squares
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    kept = list(fastload.DataLoader(Squares(1200), batch_size=4, num_workers=2, min_slot_bytes=4096))
    print(len(kept), sum(int(labels.sum()) for _, labels, _ in kept))
"""


def test_more_batches_than_the_descriptor_limit_can_be_kept():
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(KEEP_MANY)], cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["300", str(sum(range(1200)))]


AT_THE_LIMIT = """
    import multiprocessing, os, resource
    import fastload
    from tests.datasets import Squares
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    it = iter(fastload.DataLoader(Squares(400), batch_size=4, num_workers=2, min_slot_bytes=4096))
    first = next(it)
    print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    held = []
    try:
        while True:  # the program's own descriptors fill the table: the next slot's has no room
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    try:
        kept = list(it)
    except RuntimeError as error:
        for fd in held:
            os.close(fd)
        print(type(error).__name__, error, flush=True)
"""


def test_at_the_descriptor_limit_the_main_process_raises_torchs_advice():
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(AT_THE_LIMIT)], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    pids, message = result.stdout.splitlines()
    assert message.startswith("RuntimeError " + TORCH_ADVICE), message
    assert "fastload holds no descriptor per batch or per slot" in message
    assert wait_until(lambda: not any(pid_alive(int(p)) for p in pids.split()))


class FillsItsDescriptorTable(torch.utils.data.Dataset):
    """From index ``bad`` on, the worker has no descriptor left (a dataset that leaks files)."""

    def __init__(self, bad: int) -> None:
        self.bad = bad

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == self.bad:
            highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
            try:
                while True:
                    os.open(os.devnull, os.O_RDONLY)
            except OSError:
                pass
        return torch.full((4,), float(i))


def test_at_the_descriptor_limit_a_worker_raises_torchs_advice(no_leaks):
    it = iter(fastload.DataLoader(FillsItsDescriptorTable(bad=20), batch_size=4, num_workers=1))
    kept = [next(it) for _ in range(5)]  # kept: every batch needs a new slot
    with pytest.raises(RuntimeError) as info:
        next(it)
    message = str(info.value)
    assert "while building the batch of task 5 (sample indices [20, 21, 22, 23])" in message
    assert "Too many open files. A DataLoader worker cannot create the shared memory for a batch. Please increase " \
           "the limit using `ulimit -n` in the shell" in message
    assert [int(batch[0, 0]) for batch in kept] == [0, 4, 8, 12, 16]


AT_THE_LIMIT_WHEN_STARTING = """
    import os, resource
    import fastload
    from tests.datasets import Squares
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Room for one worker's pipe, socket and process handle at most: the second cannot start.
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 4, hard))
    try:
        next(iter(fastload.DataLoader(Squares(16), batch_size=4, num_workers=2)))
    except Exception as exc:
        print(type(exc).__name__, str(exc).replace(chr(10), " "))
"""


def test_at_the_descriptor_limit_starting_workers_raises_torchs_advice():
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(AT_THE_LIMIT_WHEN_STARTING)], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("RuntimeError Too many open files. A DataLoader cannot start its worker "
                                    "processes. Please increase the limit using `ulimit -n`"), result.stdout
