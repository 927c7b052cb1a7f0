"""torchdata's StatefulDataLoader and fastload.DataLoader keep different states: loading
one's into the other fails, and says what happened."""

from __future__ import annotations

import pytest
import torch
import torch.utils.data as tud

import fastload

stateful_dataloader = pytest.importorskip("torchdata.stateful_dataloader")

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")


def dataset() -> tud.Dataset:
    return tud.TensorDataset(torch.arange(20))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_torchdata_state_is_named_when_loaded_into_fastload(workers):
    loader = stateful_dataloader.StatefulDataLoader(dataset(), batch_size=4, num_workers=workers)
    iterator = iter(loader)
    next(iterator)
    state = loader.state_dict()
    del iterator
    with pytest.raises(ValueError, match="this is the state of torchdata's StatefulDataLoader .* not of "
                                         "fastload.DataLoader"):
        fastload.DataLoader(dataset(), batch_size=4).load_state_dict(state)


def test_torchdata_refuses_a_fastload_state_in_its_own_words():
    loader = fastload.DataLoader(dataset(), batch_size=4)
    next(iter(loader))
    state = loader.state_dict()
    assert state["format"].startswith("fastload.DataLoader/")
    torchdata_loader = stateful_dataloader.StatefulDataLoader(dataset(), batch_size=4)
    torchdata_loader.load_state_dict(state)  # kept as is until the next iter()
    with pytest.raises(AssertionError, match="State doesn't contain key '_num_yielded'"):
        iter(torchdata_loader)
