"""Fault injection: a dataset whose samples fail in chosen ways, and one accounted run of a
loader over it. Used by ``test_fault_injection.py`` (which asserts) and by ``table.py``
(which prints the table of every fault kind × policy).

Faults hit a fixed 1% of the indices (a hash of the index, so every run and every worker
agrees on which):

* ``raise``: ``__getitem__`` raises;
* ``malformed``: the sample has 3 values instead of 2 (its batch cannot be collated);
* ``kill``: the worker SIGKILLs itself (the first time that index is fetched: a crash
  such as an OOM kill, not a poisoned sample);
* ``sleep``: ``__getitem__`` sleeps past the loader's timeout (once in the run: a stall,
  such as a slow network filesystem).
"""

from __future__ import annotations

import gc
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import torch

import fastload

from ..conftest import child_pids, dev_shm_entries, leaked_dev_shm, wait_until

FAULTS = ("raise", "malformed", "kill", "sleep")
TIMEOUT = 2.0  # the loader's timeout in the sleep scenario (seconds)


def is_faulty(index: int) -> bool:
    return (index * 2654435761 + 500) % 1000 < 10  # 1% of the indices (not the first ones)


class FaultyDataset(torch.utils.data.Dataset):
    def __init__(self, length: int, fault: str, marker_dir: str) -> None:
        self.length, self.fault, self.marker_dir = length, fault, marker_dir

    def __len__(self) -> int:
        return self.length

    def _first_time(self, name: str) -> bool:
        try:
            os.close(os.open(os.path.join(self.marker_dir, name), os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            return False

    def __getitem__(self, index: int) -> torch.Tensor:
        if is_faulty(index):
            if self.fault == "raise":
                raise ValueError(f"sample {index} is corrupt")
            if self.fault == "malformed":
                return torch.tensor([index, index, index])
            if self.fault == "kill" and torch.utils.data.get_worker_info() is not None and self._first_time(str(index)):
                os.kill(os.getpid(), signal.SIGKILL)
            if self.fault == "sleep" and self._first_time("slept"):
                time.sleep(TIMEOUT * 3)
        return torch.tensor([index, index])


@dataclass
class Outcome:
    fault: str
    policy: str
    batches: int
    delivered_once: int
    failed: int
    replaced: int
    duplicated: int
    lost: int
    error: str | None  # what ended the epoch early, if anything
    next_epoch: str  # "complete", or the error the next epoch ended with
    leftover_shm: int
    leftover_processes: int
    seconds: float


def fastload_memfds() -> int:
    """The main process's mappings of fastload slots (memfds): shared memory still held."""
    with open("/proc/self/maps") as f:
        return sum("memfd:fastload-slot" in line for line in f)


def run(fault: str, on_error: str, marker_dir: str, *, restarts: int = 0, samples: int = 8000,
        batch_size: int = 4, workers: int = 2) -> Outcome:
    """One epoch (then one more: is the loader still usable?) with everything accounted.

    Sequential order, so position p of the epoch expects index p: a value there is
    delivered once if it is p, a replacement if p failed, else a duplicate of another
    index; an index neither delivered nor reported failed is lost (up to the last one
    delivered when an error ended the epoch early).
    """
    shm_before, children_before, maps_before = dev_shm_entries(), child_pids(), fastload_memfds()
    started = time.monotonic()
    loader = fastload.DataLoader(
        FaultyDataset(samples, fault, marker_dir), batch_size=batch_size, num_workers=workers, on_error=on_error,
        max_worker_restarts=restarts, timeout=TIMEOUT if fault == "sleep" else 0, persistent_workers=True,
    )
    batches: list[Any] = []
    error = None
    batch = None
    try:
        for batch in loader:
            batches.append(batch[:, 0].tolist())
    except Exception as exc:  # noqa: BLE001 - the outcome records what ended the epoch
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
    batch = None  # the last batch holds its slot: the test's reference, not a leak
    failed = {f.index for f in loader.errors}
    values = [v for batch in batches for v in batch]
    delivered_once = replaced = duplicated = 0
    seen: set[int] = set()
    if on_error == "skip" or error is not None:
        for v in values:
            duplicated += v in seen
            seen.add(v)
        delivered_once = len(seen)
    else:  # positions are kept: replace, or nothing failed
        for position, v in enumerate(values):
            if v == position:
                delivered_once += 1
                seen.add(v)
            elif position in failed:
                replaced += 1
            else:
                duplicated += 1
    delivered_up_to = max(seen, default=-1) + 1 if error is not None else samples
    lost = sum(1 for i in range(delivered_up_to) if i not in seen and i not in failed)
    try:
        next_epoch = f"complete ({sum(1 for _ in loader)} batches)"
    except Exception as exc:  # noqa: BLE001
        next_epoch = f"{type(exc).__name__}"
    seconds = time.monotonic() - started
    batches_run = len(batches)
    del loader, batches
    gc.collect()
    wait_until(lambda: child_pids() <= children_before)
    return Outcome(
        fault=fault, policy=f"on_error={on_error!r}" + (f", max_worker_restarts={restarts}" if restarts else ""),
        batches=batches_run, delivered_once=delivered_once,
        failed=len(failed & set(range(samples))), replaced=replaced, duplicated=duplicated, lost=lost, error=error,
        next_epoch=next_epoch, leftover_shm=len(leaked_dev_shm(shm_before)) + fastload_memfds() - maps_before,
        leftover_processes=len(child_pids() - children_before), seconds=seconds,
    )
