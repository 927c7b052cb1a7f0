"""Each part of torch's private API that fastload uses (fastload/torch_private.py) does,
with the installed torch, what fastload relies on. A torch upgrade that changes one
fails here, by name."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.utils.data as tud

from fastload import torch_private


class _Seeds(tud.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> float:
        return float(np.random.random_sample())


def test_numpy_is_seeded_as_in_torchs_workers():
    loader = tud.DataLoader(_Seeds(), batch_size=None, num_workers=1, generator=torch.Generator().manual_seed(3))
    drawn_by_torch = [float(x) for x in loader]
    base_seed = int(torch.empty((), dtype=torch.int64).random_(generator=torch.Generator().manual_seed(3)).item())
    np.random.seed(torch_private.numpy_seed_like_torch(base_seed, 0))
    assert drawn_by_torch == [float(np.random.random_sample()) for _ in range(2)]


def test_published_worker_info_is_what_get_worker_info_answers():
    dataset = _Seeds()
    try:
        torch_private.publish_worker_info(1, 3, 77, dataset)
        info = tud.get_worker_info()
        assert (info.id, info.num_workers, info.seed, info.dataset) == (1, 3, 77, dataset)
    finally:
        torch.utils.data._utils.worker._worker_info = None


class _Stream(tud.IterableDataset):
    def __iter__(self):
        return iter(range(3))

    def __len__(self) -> int:
        return 3


def test_the_length_reported_for_an_iterable_dataset_is_read_back():
    loader = tud.DataLoader(_Stream(), batch_size=2)
    assert torch_private.iterable_len_reported(loader) is None
    assert len(loader) == 2
    assert torch_private.iterable_len_reported(loader) == 3
    assert torch_private.iterable_len_reported(tud.DataLoader(list(range(4)))) is None


def test_an_exception_wrapper_crosses_a_process_and_reraises_in_torchs_words():
    try:
        raise KeyError("sample 7")
    except KeyError:
        wrapper = torch_private.ExceptionWrapper(where="in DataLoader worker process 0")
    wrapper = pickle.loads(pickle.dumps(wrapper))
    with pytest.raises(KeyError, match="Caught KeyError in DataLoader worker process 0"):
        wrapper.reraise()


def test_torchs_collate_registry_and_functions_are_there():
    batch = torch_private.collate([(torch.ones(2), 1), (torch.zeros(2), 2)],
                                  collate_fn_map=torch_private.default_collate_fn_map)
    assert batch[0].shape == (2, 2) and batch[1].tolist() == [1, 2]
    assert torch_private.default_collate_fn_map[torch.Tensor] is torch_private.collate_tensor_fn
    for fn in (torch_private.collate_float_fn, torch_private.collate_int_fn, torch_private.collate_str_fn,
               torch_private.collate_numpy_array_fn, torch_private.collate_numpy_scalar_fn):
        assert fn in torch_private.default_collate_fn_map.values()
    assert torch_private.default_convert(np.arange(3)).tolist() == [0, 1, 2]


def test_torchs_pin_memory_takes_a_nested_batch():
    assert callable(torch_private.pin_memory)
    # without CUDA torch refuses to pin; the nested walk is what fastload relies on, with CUDA
    if torch.cuda.is_available():
        pinned = torch_private.pin_memory({"x": torch.ones(2)})
        assert pinned["x"].is_pinned()
