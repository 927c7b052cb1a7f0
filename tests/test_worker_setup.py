"""Before workers start: objects that spawn/forkserver cannot send are named, and a
dataset that will copy itself into every worker (copy-on-read) is warned about."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch

import fastload

from .datasets import Squares


class HoldsALock(Squares):
    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.lock = threading.Lock()


@pytest.mark.parametrize("context", ["spawn", "forkserver"])
def test_unpicklable_parts_are_named_before_any_worker_runs(context, no_leaks):
    with pytest.raises(TypeError, match=rf"'{context}' start method .* DataLoader's collate_fn by pickling, and "
                                        r"collate_fn=<function .*<lambda>.* cannot be pickled"), \
            pytest.warns(UserWarning, match="Got pickle error when attempting to start a worker Process"):
        list(fastload.DataLoader(Squares(8), num_workers=2, collate_fn=lambda batch: batch,
                                 multiprocessing_context=context))
    with pytest.raises(TypeError, match=r"DataLoader's dataset by pickling.*cannot pickle '_thread.lock'"), \
            pytest.warns(UserWarning, match="Got pickle error when attempting to start a worker Process"):
        list(fastload.DataLoader(HoldsALock(8), num_workers=2, multiprocessing_context=context))


def test_fork_does_not_need_pickling(no_leaks):
    batches = list(fastload.DataLoader(HoldsALock(8), batch_size=4, num_workers=2, collate_fn=lambda b: len(b),
                                       multiprocessing_context="fork"))
    assert len(batches) == 2


class FileList(torch.utils.data.Dataset):
    def __init__(self, files) -> None:
        self.files = files

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> int:
        return len(self.files[i])


def test_large_python_lists_in_a_dataset_warn_once_with_the_fix(no_leaks):
    paths = [f"images/{i:07d}.jpg" for i in range(100_000)]
    data = fastload.DataLoader(FileList(paths), batch_size=4, num_workers=2, persistent_workers=False)
    with pytest.warns(UserWarning, match=r"dataset.files is a Python list of 100,000 items.*copy-on-read.*numpy"):
        list(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(data)  # once per loader
        # Flat containers, or no workers: nothing to say.
        list(fastload.DataLoader(FileList(np.array(paths)), batch_size=4, num_workers=2))
        list(fastload.DataLoader(FileList(paths), batch_size=4, num_workers=0))
