"""Run with ``python`` (one process) or ``torchrun --standalone --nproc_per_node=2``: a
tiny GPT-2 (built from a config, nothing downloaded) trained by ``FastloadTrainer``.
Each process records the samples of every training batch its model saw into
``OUT/{scenario}_rank{r}.json``; tests/test_transformers.py checks them.

Scenarios: ``uninterrupted`` (two epochs), ``interrupted`` (stops after step 7; checkpoints
at steps 3 and 6), ``resumed`` (from checkpoint 6), ``counted`` (from checkpoint 6 without
fastload's loader state: the Trainer's count of batches). ``BUCKET=1`` trains on
length-bucketed batches; ``REBALANCE=1`` with the Trainer's own batch sampler
(``train_sampling_strategy="batch_rebalance"``). ``OUT_OF_ORDER=1``: ``dataloader_in_order=False`` and the first
sample worker 0 loads takes a second, so the first batch comes after later ones (its
checkpoints are at steps 3 and 6 as well).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

import torch.utils.data as tud
import transformers

import fastload
from fastload.integrations.transformers import FastloadTrainer

N, BAD, VOCAB = 40, 13, 64
BUCKET = os.environ.get("BUCKET") == "1"
OUT_OF_ORDER = os.environ.get("OUT_OF_ORDER") == "1"
REBALANCE = os.environ.get("REBALANCE") == "1"
KIND = "bucket" if BUCKET else "out_of_order" if OUT_OF_ORDER else "rebalance" if REBALANCE else "plain"


class Sequences(tud.Dataset):
    """Sample i: tokens ``[i, ...]`` of a length of its own; sample BAD is corrupt."""

    def __len__(self) -> int:
        return N

    def __init__(self) -> None:
        self.loaded = False

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < N:  # the end of iteration by index, as batch_rebalance iterates the dataset
            raise IndexError(i)
        info = tud.get_worker_info()
        if OUT_OF_ORDER and not self.loaded and info is not None and info.id == 0:
            time.sleep(1.0)
        self.loaded = True
        if i == BAD and not REBALANCE:  # batch_rebalance reads every sample's length first
            raise ValueError(f"sample {i} is corrupt")
        tokens = [i] + [(i * 7 + k) % VOCAB for k in range(1 + i % 5)]
        return {"input_ids": tokens, "labels": tokens}


class Stop(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 7:
            control.should_training_stop = True


def run(scenario: str, out: str) -> None:
    rank = int(os.environ.get("RANK", 0))
    folder = os.path.join(out, KIND)
    transformers.set_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=8, n_layer=1, n_head=2))
    seen: list[list[int]] = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["input_ids"][:, 0].tolist())
                                    if module.training else None, with_kwargs=True)
    args = transformers.TrainingArguments(
        output_dir=folder, per_device_train_batch_size=4, per_device_eval_batch_size=4, num_train_epochs=2,
        save_strategy="steps", save_steps=3, logging_steps=100, report_to=[], seed=5, dataloader_num_workers=2,
        use_cpu=True, disable_tqdm=True, remove_unused_columns=False, dataloader_in_order=not OUT_OF_ORDER,
        train_sampling_strategy="batch_rebalance" if REBALANCE else "random")
    lengths = [1 + i % 5 + 1 for i in range(N)]
    trainer = FastloadTrainer(
        model=model, args=args, train_dataset=Sequences(), eval_dataset=tud.Subset(Sequences(), range(0, 12)),
        data_collator=fastload.PadCollator(return_lengths=False),
        fastload_options={"on_error": "skip", "telemetry": True},
        train_batch_sampler=fastload.BucketBatchSampler(lengths, max_tokens=16, seed=3) if BUCKET else None,
        callbacks=[Stop()] if scenario == "interrupted" else [],
        compute_metrics=lambda prediction: {"count": len(prediction.label_ids),
                                            "first_sum": int(prediction.label_ids[:, 0].sum())})
    record: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if scenario == "interrupted":
            trainer.train()
        elif scenario == "uninterrupted":
            trainer.args.save_strategy = "no"
            trainer.train()
            record["eval"] = trainer.evaluate()
            loader = trainer.get_eval_dataloader()
            record["eval_loader"] = type(loader).__name__
        else:
            checkpoint = os.path.join(folder, "checkpoint-6")
            if scenario == "counted":
                for name in os.listdir(checkpoint):
                    if name.startswith("fastload_train_loader"):
                        os.remove(os.path.join(checkpoint, name))
            trainer.train(resume_from_checkpoint=checkpoint)
    loader = trainer.fastload_train_loader
    record.update(batches=seen, loader=type(loader).__name__, workers=loader.num_workers,
                  on_error=loader.on_error, errors=[f.index for f in loader.errors], stats=loader.stats().batches,
                  warnings=[str(w.message) for w in caught if "fastload" in str(w.message).lower()],
                  checkpoint6=sorted(os.listdir(os.path.join(folder, "checkpoint-6")))
                  if os.path.isdir(os.path.join(folder, "checkpoint-6")) else [])
    with open(os.path.join(out, f"{KIND}_{scenario}_rank{rank}.json"), "w") as file:
        json.dump(record, file, default=str)


if __name__ == "__main__":
    for scenario in sys.argv[2:]:
        run(scenario, sys.argv[1])
