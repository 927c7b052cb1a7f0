"""Every part of torch's private data-loading API fastload uses, each in one place with
why. ``tests/test_torch_private.py`` checks each against the installed torch, so that a
torch upgrade that moves one breaks there, with its name, and not somewhere inside a
worker. fastload is developed against the torch pinned in ``constraints.txt``.
"""

from __future__ import annotations

from typing import Any

# ExceptionWrapper: a worker's exception re-raised in the main process with the worker's
# traceback and torch's words ("Caught ValueError in DataLoader worker process 0"), which
# users and tools (Lightning, pytest output) already read.
from torch._utils import ExceptionWrapper
from torch.utils.data import IterableDataset
from torch.utils.data._utils import worker as _torch_worker
# torch's default_collate, element type by element type (the same functions and registry
# torch's own default_collate uses): fastload's collates batches torch's way and
# extends the registry, instead of copying torch's rules.
from torch.utils.data._utils.collate import (
    collate,
    collate_float_fn,
    collate_int_fn,
    collate_numpy_array_fn,
    collate_numpy_scalar_fn,
    collate_str_fn,
    collate_tensor_fn,
    default_collate_fn_map,
    default_convert,
)
# pin_memory: torch's own pinning of a nested batch (namedtuples, dataclasses, ...), for
# pin_memory=True without a device, as torch's pin thread does it.
from torch.utils.data._utils.pin_memory import pin_memory

__all__ = [
    "ExceptionWrapper",
    "collate",
    "collate_float_fn",
    "collate_int_fn",
    "collate_numpy_array_fn",
    "collate_numpy_scalar_fn",
    "collate_str_fn",
    "collate_tensor_fn",
    "default_collate_fn_map",
    "default_convert",
    "iterable_len_reported",
    "numpy_seed_like_torch",
    "pin_memory",
    "publish_worker_info",
]


def numpy_seed_like_torch(base_seed: int, worker_id: int) -> Any:
    """The seed torch's workers give numpy (``_generate_state``): the same numpy draws in
    a fastload worker as in torch's."""
    return _torch_worker._generate_state(base_seed, worker_id)


def publish_worker_info(worker_id: int, num_workers: int, seed: int, dataset: Any) -> None:
    """Make ``torch.utils.data.get_worker_info()`` answer in this worker process as in
    torch's workers (it reads the module's private ``_worker_info``), so datasets that
    shard by worker keep working."""
    _torch_worker._worker_info = _torch_worker.WorkerInfo(id=worker_id, num_workers=num_workers, seed=seed,
                                                         dataset=dataset)


def iterable_len_reported(loader: Any) -> int | None:
    """The ``len()`` torch's DataLoader reported for an ``IterableDataset`` (it keeps it in
    ``_IterableDataset_len_called``), which torch warns about when the dataset yields more;
    None for a map-style dataset or before any ``len()``."""
    if not isinstance(loader.dataset, IterableDataset):
        return None
    reported = loader._IterableDataset_len_called
    return None if reported is None else int(reported)

