"""Hugging Face ``Trainer`` with fastload loaders: replace ``Trainer`` by ``FastloadTrainer``.

    from fastload.integrations.transformers import FastloadTrainer

    trainer = FastloadTrainer(model=model, args=args, train_dataset=train, eval_dataset=test,
                              data_collator=fastload.PadCollator(return_lengths=False),
                              fastload_options={"on_error": "skip", "telemetry": True},
                              train_batch_sampler=fastload.BucketBatchSampler(lengths, max_tokens=4096))
    trainer.train()                               # later: trainer.train(resume_from_checkpoint=True)

NOTE [ Hugging Face Trainer ]

The Trainer builds its loaders as torch DataLoaders and hands them to its accelerator's
``prepare``. :class:`FastloadTrainerMixin` makes that accelerator a fastload one
(``use_fastload``, NOTE [ Accelerate ]) that re-creates those loaders as fastload loaders
with the Trainer's own arguments (batch size, collator, workers, ``in_order``, ...) and
``fastload_options``; so the train, evaluation and test loaders are fastload's, sharded
by rank and registered with Accelerate's gradient state as the Trainer expects.

* Order: the training loader's order comes from ``(seed, epoch)``: the Trainer's sampler
  is wrapped in a :class:`fastload.DistributedSamplerWrapper` seeded with ``data_seed``
  (else ``seed``), or ``train_batch_sampler`` (a bucketing batch sampler, split across
  ranks) replaces it; the Trainer's own batch sampler (``train_sampling_strategy=
  "batch_rebalance"``), which serves its own process's part, is kept as it is. The
  Trainer sets the epoch (``set_epoch``) every epoch.
* Resume: every checkpoint holds each process's training-loader state
  (``fastload_train_loader_rank{r}.json``, beside the Trainer's RNG states).
  ``train(resume_from_checkpoint=...)`` loads it into the new training loader, and the
  Trainer's own ``skip_first_batches`` call, which names as many batches, keeps it: the
  resumed epoch delivers exactly the batches not delivered before. A checkpoint without
  that file (saved by a plain Trainer) is resumed by counting batches, with a warning.
  The Trainer calls ``skip_first_batches`` by its module's name, so that name is
  replaced once, in ``transformers.trainer``, by a function that positions fastload
  loaders and hands any other loader to Accelerate's as before.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch.utils.data as tud
import transformers
import transformers.trainer
import transformers.trainer_utils
from transformers import TrainerCallback

from ..loader import DataLoader
from ..samplers import DistributedSamplerWrapper
from .accelerate import AcceleratedDataLoader, load_loader_state, save_loader_state, use_fastload

__all__ = ["FastloadTrainer", "FastloadTrainerMixin"]

#: The training loader's state in a checkpoint folder, one per process.
STATE_FILE = "fastload_train_loader_rank{rank}.json"


class FastloadTrainerMixin:
    """Makes a ``transformers.Trainer`` (or a subclass: put the mixin first) load its data
    with fastload (NOTE [ Hugging Face Trainer ]).

    Args:
        fastload_options: :class:`fastload.DataLoader` options for every loader the
            Trainer makes (``on_error``, ``max_errors``, ``telemetry``,
            ``seed_per_sample``, ``device_prefetch``, ...).
        train_batch_sampler: the training loader's batch sampler (a
            :class:`fastload.BucketBatchSampler`: length-bucketed batches), instead of the
            Trainer's sampler and ``per_device_train_batch_size``.
    """

    def __init__(self, *args: Any, fastload_options: Mapping[str, Any] | None = None,
                 train_batch_sampler: tud.Sampler[list[int]] | None = None, **kwargs: Any) -> None:
        self.fastload_options = dict(fastload_options or {})
        self.train_batch_sampler = train_batch_sampler
        #: the training loader of the last ``get_train_dataloader()`` (its ``stats()``, ``errors``)
        self.fastload_train_loader: AcceleratedDataLoader | None = None
        self._fastload_resume_from: str | None = None
        _install_skip_first_batches()
        super().__init__(*args, **kwargs)
        self.add_callback(_SaveLoaderState(self))  # type: ignore[attr-defined]

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()  # type: ignore[misc]
        use_fastload(self.accelerator)  # type: ignore[attr-defined]

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        checkpoint = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        if resume_from_checkpoint is True:
            output_dir = self.args.output_dir  # type: ignore[attr-defined]
            checkpoint = transformers.trainer_utils.get_last_checkpoint(output_dir)
            if checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({output_dir})")
        self._fastload_resume_from = checkpoint or None
        try:
            return super().train(checkpoint, *args, **kwargs)  # type: ignore[misc]
        finally:
            self._fastload_resume_from = None

    def get_train_dataloader(self) -> Any:
        with self._converting(self._train_arguments):
            loader = super().get_train_dataloader()  # type: ignore[misc]
        self.fastload_train_loader = loader
        checkpoint, self._fastload_resume_from = self._fastload_resume_from, None
        if checkpoint is not None:
            self._load_train_state(loader, checkpoint)
        return loader

    def get_eval_dataloader(self, *args: Any, **kwargs: Any) -> Any:
        with self._converting(self._arguments):
            return super().get_eval_dataloader(*args, **kwargs)  # type: ignore[misc]

    def get_test_dataloader(self, *args: Any, **kwargs: Any) -> Any:
        with self._converting(self._arguments):
            return super().get_test_dataloader(*args, **kwargs)  # type: ignore[misc]

    @contextmanager
    def _converting(self, arguments: Callable[[tud.DataLoader[Any]], tuple[dict[str, Any], bool]]) -> Iterator[None]:
        """While the Trainer makes a loader, its accelerator turns torch loaders into fastload ones."""
        preparation = self.accelerator._fastload  # type: ignore[attr-defined]
        preparation.convert = arguments
        try:
            yield
        finally:
            preparation.convert = None

    def _arguments(self, loader: tud.DataLoader[Any]) -> tuple[dict[str, Any], bool]:
        """The fastload arguments of a loader the Trainer made, and whether to split it across processes."""
        return dict(self.fastload_options), True

    def _train_arguments(self, loader: tud.DataLoader[Any]) -> tuple[dict[str, Any], bool]:
        arguments, _ = self._arguments(loader)
        if self.train_batch_sampler is not None:
            arguments["batch_sampler"] = self.train_batch_sampler
        elif loader.batch_size is None and loader.batch_sampler is not None:
            # The Trainer's own batch sampler (train_sampling_strategy="batch_rebalance") serves
            # its own process's part already, as the Trainer makes it.
            return arguments, False
        elif not isinstance(loader.dataset, tud.IterableDataset):
            args = self.args  # type: ignore[attr-defined]
            seed = args.data_seed if args.data_seed is not None else args.seed
            accelerator = self.accelerator  # type: ignore[attr-defined]
            arguments["sampler"] = DistributedSamplerWrapper(loader.sampler, accelerator.num_processes,
                                                             accelerator.process_index, seed=seed)
        return arguments, True

    def _load_train_state(self, loader: DataLoader[Any], checkpoint: str) -> None:
        rank = self.accelerator.process_index  # type: ignore[attr-defined]
        path = os.path.join(checkpoint, STATE_FILE.format(rank=rank))
        if not load_loader_state(loader, path, "FastloadTrainer: the training loader"):
            warnings.warn(f"FastloadTrainer: {path} is missing (a checkpoint of a plain Trainer?): the training "
                          "loader skips the batches the Trainer counts, which is exact unless a batch among them "
                          "failed whole under on_error='skip'", stacklevel=3)


class FastloadTrainer(FastloadTrainerMixin, transformers.Trainer):
    """``transformers.Trainer`` whose loaders are fastload's: see :class:`FastloadTrainerMixin`."""


class _SaveLoaderState(TrainerCallback):
    """Writes the training loader's state into each checkpoint, on every process."""

    def __init__(self, trainer: FastloadTrainerMixin) -> None:
        self._trainer = trainer

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        loader = self._trainer.fastload_train_loader
        if loader is None:
            return
        if state.is_hyper_param_search:  # its checkpoints go to a folder per trial
            return
        prefix = transformers.trainer_utils.PREFIX_CHECKPOINT_DIR
        folder = os.path.join(args.output_dir, f"{prefix}-{state.global_step}")
        os.makedirs(folder, exist_ok=True)  # on a node of its own, a process writes into a folder of its own
        rank = self._trainer.accelerator.process_index  # type: ignore[attr-defined]
        save_loader_state(loader, os.path.join(folder, STATE_FILE.format(rank=rank)))


def _install_skip_first_batches() -> None:
    """Route the Trainer's ``skip_first_batches`` calls for fastload loaders to the loader
    (NOTE [ Hugging Face Trainer ]); once per process."""
    accelerate_skip = transformers.trainer.skip_first_batches
    if getattr(accelerate_skip, "_fastload", False):
        return

    def skip_first_batches(dataloader: Any, num_batches: int = 0) -> Any:
        if isinstance(dataloader, DataLoader):
            return dataloader.skip_first_batches(num_batches)
        return accelerate_skip(dataloader, num_batches)

    skip_first_batches._fastload = True  # type: ignore[attr-defined]
    transformers.trainer.skip_first_batches = skip_first_batches
