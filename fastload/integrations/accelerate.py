"""Hugging Face Accelerate keeps fastload loaders: one line, ``use_fastload(accelerator)``.

    from accelerate import Accelerator
    from fastload.integrations.accelerate import use_fastload

    accelerator = use_fastload(Accelerator())
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

NOTE [ Accelerate ]

``Accelerator.prepare_data_loader`` re-creates every loader it is given as a torch
DataLoader from torch's argument names, which would drop fastload's pool and options. It
returns a loader marked ``_is_accelerate_prepared`` unchanged, though, so
:func:`use_fastload` puts its own step in front of the accelerator's (on that instance
only; other loaders go to Accelerate as before): a fastload loader is re-created as an
:class:`AcceleratedDataLoader` with every option kept, marked, and handed on.

* Sharding: with more than one process, the loader is split by the accelerator's
  ``process_index`` and ``num_processes`` as Accelerate splits one: batch by batch
  (:class:`fastload.DistributedBatchSampler`: rank ``r`` takes batches ``r``, ``r + W``,
  ...; every rank gets the same number of full batches, padded from the start, or the
  incomplete last step dropped with ``drop_last``). A batch sampler of the user's keeps
  its batches, dealt the same way (a bucketing one becomes its distributed twin); a
  sampler or batch sampler that is distributed already is kept. ``split_batches`` splits
  a ``batch_size`` (a loader with a batch sampler instead is refused). A position or
  epoch the loader was given before ``prepare`` is kept; a position cannot cross the
  split (refused: prepare first, then load). The order comes from ``(seed, epoch)``,
  the seed being the accelerator's ``data_seed``, else the loader's generator's initial
  seed, else torch's, as rank 0 has it (broadcast once).
* Device: batches come on ``accelerator.device`` by fastload's own device prefetch,
  unless the loader has a ``device`` already or device placement is off.
* Epochs: each ``iter()`` sets the epoch of the loader and its sampler to the loader's
  own count (or what ``set_epoch`` said), as Accelerate's loaders do.
* Gradient state: while an epoch runs, the loader is registered with Accelerate's
  ``GradientState``; its last batch is known one batch ahead (a first in,
  first out stage, so resume states stay exact: NOTE [ Resume ]), which is what
  ``accelerator.accumulate`` and ``gather_for_metrics`` (with ``remainder``) use.
* Checkpoints: ``save_state`` writes each prepared fastload loader's ``state_dict()`` to
  ``fastload_loader_{i}_rank{r}.json`` in the checkpoint folder (one file per process:
  their positions differ) and ``load_state`` loads it back: the next epoch resumes with
  exactly the batches not yet delivered.
* ``accelerator.skip_first_batches(loader, n)`` positions the fastload loader itself
  (:meth:`fastload.DataLoader.skip_first_batches`) and returns it.

An ``IterableDataset`` is split as Accelerate splits one: every process reads the whole
stream and keeps its batches of each step (:class:`fastload.DistributedIterableDataset`;
one wrapped so already is kept). Datasets that read only their process's part themselves
(a file per rank, ``datasets.distributed.split_dataset_by_node``) read less:
``use_fastload(accelerator, split_iterable_datasets=False)`` leaves them as they are.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils.data as tud

from ..iterable_shard import DistributedIterableDataset
from ..loader import DataLoader, constructor_arguments
from ..samplers import DistributedBatchSampler, DistributedSamplerWrapper

__all__ = ["AcceleratedDataLoader", "use_fastload"]

#: A checkpoint file of a prepared loader's state: loader index (among the accelerator's
#: fastload loaders, in the order they were prepared) and process index.
STATE_FILE = "fastload_loader_{index}_rank{rank}.json"


class AcceleratedDataLoader(DataLoader[Any]):
    """A :class:`fastload.DataLoader` prepared by an accelerator (:func:`use_fastload`):
    the same loader, sharded and on the accelerator's device, that takes part in
    Accelerate's gradient state (NOTE [ Accelerate ]). Made by ``accelerator.prepare``."""

    #: Accelerate hands a loader marked so back unchanged
    _is_accelerate_prepared = True

    def __init__(self, *args: Any, num_processes: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: processes sharing the data, as Accelerate's loaders name it
        self.num_processes = num_processes

    @property
    def total_batch_size(self) -> int | None:
        """Samples per step over all processes, as on Accelerate's loaders (None without ``batch_size``)."""
        batch_size = self.batch_size if self.batch_size is not None else getattr(self.batch_sampler, "batch_size", None)
        return batch_size * self.num_processes if isinstance(batch_size, int) else None

    def __iter__(self) -> Any:
        self.set_epoch(self._next_epoch)  # the sampler follows the loader's epochs, as Accelerate's do
        return super().__iter__()

    def _start_epoch(self) -> tuple[Iterator[Any], Any]:
        source, workers = super()._start_epoch()
        return _GradientStateStage(source, self._remainder()), workers

    def _remainder(self) -> int:
        """Real samples in the last step over all processes (``gather_for_metrics`` keeps
        those), 0 when the steps are full, -1 when unknown (Accelerate's convention)."""
        batch_sampler = self.batch_sampler
        dataset, sampler = self.dataset, self.sampler
        try:
            if isinstance(dataset, DistributedIterableDataset):  # exact in one stream only
                step = dataset.batch_size * dataset.num_replicas
                return -1 if self.num_workers > 1 or dataset.drop_last else len(dataset.dataset) % step  # type: ignore[arg-type]
            if isinstance(batch_sampler, DistributedBatchSampler) and batch_sampler.batch_size is not None:
                step = batch_sampler.batch_size * batch_sampler.num_replicas
                # the items: the wrapped sampler's, or those of the wrapped batch sampler's sampler
                items = batch_sampler.sampler.sampler if batch_sampler.of_batches else batch_sampler.sampler  # type: ignore[union-attr]
                return 0 if batch_sampler.drop_last else len(items) % step  # type: ignore[arg-type]
            if isinstance(sampler, DistributedSamplerWrapper) and self.batch_size is None:  # a sample a step
                return 0 if sampler.drop_last else len(sampler.sampler) % sampler.num_replicas  # type: ignore[arg-type]
            if self.num_processes == 1 and self.batch_size is not None:
                return 0 if self.drop_last else len(sampler) % self.batch_size  # type: ignore[arg-type]
        except (TypeError, AttributeError):  # a sampler without len(), a batch sampler without a sampler
            pass
        return -1


class _GradientStateStage:
    """One batch of look-ahead, so that the last batch is known before it is handed out;
    registered with Accelerate's ``GradientState`` (which keeps a weak reference) for the
    epoch. First in, first out and one to one, as NOTE [ Resume ] requires of a stage:
    the batch held back is not handed out, so a state taken meanwhile leaves it
    unsettled. An error met while looking ahead is raised after the batch before it."""

    def __init__(self, source: Iterator[Any], remainder: int) -> None:
        from accelerate.state import GradientState

        self._source = source
        self._gradient_state = GradientState()
        self.end_of_dataloader = False
        self.remainder = remainder
        self._ahead: list[Any] = []
        self._error: BaseException | None = None
        #: the next batch is still to be looked ahead for (at the start, and after an error)
        self._behind = True
        self._started = self._ended = False

    def __iter__(self) -> _GradientStateStage:
        return self

    def __len__(self) -> int:
        return len(self._source)  # type: ignore[arg-type]

    def __next__(self) -> Any:
        if not self._started:
            self._started = True
            self._gradient_state._add_dataloader(self)
        if self._behind:
            self._behind = False
            self._look_ahead()
        if self._error is not None:
            error, self._error = self._error, None
            self._behind = True  # if the epoch goes on, it goes on after the failed batch
            raise error
        if not self._ahead:
            self._end()
            raise StopIteration
        batch = self._ahead.pop()
        self._look_ahead()
        return batch

    def _look_ahead(self) -> None:
        try:
            self._ahead.append(next(self._source))
        except StopIteration:
            self.end_of_dataloader = True
        except Exception as error:  # noqa: BLE001 - raised in its turn, after the batch before it
            self._error = error

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._gradient_state._remove_dataloader(self)


def use_fastload(accelerator: Any, *, split_iterable_datasets: bool = True) -> Any:
    """Make ``accelerator.prepare`` keep fastload loaders (NOTE [ Accelerate ]); returns
    the accelerator. Loaders of other kinds are prepared as Accelerate prepares them.
    Calling it again changes nothing.

    Args:
        split_iterable_datasets: with more than one process, split an ``IterableDataset``
            across them (every process reads the whole stream). False when the datasets
            read only their own process's part themselves.

    Raises:
        ValueError: later, from ``prepare``, for a ``split_batches`` batch size that the
            number of processes does not divide.
    """
    if getattr(accelerator, "_fastload", None) is not None:
        return accelerator
    accelerator._fastload = _Preparation(accelerator, split_iterable_datasets)
    return accelerator


class _Preparation:
    """What :func:`use_fastload` installs on one accelerator: its ``prepare_data_loader``
    and ``skip_first_batches`` in front of Accelerate's, and the checkpoint hooks."""

    def __init__(self, accelerator: Any, split_iterable_datasets: bool) -> None:
        self._accelerator = accelerator
        self._split_iterable_datasets = split_iterable_datasets
        self._prepare_data_loader = accelerator.prepare_data_loader
        self._skip_first_batches = accelerator.skip_first_batches
        #: while set, torch DataLoaders prepared by this accelerator become fastload ones, with
        #: the fastload arguments it gives for each and whether to split them across the
        #: processes (None: they stay torch's); the Trainer integration sets it while the
        #: Trainer makes its loaders
        self.convert: Callable[[tud.DataLoader[Any]], tuple[dict[str, Any], bool]] | None = None
        accelerator.prepare_data_loader = self.prepare_data_loader
        accelerator.skip_first_batches = self.skip_first_batches
        accelerator.register_save_state_pre_hook(self.save_states)
        accelerator.register_load_state_pre_hook(self.load_states)

    def prepare_data_loader(self, data_loader: Any, device_placement: bool | None = None,
                            slice_fn_for_dispatch: Any = None) -> Any:
        if not getattr(data_loader, "_is_accelerate_prepared", False):
            if isinstance(data_loader, DataLoader):
                data_loader = self.prepared(data_loader, {}, device_placement)
            elif self.convert is not None and type(data_loader) is tud.DataLoader:
                options, split = self.convert(data_loader)
                data_loader = self.prepared(data_loader, options, device_placement, split)
        return self._prepare_data_loader(data_loader, device_placement=device_placement,
                                         slice_fn_for_dispatch=slice_fn_for_dispatch)

    def prepared(self, loader: tud.DataLoader[Any], options: dict[str, Any], device_placement: bool | None,
                 split: bool = True) -> AcceleratedDataLoader:
        """``loader`` re-created as an :class:`AcceleratedDataLoader`: ``options`` applied,
        split across the processes (unless ``split`` is False: the loader reads its own
        process's part already), on the accelerator's device, at the epoch and position
        it was at."""
        accelerator = self._accelerator
        if type(loader) not in (DataLoader, tud.DataLoader):
            raise TypeError(f"use_fastload: {type(loader).__name__} subclasses fastload.DataLoader, and preparing "
                            "re-creates the loader as fastload.DataLoader with its arguments: prepare a "
                            "fastload.DataLoader")
        arguments = constructor_arguments(loader, **options)
        if device_placement is None:
            device_placement = accelerator.device_placement
        if device_placement and arguments.get("device") is None:
            arguments["device"] = accelerator.device
        sharding = self._sharding(loader, arguments) if split else {}
        if sharding:  # replaces the batching arguments as a whole
            arguments = constructor_arguments(loader, **{**options, "device": arguments.get("device"), **sharding})
        prepared = AcceleratedDataLoader(**arguments, num_processes=accelerator.num_processes)
        if isinstance(loader, DataLoader):
            _carry_position(loader, prepared, split_now=bool(sharding))
        return prepared

    def _sharding(self, loader: tud.DataLoader[Any], arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments that split ``loader`` across the accelerator's processes."""
        accelerator = self._accelerator
        world, rank = accelerator.num_processes, accelerator.process_index
        if world == 1:
            return {}
        config = accelerator.dataloader_config
        if config.dispatch_batches:
            warnings.warn("use_fastload: dispatch_batches=True is not followed for fastload loaders: every process "
                          "loads its own shard with its own workers", stacklevel=4)
        if not config.even_batches:
            warnings.warn("use_fastload: even_batches=False is not followed for fastload loaders: every process gets "
                          "the same number of batches", stacklevel=4)
        if isinstance(loader.dataset, tud.IterableDataset):
            if isinstance(loader.dataset, DistributedIterableDataset) or not self._split_iterable_datasets:
                return {}
            batch_size = self._per_process(arguments["batch_size"], "batch_size=None")
            return {"dataset": DistributedIterableDataset(loader.dataset, batch_size, world, rank,
                                                          drop_last=arguments["drop_last"]),
                    "batch_size": arguments["batch_size"] and batch_size, "drop_last": arguments["drop_last"]}
        batch_sampler = arguments.get("batch_sampler")
        if batch_sampler is not None:  # the user's own batches
            if isinstance(batch_sampler, tud.DistributedSampler) or getattr(batch_sampler, "num_replicas", 1) > 1:
                return {}
            self._per_process(None, f"its {type(batch_sampler).__name__}")
            if callable(getattr(batch_sampler, "distributed", None)):  # fastload's bucketing
                return {"batch_sampler": batch_sampler.distributed(world, rank)}
            return {"batch_sampler": DistributedBatchSampler(batch_sampler, None, world, rank, seed=self._seed(loader))}
        sampler = arguments["sampler"]
        if isinstance(sampler, tud.DistributedSampler):
            return {}
        batch_size = arguments["batch_size"]
        if batch_size is None:
            self._per_process(None, "batch_size=None")
            return {"sampler": DistributedSamplerWrapper(sampler, world, rank, seed=self._seed(loader))}
        return {"batch_sampler": DistributedBatchSampler(sampler, self._per_process(batch_size), world, rank,
                                                         drop_last=arguments["drop_last"], seed=self._seed(loader))}

    def _per_process(self, batch_size: int | None, batching: str = "") -> int:
        """A process's batch size: all of it, or with ``split_batches`` its part (which
        needs a ``batch_size``: ``batching`` says what the loader has instead)."""
        world = self._accelerator.num_processes
        if not self._accelerator.dataloader_config.split_batches:
            return batch_size or 1
        if batch_size is None:
            raise ValueError(f"use_fastload: split_batches=True splits batches of a batch_size across the processes, "
                             f"and this loader has {batching} instead: give it a batch_size, or split_batches=False")
        if batch_size % world:
            raise ValueError(f"use_fastload: with split_batches=True the batch size ({batch_size}) must be a "
                             f"multiple of the number of processes ({world})")
        return batch_size // world

    def _seed(self, loader: tud.DataLoader[Any]) -> int:
        """The seed every process orders the shared sequence by (NOTE [ Accelerate ])."""
        from accelerate.utils import broadcast_object_list

        seed = self._accelerator.dataloader_config.data_seed
        if seed is None:
            generator = loader.generator
            seed = generator.initial_seed() if isinstance(generator, torch.Generator) else torch.initial_seed()
        return int(broadcast_object_list([seed])[0]) % (1 << 63)

    def skip_first_batches(self, dataloader: Any, num_batches: int = 0) -> Any:
        if isinstance(dataloader, DataLoader):
            return dataloader.skip_first_batches(num_batches)
        return self._skip_first_batches(dataloader, num_batches=num_batches)

    def loaders(self) -> list[AcceleratedDataLoader]:
        """The accelerator's prepared fastload loaders, in the order they were prepared."""
        return [dl for dl in getattr(self._accelerator, "_dataloaders", ()) if isinstance(dl, AcceleratedDataLoader)]

    def save_states(self, models: Any, weights: Any, output_dir: str) -> None:
        rank = self._accelerator.process_index
        for index, loader in enumerate(self.loaders()):
            save_loader_state(loader, os.path.join(output_dir, STATE_FILE.format(index=index, rank=rank)))

    def load_states(self, models: Any, input_dir: str) -> None:
        rank = self._accelerator.process_index
        for index, loader in enumerate(self.loaders()):
            path = os.path.join(input_dir, STATE_FILE.format(index=index, rank=rank))
            if not load_loader_state(loader, path, f"use_fastload: prepared loader {index}"):
                warnings.warn(f"use_fastload: {path} is missing (a checkpoint saved without fastload's integration?): "
                              f"loader {index} starts its next epoch from the beginning", stacklevel=4)


def _carry_position(loader: DataLoader[Any], prepared: AcceleratedDataLoader, split_now: bool) -> None:
    """Give ``prepared`` the epoch and position ``loader`` was at (a loaded state, a skip,
    ``set_epoch``, epochs iterated). A position cannot cross a split that changes the
    order: refused, naming the order of calls that works."""
    state = loader.state_dict()
    settled = state["settled"]
    started = bool(state["batches"] or settled.get("prefix") or settled.get("beyond")
                   or any(settled.get("stream_items") or ()) or loader._skip_batches)
    if split_now:
        if started:
            raise ValueError("use_fastload: the loader is positioned inside its epoch (a loaded state, or "
                             "skip_first_batches) before being prepared, and preparing splits it across "
                             f"{prepared.num_processes} processes, which changes its order: prepare it first, then "
                             "load its state (accelerator.load_state, or load_state_dict on the prepared loader)")
        if state["epoch"]:
            prepared.set_epoch(state["epoch"])
    elif started or state["epoch"]:
        prepared.load_state_dict(state)
        prepared._skip_batches = loader._skip_batches


def save_loader_state(loader: DataLoader[Any], path: str) -> None:
    """``loader.state_dict()`` as JSON at ``path``, written whole or not at all."""
    with open(path + ".tmp", "w") as file:
        json.dump(loader.state_dict(), file)
    os.replace(path + ".tmp", path)


def load_loader_state(loader: DataLoader[Any], path: str, who: str) -> bool:
    """Load the state at ``path`` into ``loader``; False if there is no such file.

    Raises:
        ValueError: the state does not resume ``loader``, naming ``who`` and ``path``.
    """
    if not os.path.exists(path):
        return False
    with open(path) as file:
        state = json.load(file)
    try:
        loader.load_state_dict(state)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{who}: {path} does not resume it: {exc}") from exc
    return True
