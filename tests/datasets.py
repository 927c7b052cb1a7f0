"""Datasets used by the tests. Module level, so that spawn/forkserver workers can import them."""

from __future__ import annotations

import faulthandler
import math
import os
import random
import signal
import time
from collections import namedtuple
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

Pair = namedtuple("Pair", ["x", "y"])


class Squares(Dataset):
    """Sample i: a tensor derived from i, its label, and a string: deterministic."""

    def __init__(self, n: int = 40, shape: tuple[int, ...] = (3, 4)):
        self.n = n
        self.shape = shape

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.full(self.shape, float(i * i)), i, f"s{i}"


class Mixed(Dataset):
    """Every kind of leaf default_collate handles, nested."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int):
        return {
            "tensor": torch.arange(6, dtype=torch.float32).view(2, 3) + i,
            "array": np.full((2, 2), i, dtype=np.int16),
            "int": i,
            "float": i / 3,
            "str": f"item{i}",
            "bytes": bytes([i]),
            "pair": Pair(torch.tensor([i, -i]), np.float32(i) * 0.5),
            "list": [i, torch.tensor(i, dtype=torch.bfloat16), np.bool_(i % 2)],
            "empty": torch.empty(0, 3),
        }


class BatchFetched(Squares):
    """Has ``__getitems__`` (as HF datasets do): one call per batch."""

    def __getitems__(self, indices):
        return [(torch.full(self.shape, -1.0), i, "via getitems") for i in indices]


class Ragged(Dataset):
    """Sample i has i % 5 + 1 rows: shapes vary from batch to batch."""

    def __len__(self) -> int:
        return 30

    def __getitem__(self, i: int):
        return torch.arange((i % 5 + 1) * 4, dtype=torch.float64).view(-1, 4) + i


class BigSamples(Dataset):
    """Samples of ``mb`` MiB each."""

    def __init__(self, n: int = 12, mb: float = 1.0):
        self.n = n
        self.numel = int(mb * (1 << 20)) // 4

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.full((self.numel,), float(i))


class RandomAugment(Dataset):
    """Draws from torch, numpy and random inside __getitem__ (an augmentation pipeline)."""

    def __len__(self) -> int:
        return 48

    def __getitem__(self, i: int):
        return torch.tensor([float(i), torch.rand(()).item(), float(np.random.rand()), random.random()])


class FailsAt(Dataset):
    """Raises ValueError for one index."""

    def __init__(self, bad: int, n: int = 32):
        self.bad = bad
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if i == self.bad:
            raise ValueError(f"corrupt sample {i}")
        return torch.tensor([i])


class KillsItself(Dataset):
    """The worker fetching index ``bad`` kills itself with ``sig``; with ``stuck_elsewhere``
    every other sample blocks for an hour."""

    def __init__(self, bad: int, sig: int, n: int = 64, stuck_elsewhere: bool = False):
        self.bad = bad
        self.sig = sig
        self.n = n
        self.stuck_elsewhere = stuck_elsewhere

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if i == self.bad and get_worker_info() is not None:
            faulthandler.disable()  # an expected crash: no fault dump inherited from pytest
            os.kill(os.getpid(), self.sig)
            time.sleep(10)
        if self.stuck_elsewhere and get_worker_info() is not None:
            time.sleep(3600)
        return torch.tensor([i])


class Slow(Dataset):
    """Sleeps ``delay`` seconds per sample."""

    def __init__(self, delay: float, n: int = 1000):
        self.delay = delay
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        time.sleep(self.delay)
        return torch.tensor([i])


class Range(IterableDataset):
    """Yields start..end-1, sharded across workers the way torch's documentation shows."""

    def __init__(self, start: int, end: int):
        self.start = start
        self.end = end

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self):
        info = get_worker_info()
        if info is None:
            lo, hi = self.start, self.end
        else:
            per_worker = int(math.ceil((self.end - self.start) / float(info.num_workers)))
            lo = self.start + info.id * per_worker
            hi = min(lo + per_worker, self.end)
        return iter(torch.tensor([v]) for v in range(lo, hi))


class WorkerInfoDataset(Dataset):
    """Returns what get_worker_info() says inside the worker."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        info = get_worker_info()
        import fastload

        same = fastload.get_worker_info() is info
        return {"id": info.id, "num_workers": info.num_workers, "seed": info.seed,
                "torch_seed": torch.initial_seed(),
                "dataset_is_self": type(info.dataset) is type(self), "same": same, "pid": os.getpid()}


@dataclass
class Record:
    image: torch.Tensor
    meta: dict


def record_collate(samples):
    """A custom collate_fn returning a dataclass holding a tensor, a numpy array and strings."""
    images = torch.stack([s[0] for s in samples])
    return Record(image=images, meta={"ids": np.array([s[1] for s in samples]), "names": [s[2] for s in samples]})


def record_worker_init(worker_id: int) -> None:
    os.environ["FASTLOAD_TEST_WORKER"] = str(worker_id)


def signal_name(sig: int) -> str:
    return signal.Signals(sig).name


def failing_worker_init(worker_id: int) -> None:
    raise OSError(f"cannot open the shard of worker {worker_id}")


class Indices(Dataset):
    """Sample i is ``tensor([i])``; the indices in ``slow`` sleep ``delay`` seconds first and
    those in ``failing`` raise (a corrupt file)."""

    def __init__(self, n: int = 40, slow: tuple[int, ...] = (), delay: float = 0.0, failing: tuple[int, ...] = ()):
        self.n = n
        self.slow = set(slow)
        self.delay = delay
        self.failing = set(failing)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if i in self.failing:
            raise ValueError(f"sample {i} is corrupt")
        if i in self.slow:
            time.sleep(self.delay)
        return torch.tensor([i])


class RaisingGenerator(IterableDataset):
    """A generator-based stream of ``tensor([v])`` for v in 0..n-1 that raises at ``bad``:
    a generator cannot go on once it raised."""

    def __init__(self, n: int, bad: int):
        self.n = n
        self.bad = bad

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for v in range(worker, self.n, workers):
            if v == self.bad:
                raise ValueError(f"item {v} is corrupt")
            yield torch.tensor([v])


class IteratorOverRaisingGenerator(RaisingGenerator):
    """The same stream behind an iterator class (no generator object in sight)."""

    def __iter__(self):
        return _Forward(super().__iter__())


class _Forward:
    def __init__(self, inner):
        self.inner = inner

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.inner)


class ShardedStream(IterableDataset):
    """``tensor([v])`` for v in 0..n-1, worker w of W taking v = w mod W; the values in
    ``failing`` raise (the iterator goes on past them)."""

    def __init__(self, n: int, failing: tuple[int, ...] = ()):
        self.n = n
        self.failing = set(failing)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        return _Shard(iter(range(worker, self.n, workers)), self.failing)


class _Shard:
    def __init__(self, values, failing):
        self.values = values
        self.failing = failing

    def __iter__(self):
        return self

    def __next__(self):
        v = next(self.values)
        if v in self.failing:
            raise ValueError(f"item {v} is corrupt")
        return torch.tensor([v])


class FailsFirstIter(IterableDataset):
    """``tensor([v])`` for v in 0..n-1; the first ``iter()`` in the main process raises
    (a shard server not up yet), later ones work."""

    def __init__(self, n: int):
        self.n = n
        self.failed = False

    def __iter__(self):
        if not self.failed and get_worker_info() is None:
            self.failed = True
            raise ConnectionError("the shard server is not up yet")
        return iter(torch.tensor([v]) for v in range(self.n))


#: Changed by a test in the main process after import: a spawn/forkserver worker, a fresh
#: interpreter, must still see this value.
MODULE_STATE = "as imported"


class WorkerState(Dataset):
    """What a worker's fresh-interpreter state looks like from inside, per sample: its
    worker info, its RNG draws, this module's state as the worker sees it, CUDA and the
    dataset's arrays (a numpy array and a tensor, written by the worker: copy-on-write)."""

    def __init__(self, n: int = 8) -> None:
        self.n = n
        self.array = np.arange(1 << 16, dtype=np.int64)
        self.tensor = torch.arange(1 << 16, dtype=torch.float32)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):

        info = get_worker_info()
        before_array, before_tensor = int(self.array[0]), float(self.tensor[0])
        self.array[0] = 1000 + info.id  # a private write: other workers and the main process keep 0
        self.tensor[0] = 1000 + info.id
        return {"id": info.id, "num_workers": info.num_workers, "seed": info.seed, "pid": os.getpid(),
                "ppid": os.getppid(), "random": random.random(), "numpy": float(np.random.rand()),
                "torch": float(torch.rand(())), "module_state": MODULE_STATE,
                "cuda_initialized": torch.cuda.is_initialized(), "dataset_is_a_copy": type(info.dataset) is type(self),
                "before_array": before_array, "before_tensor": before_tensor, "array_sum": int(self.array[1:].sum()), "tensor_sum": float(self.tensor[1:].sum()),
                "array_writeable": bool(self.array.flags.writeable)}


class ReportsToAQueue(Squares):
    """Holds a multiprocessing queue, which only multiprocessing's own pickler can send
    (to a process it starts); each sample puts its index in it."""

    def __init__(self, n: int, queue) -> None:
        super().__init__(n)
        self.queue = queue

    def __getitem__(self, i: int):
        self.queue.put(i)
        return super().__getitem__(i)


class WritesToASharedTensor(Dataset):
    """Each sample writes its index into a tensor the main process put in shared memory
    (a cache filled by the workers, as torch lets them under spawn)."""

    def __init__(self, n: int) -> None:
        self.cache = torch.zeros(n).share_memory_()

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int):
        self.cache[i] = i + 1
        return i


class ReadsTheEnvironment(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        return os.environ.get("FASTLOAD_TEST_VARIABLE", "<unset>")


class StuckAfterTheFirst(Squares):
    """Sample 0 at once; every other sample blocks for a minute (a busy worker)."""

    def __getitem__(self, i: int):
        if i > 0:
            time.sleep(60)
        return super().__getitem__(i)
