"""Run under ``torchrun --standalone --nproc_per_node=2``: fastload loaders prepared by a
real Accelerate ``Accelerator`` (gloo, CPU). Each rank records what it saw into
``OUT/rank{r}.json``; tests/test_accelerate.py checks it.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.utils.data as tud
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed

import fastload
from fastload.integrations.accelerate import AcceleratedDataLoader, use_fastload

N = 45  # not a multiple of batch_size * world: the last step is padded
BAD = 7  # a corrupt sample, left out under on_error="skip"


class Stream(tud.IterableDataset):
    """0..N-1, worker w of W yielding the values equal to w modulo W."""

    def __iter__(self):
        info = tud.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        return iter(torch.tensor(v) for v in range(worker, N, workers))


class Numbers(tud.Dataset):
    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict:
        if i == BAD:
            raise ValueError(f"sample {i} is corrupt")
        return {"index": torch.tensor(i), "pid": torch.tensor(os.getpid())}


def train_loader() -> fastload.DataLoader:
    return fastload.DataLoader(Numbers(), batch_size=4, shuffle=True, num_workers=2, on_error="skip",
                               telemetry=True, persistent_workers=True)


def indices(batches: list[dict]) -> list[list[int]]:
    return [b["index"].tolist() for b in batches]


def main() -> None:
    out = sys.argv[1]
    set_seed(11)
    accelerator = use_fastload(Accelerator(cpu=True))
    rank = accelerator.process_index
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer, loader = accelerator.prepare(model, optimizer, train_loader())
    record: dict = {"rank": rank, "world": accelerator.num_processes, "main_pid": os.getpid(),
                    "type": type(loader).__name__, "is_fastload": isinstance(loader, fastload.DataLoader),
                    "device": str(loader.device), "on_error": loader.on_error, "len": len(loader),
                    "sampler": type(loader.batch_sampler).__name__}

    # Epoch 0 whole, with the gradient state's view of its end.
    epoch0, ends, pids = [], [], set()
    iterator = iter(loader)
    record["worker_pids"] = [w.pid for w in iterator._workers]
    for batch in iterator:
        epoch0.append(batch)
        ends.append(accelerator.gradient_state.end_of_dataloader)
        pids.update(batch["pid"].tolist())
    record.update(epoch0=indices(epoch0), ends=ends, batch_pids=sorted(pids),
                  errors=[f.index for f in loader.errors], stats_batches=loader.stats().batches)

    # Epoch 1: three batches, save_state, the rest.
    iterator = iter(loader)
    head = [next(iterator) for _ in range(3)]
    checkpoint = os.path.join(out, "checkpoint")
    accelerator.save_state(checkpoint)
    tail = list(iterator)
    record.update(epoch1=indices(head + tail), epoch1_tail=indices(tail), epoch2=indices(list(loader)))

    # A new run: same set-up, load_state, iterate: exactly the tail of epoch 1.
    set_seed(11)
    resumed_accelerator = use_fastload(Accelerator(cpu=True))
    resumed = resumed_accelerator.prepare(train_loader())
    resumed_accelerator.load_state(checkpoint)
    record["resumed_tail"] = indices(list(resumed))
    record["resumed_next_epoch"] = indices(list(resumed))

    # skip_first_batches by count: a fastload loader, after 3 batches of epoch 1.
    set_seed(11)
    counted_accelerator = use_fastload(Accelerator(cpu=True))
    counted = counted_accelerator.prepare(train_loader())
    counted.set_epoch(1)
    skipped = counted_accelerator.skip_first_batches(counted, 3)
    record["skip_is_fastload"] = isinstance(skipped, AcceleratedDataLoader)
    record["skipped_tail"] = indices(list(skipped))

    # Evaluation: gather_for_metrics gives every sample once, padding dropped.
    evaluation = accelerator.prepare(fastload.DataLoader(tud.Subset(Numbers(), [i for i in range(N) if i != BAD]),
                                                         batch_size=4, num_workers=1))
    gathered = []
    for batch in evaluation:
        gathered += accelerator.gather_for_metrics(batch["index"]).tolist()
    record["gathered"] = gathered

    # A batch sampler of the user's, and batch_size=None: one shape a step, gathered exactly.
    numbers = tud.TensorDataset(torch.arange(10))
    own_batches = accelerator.prepare(fastload.DataLoader(numbers, batch_sampler=tud.BatchSampler(
        tud.SequentialSampler(numbers), 3, drop_last=False)))
    record["own_batches_gathered"] = [i for (batch,) in own_batches
                                      for i in accelerator.gather_for_metrics(batch).tolist()]
    unbatched = accelerator.prepare(fastload.DataLoader(tud.TensorDataset(torch.arange(5)), batch_size=None))
    record["unbatched_shapes"] = sorted({tuple(sample.shape) for (sample,) in unbatched})
    record["unbatched_gathered"] = [i for (sample,) in unbatched
                                    for i in accelerator.gather_for_metrics(sample.unsqueeze(0)).tolist()]
    # A position or epoch given before prepare() cannot cross the split; the error says the order that works.
    positioned = train_loader()
    positioned.skip_first_batches(2)
    try:
        accelerator.prepare(positioned)
    except ValueError as exc:
        record["positioned_error"] = str(exc)
    split = use_fastload(Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(split_batches=True)))
    try:
        split.prepare(fastload.DataLoader(numbers, batch_sampler=tud.BatchSampler(range(10), 4, drop_last=False)))
    except ValueError as exc:
        record["split_error"] = str(exc)
    split_loader = split.prepare(fastload.DataLoader(numbers, batch_size=4))
    record["split_batch_size"] = [len(batch) for (batch,) in split_loader]

    # An IterableDataset: split batch by batch, and resumed from save_state/load_state.
    def stream_loader(stream_accelerator):
        return stream_accelerator.prepare(fastload.DataLoader(Stream(), batch_size=4, num_workers=2))
    stream_accelerator = use_fastload(Accelerator(cpu=True))
    streamed = stream_loader(stream_accelerator)
    record["stream_epoch"] = [b.tolist() for b in streamed]
    iterator = iter(streamed)
    head = [next(iterator).tolist() for _ in range(3)]
    stream_accelerator.save_state(os.path.join(out, "stream"))
    record["stream_tail"] = [b.tolist() for b in iterator]
    resumed_stream_accelerator = use_fastload(Accelerator(cpu=True))
    resumed_stream = stream_loader(resumed_stream_accelerator)
    resumed_stream_accelerator.load_state(os.path.join(out, "stream"))
    record["stream_resumed_tail"] = [b.tolist() for b in resumed_stream]
    record["stream_head"] = head
    with open(os.path.join(out, f"rank{rank}.json"), "w") as file:
        json.dump(record, file)
    accelerator.end_training()


if __name__ == "__main__":
    main()
