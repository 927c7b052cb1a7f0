"""Run with ``python tests/distributed/lightning_run.py OUT``: Lightning's DDP strategy on
2 CPU processes (gloo) starts the second process itself. Each fit below records, per
rank, the batches its training steps saw into ``OUT/rank{r}.json``;
tests/test_lightning.py checks them.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import pytorch_lightning as pl
import torch
import torch.utils.data as tud

import fastload

N = 101
LENGTHS = torch.randint(1, 60, (N,), generator=torch.Generator().manual_seed(0)).tolist()
MAX_TOKENS = 200


class Indices(tud.Dataset):
    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(i)


class Recorder(pl.LightningModule):
    def __init__(self, make_loader=None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.make_loader = make_loader
        self.epochs: dict[int, list[list[int]]] = {}

    def train_dataloader(self):
        return self.make_loader()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.epochs.setdefault(self.current_epoch, []).append(batch.tolist())
        return self.layer(batch.float().unsqueeze(1)).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def trainer(max_epochs: int = 2, checkpoints: str | None = None) -> pl.Trainer:
    callbacks = [pl.callbacks.ModelCheckpoint(dirpath=checkpoints, every_n_train_steps=3, save_top_k=-1)] \
        if checkpoints else []
    return pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=max_epochs, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=bool(checkpoints),
                      callbacks=callbacks)


def loader_in_hook(kind: str) -> fastload.DataLoader:
    """The loader a *_dataloader hook makes (Lightning re-creates it to inject its sampler)."""
    if kind == "bucket":
        return fastload.DataLoader(Indices(), batch_sampler=fastload.BucketBatchSampler(
            LENGTHS, max_tokens=MAX_TOKENS, seed=5, sort_window=40), num_workers=2)
    if kind == "distributed_bucket":
        return fastload.DataLoader(Indices(), batch_sampler=fastload.DistributedBucketBatchSampler(
            LENGTHS, max_tokens=MAX_TOKENS, seed=5, sort_window=40), num_workers=2)
    if kind == "batch":
        return fastload.DataLoader(Indices(), num_workers=2, batch_sampler=fastload.DistributedBatchSampler(
            tud.RandomSampler(Indices()), 4, seed=2))
    if kind == "wrapper":
        weighted = tud.WeightedRandomSampler([float(i % 7 + 1) for i in range(N)], N, replacement=False)
        return fastload.DataLoader(Indices(), batch_size=4, num_workers=2,
                                   sampler=fastload.DistributedSamplerWrapper(weighted, seed=3))
    raise ValueError(kind)


def main() -> None:
    out = sys.argv[1]
    record: dict = {"lengths": LENGTHS}
    for kind in ("bucket", "distributed_bucket", "batch", "wrapper"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = Recorder(lambda kind=kind: loader_in_hook(kind))
            fit = trainer()
            fit.fit(model)
        loader = fit.train_dataloader
        record[kind] = {"epochs": [model.epochs[e] for e in sorted(model.epochs)],
                        "batch_sampler": type(loader.batch_sampler).__name__,
                        "sampler": type(loader.sampler).__name__,
                        "warnings": [str(w.message) for w in caught if "fastload" in str(w.message)
                                     or "set_epoch" in str(w.message)]}
    # Mid-epoch resume from the checkpoint after 3 steps (Lightning keeps rank 0's loader state):
    # with torch's DistributedSampler injected, and with a bucketing sampler.
    for kind, make in (("resume_injected", lambda: fastload.DataLoader(Indices(), batch_size=4, shuffle=True)),
                       ("resume_bucket", lambda: loader_in_hook("bucket"))):
        checkpoints = os.path.join(out, kind)
        first = Recorder(make)
        trainer(max_epochs=1, checkpoints=checkpoints).fit(first)
        resumed = Recorder(make)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer(max_epochs=1).fit(resumed, ckpt_path=os.path.join(checkpoints, "epoch=0-step=3.ckpt"))
        record[kind] = {"first": first.epochs[0], "resumed": resumed.epochs[0],
                        "warnings": [str(w.message) for w in caught if "fastload" in str(w.message)]}
    # Made outside a hook and iterated once: Lightning re-creates it from its attributes.
    outside = fastload.DataLoader(Indices(), batch_size=4, shuffle=True, seed_per_sample=True)
    next(iter(outside))
    model = Recorder()
    fit = trainer(max_epochs=1)
    fit.fit(model, train_dataloaders=outside)
    record["recreated"] = {"original_root": outside.sample_root, "root": fit.train_dataloader.sample_root,
                           "same_object": fit.train_dataloader is outside}
    # A bucketing batch sampler outside a hook cannot be re-created by position: a clear error.
    model = Recorder()
    try:
        trainer(max_epochs=1).fit(model, train_dataloaders=fastload.DataLoader(
            Indices(), batch_sampler=fastload.BucketBatchSampler(LENGTHS, max_tokens=MAX_TOKENS)))
    except Exception as exc:  # noqa: BLE001 - the message is what is checked
        record["outside_bucket_error"] = f"{type(exc).__name__}: {exc}"
    rank = int(os.environ.get("LOCAL_RANK", 0))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as file:
        json.dump(record, file)


if __name__ == "__main__":
    main()
