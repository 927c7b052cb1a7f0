"""An ``IterableDataset`` split across ranks batch by batch, as Accelerate splits one."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from typing import Any

import torch.utils.data as tud

from .samplers import _rank_and_world

__all__ = ["DistributedIterableDataset"]


class DistributedIterableDataset(tud.IterableDataset):
    """``dataset`` split across ranks: every rank reads the whole stream (in each worker,
    that worker's stream, as the dataset shards it with ``get_worker_info()``), cuts it
    into steps of ``batch_size * num_replicas`` items and keeps the ``rank``-th
    ``batch_size`` of each step. The last incomplete step is completed with the stream's
    first items, so every rank yields as many items and the real ones come first when
    the ranks' batches are gathered in rank order; with ``drop_last`` it is dropped.

    For datasets that cannot shard themselves by rank: one that can (a file per rank,
    ``datasets.distributed.split_dataset_by_node``) reads less.

    Args:
        dataset: any ``IterableDataset``.
        batch_size: the items a rank keeps of each step (the loader's ``batch_size``).
        num_replicas, rank: from the initialized process group when not given.
        drop_last: drop the incomplete last step instead of completing it.

    Raises:
        ValueError: ``batch_size`` is not a positive integer, or a bad rank.
    """

    def __init__(self, dataset: tud.IterableDataset[Any], batch_size: int, num_replicas: int | None = None,
                 rank: int | None = None, *, drop_last: bool = False) -> None:
        if type(batch_size) is not int or batch_size < 1:
            raise ValueError(f"batch_size should be a positive integer, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_replicas, self.rank = _rank_and_world(num_replicas, rank)
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[Any]:
        step = self.batch_size * self.num_replicas
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        first: list[Any] = []  # the stream's first step, to complete the last one with
        current: list[Any] = []
        for item in self.dataset:
            if len(first) < step:
                first.append(item)
            current.append(item)
            if len(current) == step:
                yield from current[mine]
                current = []
        if current and not self.drop_last:
            while len(current) < step:  # a stream shorter than a step repeats itself
                current += first[: step - len(current)]
            yield from current[mine]

    def __len__(self) -> int:
        """Items this rank yields, for a dataset with ``len()`` read in one stream (with
        workers each worker's stream is cut into steps of its own: an estimate, as torch's
        ``len()`` of an iterable dataset is)."""
        if not isinstance(self.dataset, Sized):
            raise TypeError(f"{type(self.dataset).__name__} has no len()")
        step = self.batch_size * self.num_replicas
        steps = len(self.dataset) // step if self.drop_last else math.ceil(len(self.dataset) / step)
        return steps * self.batch_size
