"""Fetching samples from a dataset: the one piece shared by the in-process path and workers.

NOTE [ Per-sample seeding ]

With ``seed_per_sample=True`` every call ``dataset[i]`` runs with ``random``, ``numpy``
and ``torch`` seeded from ``(base_seed, i)``. ``base_seed`` is the loader's seed for the
epoch (see NOTE [ Resumable sampling ] in ``seeding.py``), so the augmentation of sample
``i`` depends on the seed, the epoch and ``i`` only, never on which worker fetched it or
how many workers there are, and a resumed epoch augments exactly as the original. In the main process (``num_workers=0``)
the global RNG states are restored after each fetch so that the training loop's own
randomness is not disturbed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .seeding import mix_seed

def seed_global_rngs(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)


class EndOfData(Exception):
    """Internal: an iterable dataset has no (complete) batch left for this task."""


class SampleFetcher:
    """Turns one task (a batch of indices, one index, or a batch-sized count for an
    iterable dataset) into the list of samples, or the single sample, it names.

    Mirrors torch's ``_MapDatasetFetcher``/``_IterableDatasetFetcher`` semantics,
    including ``__getitems__`` and ``drop_last`` for iterable datasets. Exceptions of the
    dataset propagate unchanged; ``current_index`` then names the index (or, for
    ``__getitems__``, the indices) being fetched, ``None`` for an iterable dataset.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        iterable: bool,
        auto_collation: bool,
        drop_last: bool,
        seed_per_sample: bool,
        restore_rng: bool,
    ) -> None:
        self.dataset = dataset
        self.iterable = iterable
        self.auto_collation = auto_collation
        self.drop_last = drop_last
        self.seed_per_sample = seed_per_sample
        self.restore_rng = restore_rng
        self.base_seed = 0
        self.current_index: Any = None
        self._iterator: Iterator[Any] | None = None
        self._ended = False

    def start_epoch(self, base_seed: int) -> None:
        self.base_seed = base_seed
        if self.iterable:
            self._iterator = iter(self.dataset)
            self._ended = False

    def fetch(self, task: Any) -> Any:
        if self.iterable:
            return self._fetch_iterable(task)
        if not self.auto_collation:
            return self._get(task)
        getitems = getattr(self.dataset, "__getitems__", None)
        if getitems and not self.seed_per_sample:
            # Per-sample seeding needs one call per sample, so it bypasses __getitems__.
            self.current_index = list(task)
            return getitems(task)
        return [self._get(i) for i in task]

    def _get(self, index: Any) -> Any:
        self.current_index = index
        if not self.seed_per_sample:
            return self.dataset[index]
        if not self.restore_rng:
            seed_global_rngs(mix_seed(self.base_seed, index))
            return self.dataset[index]
        with _preserved_global_rngs():
            seed_global_rngs(mix_seed(self.base_seed, index))
            return self.dataset[index]

    def _fetch_iterable(self, task: Any) -> Any:
        self.current_index = None
        if self._iterator is None:
            raise RuntimeError("SampleFetcher.start_epoch() must be called before fetch()")
        if self._ended:
            raise EndOfData
        if not self.auto_collation:
            try:
                return next(self._iterator)
            except StopIteration:
                self._ended = True
                raise EndOfData from None
        samples = []
        for _ in task:
            try:
                samples.append(next(self._iterator))
            except StopIteration:
                self._ended = True
                break
        if not samples or (self.drop_last and len(samples) < len(task)):
            raise EndOfData
        return samples


class _preserved_global_rngs:
    def __enter__(self) -> None:
        self._states = (random.getstate(), np.random.get_state(), torch.get_rng_state())

    def __exit__(self, *exc: object) -> None:
        py_state, np_state, torch_state = self._states
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)

