"""``fastload.DataLoader``: torch's DataLoader, fed by fastload's shared-memory worker pool."""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.utils.data
from torch.utils.data import Dataset, IterableDataset, Sampler

from .collate import is_default_collate
from .loader_iter import InProcessIterator, LoaderIterator, PoolIterator, PoolLease
from .pool.pool import WorkerPool
from .pool.worker import PoolConfig
from .prefetch import transfer_stage

#: Smallest slot a worker creates (bytes); larger batches get larger slots.
DEFAULT_MIN_SLOT_BYTES = 1 << 20


class DataLoader(torch.utils.data.DataLoader):
    """A drop-in replacement for :class:`torch.utils.data.DataLoader`.

    Every argument of torch's DataLoader has the same meaning here (see its
    documentation); with ``num_workers > 0`` batches are built by fastload's worker pool
    directly in reusable shared memory and reach the main process without a copy.
    The extra options are keyword-only:

    Args:
        seed_per_sample: seed ``random``, ``numpy`` and ``torch`` before every
            ``dataset[i]`` from ``(epoch seed, i)``, so random augmentations are identical
            for any ``num_workers``. The epoch seed is drawn from ``generator`` as torch
            draws its worker base seed. Needs a map-style dataset.
        device: return batches on this device. With CUDA, batches are staged through a
            pinned ring and copied on a side stream ``device_prefetch`` batches ahead;
            without CUDA, a ``"cuda"`` device falls back to CPU batches with one warning.
        device_prefetch: how many batches the device copy runs ahead.
        min_slot_bytes: smallest shared-memory slot a worker creates.

    Raises:
        ValueError: for the argument combinations torch rejects, and for
            ``seed_per_sample`` with an ``IterableDataset``.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: Sampler[Any] | Iterable[Any] | None = None,
        batch_sampler: Sampler[list[Any]] | Iterable[list[Any]] | None = None,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn: Callable[[int], None] | None = None,
        multiprocessing_context: multiprocessing.context.BaseContext | str | None = None,
        generator: torch.Generator | None = None,
        *,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory_device: str = "",
        in_order: bool = True,
        seed_per_sample: bool = False,
        device: torch.device | str | None = None,
        device_prefetch: int = 2,
        min_slot_bytes: int = DEFAULT_MIN_SLOT_BYTES,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            batch_sampler=batch_sampler,
            num_workers=num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            drop_last=drop_last,
            timeout=timeout,
            worker_init_fn=worker_init_fn,
            multiprocessing_context=multiprocessing_context,
            generator=generator,
            prefetch_factor=prefetch_factor,
            persistent_workers=persistent_workers,
            pin_memory_device=pin_memory_device,
            in_order=in_order,
        )
        if seed_per_sample and isinstance(dataset, IterableDataset):
            raise ValueError("seed_per_sample=True needs a map-style dataset (an IterableDataset has no sample index)")
        if device_prefetch < 1:
            raise ValueError(f"device_prefetch should be at least 1, got {device_prefetch}")
        if min_slot_bytes < 1:
            raise ValueError(f"min_slot_bytes should be positive, got {min_slot_bytes}")
        self.seed_per_sample = seed_per_sample
        self.device = torch.device(device) if device is not None else None
        self.device_prefetch = device_prefetch
        self.min_slot_bytes = min_slot_bytes
        self._pool: WorkerPool | None = None
        self._warned: set[str] = set()

    @property
    def _is_iterable(self) -> bool:
        return isinstance(self.dataset, IterableDataset)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        if self.pin_memory and self.pin_memory_device:
            self._warn_once(
                f"pin_memory_device is deprecated in torch; use device={self.pin_memory_device!r} "
                "to get batches on that device."
            )
        return transfer_stage(
            self._get_iterator(),
            pin_memory=self.pin_memory,
            device=self.device,
            depth=self.device_prefetch,
            warn_once=self._warn_once,
        )

    def _get_iterator(self) -> LoaderIterator:  # type: ignore[override]
        if self.num_workers == 0:
            return InProcessIterator(self)
        self.check_worker_number_rationality()
        return PoolIterator(self, self._lease_pool)

    def _lease_pool(self, base_seed: int) -> PoolLease:
        if not self.persistent_workers:
            return PoolLease(self._make_pool(base_seed), owned=True, fresh=True, on_failure=_nothing)
        # Persistent workers keep the seeds of the epoch that started them, as torch's do.
        fresh = self._pool is None
        if self._pool is None:
            self._pool = self._make_pool(base_seed)
        return PoolLease(self._pool, owned=False, fresh=fresh, on_failure=self._drop_pool)

    def _make_pool(self, base_seed: int) -> WorkerPool:
        config = PoolConfig(
            dataset=self.dataset,
            num_workers=self.num_workers,
            iterable=self._is_iterable,
            auto_collation=self._auto_collation,
            drop_last=self.drop_last,
            collate_fn=self.collate_fn,
            collate_in_slot=self._auto_collation and is_default_collate(self.collate_fn),
            worker_init_fn=self.worker_init_fn,
            seed_per_sample=self.seed_per_sample,
            min_slot_bytes=self.min_slot_bytes,
            max_free_slots=self.prefetch_factor + 2,
        )
        context = self.multiprocessing_context or multiprocessing.get_context()
        return WorkerPool(config, context, base_seed)

    def _drop_pool(self) -> None:
        self._pool = None

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, stacklevel=3)


def _nothing() -> None:
    pass

