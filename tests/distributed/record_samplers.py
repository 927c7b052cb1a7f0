"""Run under ``torchrun --standalone --nproc_per_node=2``: each rank records what its
samplers and loaders yield into ``OUT/rank{r}.json``; tests/test_distributed.py checks it.

Real torch.distributed (gloo): the samplers read rank and world size from the group.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import torch
import torch.distributed as dist
import torch.utils.data as tud

import fastload

N = 101  # not a multiple of the world size: padding is exercised
LENGTHS = torch.randint(1, 60, (N,), generator=torch.Generator().manual_seed(0)).tolist()


class Indices(tud.Dataset):
    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> int:
        return i


def flat(batches) -> list[int]:
    return [int(i) for b in batches for i in b]


def loader_for(kind: str, num_workers: int) -> fastload.DataLoader:
    if kind == "distributed":
        return fastload.DataLoader(Indices(), batch_size=4, sampler=fastload.DistributedSampler(Indices(), seed=7),
                                   num_workers=num_workers)
    if kind == "wrapper":
        weighted = tud.WeightedRandomSampler([float(i % 7 + 1) for i in range(N)], N, replacement=False)
        return fastload.DataLoader(Indices(), batch_size=4, sampler=fastload.DistributedSamplerWrapper(weighted, seed=3),
                                   num_workers=num_workers)
    if kind == "bucket":
        sampler = fastload.DistributedBucketBatchSampler(LENGTHS, max_tokens=200, seed=5, sort_window=40)
        return fastload.DataLoader(Indices(), batch_sampler=sampler, num_workers=num_workers)
    raise ValueError(kind)


def run_epochs(kind: str, num_workers: int) -> dict:
    loader = loader_for(kind, num_workers)
    sampler = loader.batch_sampler if kind == "bucket" else loader.sampler
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        epochs.append([b.tolist() for b in loader])
    # Stop epoch 1 after 3 batches, save, restore into a fresh loader, finish the epoch.
    loader = loader_for(kind, num_workers)
    sampler = loader.batch_sampler if kind == "bucket" else loader.sampler
    sampler.set_epoch(1)
    it = iter(loader)
    head = [next(it).tolist() for _ in range(3)]
    state = json.loads(json.dumps(loader.state_dict()))
    del it
    resumed = loader_for(kind, num_workers)
    resumed.load_state_dict(state)
    (resumed.batch_sampler if kind == "bucket" else resumed.sampler).set_epoch(1)
    tail = [b.tolist() for b in resumed]
    return {"epochs": epochs, "len": len(loader), "resumed_epoch1": head + tail}


def main() -> None:
    out = sys.argv[1]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    record: dict = {"rank": rank, "world": dist.get_world_size(), "lengths": LENGTHS}
    for kind in ("distributed", "wrapper", "bucket"):
        record[kind] = run_epochs(kind, num_workers=2 if kind == "distributed" else 0)
    # Forgetting set_epoch: the order still changes, with one warning.
    sampler = fastload.DistributedSampler(Indices(), seed=7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = list(sampler), list(sampler)
    record["auto_epoch"] = {"changed": first != second, "warnings": [str(w.message) for w in caught]}
    # Same order as torch's DistributedSampler for the same epoch.
    torch_sampler = tud.DistributedSampler(Indices(), seed=7)
    torch_sampler.set_epoch(1)
    record["same_as_torch_epoch1"] = list(torch_sampler) == flat(record["distributed"]["epochs"][1])
    dist.barrier()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
