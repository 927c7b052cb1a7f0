"""``fastload.DataLoader``: torch's DataLoader, fed by fastload's shared-memory worker pool."""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import os
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar, cast

import torch
import torch.utils.data
from torch.utils.data import Dataset, IterableDataset, Sampler

from .collate import default_convert, is_default_collate
from .loader_iter import EpochIterator, EpochSetup, InProcessIterator, LoaderIterator, PoolIterator, PoolLease
from .pool.pool import WorkerPool
from .pool.worker import PoolConfig
from .prefetch import MappedIterator, transfer_stage
from .resume import (
    STATE_FORMAT,
    Batching,
    EpochProgress,
    ResumePoint,
    SamplerRoles,
    batching_of,
    check_same_order,
    epoch_tasks,
    order_description,
    point_after_batches,
    remaining_batches,
    sampler_roles,
    settled_from_state,
)
from .sample_errors import POLICIES, ErrorLog, OnError, SampleFailure
from .samplers import RandomSampler, SequentialSampler, checked_count, checked_seed, rank_of
from .seeding import decode_generator_state, draw_seed, encode_generator_state, sample_seed
from .telemetry import EpochTelemetry, LoaderStats
from .torch_private import iterable_len_reported

#: Keys of torchdata's ``StatefulDataLoader.state_dict()`` (single-process and with workers)
TORCHDATA_STATE_KEYS = frozenset({"_snapshot", "_steps_since_snapshot", "_num_yielded", "_sampler_iter_state",
                                  "_index_sampler_state", "_iterator_finished"})

#: The type of the dataset's samples: ``fastload.DataLoader[T]``, as ``torch.utils.data.DataLoader[T]``.
T_co = TypeVar("T_co", covariant=True)

#: Smallest slot a worker creates (bytes); larger batches get larger slots.
DEFAULT_MIN_SLOT_BYTES = 1 << 20


class DataLoader(torch.utils.data.DataLoader[T_co]):
    """A drop-in replacement for :class:`torch.utils.data.DataLoader`.

    Every argument of torch's DataLoader has the same meaning here (see its
    documentation); with ``num_workers > 0`` batches are built by fastload's worker pool
    directly in reusable shared memory and reach the main process without a copy.

    Seeds are drawn as torch draws them (NOTE [ Seeds ]): each ``iter()`` draws the
    workers' base seed from ``generator`` (torch's global RNG if None; once, with
    persistent workers), workers are seeded ``base_seed + worker_id`` as torch seeds
    them, and ``shuffle=True`` uses :class:`fastload.RandomSampler`, torch's index for
    index. The same generator, or the same global seed, gives torch's data. The state
    (:meth:`state_dict`) records what an epoch drew, so :meth:`load_state_dict` resumes
    mid-epoch with exactly the samples not yet delivered (NOTE [ Resume ]); the samples'
    random augmentations are the same only where they are seeded per sample
    (``seed_per_sample=True``) or absent.

    As with torch, a persistent loader (``persistent_workers=True``, ``num_workers > 0``)
    has one iterator: ``iter(loader)`` while it is alive starts a new epoch on it.

    The extra options are keyword-only:

    Args:
        seed_per_sample: seed ``random``, ``numpy`` and ``torch`` before every
            ``dataset[i]`` from ``(epoch seed, i)``, so random augmentations are identical
            for any ``num_workers`` and after a resume. Needs a map-style dataset.
        device: return batches on this device. With CUDA, batches are staged through a
            pinned ring and copied on a side stream ``device_prefetch`` batches ahead;
            without CUDA, a ``"cuda"`` device falls back to CPU batches with one warning.
        device_prefetch: how many batches the host thread (pinning, or packing into the
            pinned ring) and the device copy run ahead (NOTE [ Host thread ]).
        batch_transform: applied to every batch in the main process, before pinning or
            the device copy: work that belongs on the GPU, e.g.
            ``RandomResizedCropDecode(..., device="cuda").finish_batch``.
        min_slot_bytes: smallest shared-memory slot a worker creates.
        on_error: what a sample that fails to load (``dataset[i]`` raises, or it is
            malformed: it breaks its batch's collation) does: ``"raise"`` (torch's
            behaviour), ``"skip"`` (left out of its batch) or ``"replace"`` (replaced by a
            deterministic other sample, so every rank keeps its batch sizes and count:
            DDP-safe; map-style datasets). See NOTE [ Sample errors ] and :attr:`errors`.
        max_errors: under ``"skip"``/``"replace"``, more failed samples than this in one
            epoch end it with :class:`fastload.TooManySampleErrors` (None: no limit).
        telemetry: time every batch's stages (fetch, collate, transfer, pinning, device
            copy, the training loop's wait) for :meth:`stats` and :meth:`export_chrome_trace`;
            see NOTE [ Telemetry ]. Off, nothing is measured.
        max_worker_restarts: replace a worker process that dies (a signal, the OOM killer)
            up to this many times over the pool's life, re-issuing its unfinished batches:
            every batch is still delivered once, in order (NOTE [ Worker restart ]).
            0 (default): a dead worker raises :class:`fastload.WorkerDiedError`. Needs a
            map-style dataset.
        sample_root: the root of the per-sample seeds and of the replacements' choice
            (NOTE [ Seeds ]). None: the base seed of the loader's first epoch, kept in this
            attribute once drawn, so that a loader re-created from this one's attributes
            (as Lightning re-creates loaders) seeds its samples alike.

    Raises:
        ValueError: for the argument combinations torch rejects, for ``seed_per_sample``
            ``on_error="replace"`` or ``max_worker_restarts`` with an ``IterableDataset``, and
            for bad values of the extra options.
    """

    def __init__(
        self,
        dataset: Dataset[T_co],
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: Sampler[Any] | Iterable[Any] | None = None,
        batch_sampler: Sampler[list[Any]] | Iterable[list[Any]] | None = None,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn: Callable[[int], None] | None = None,
        multiprocessing_context: multiprocessing.context.BaseContext | str | None = None,
        generator: torch.Generator | None = None,
        *,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory_device: str = "",
        in_order: bool = True,
        seed_per_sample: bool = False,
        device: torch.device | str | None = None,
        device_prefetch: int = 2,
        batch_transform: Callable[[Any], Any] | None = None,
        min_slot_bytes: int = DEFAULT_MIN_SLOT_BYTES,
        on_error: OnError = "raise",
        max_errors: int | None = None,
        max_worker_restarts: int = 0,
        telemetry: bool = False,
        sample_root: int | None = None,
    ) -> None:
        if sampler is None and batch_sampler is None and not isinstance(dataset, IterableDataset):
            # fastload's own default samplers: same meaning as torch's, and resumable.
            sized = cast(Sized, dataset)  # torch's samplers need len(dataset), as they do
            sampler = RandomSampler(sized, generator=generator) if shuffle else SequentialSampler(sized)
            shuffle = None
        super().__init__(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            batch_sampler=batch_sampler,
            num_workers=num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            drop_last=drop_last,
            timeout=timeout,
            worker_init_fn=worker_init_fn,
            multiprocessing_context=multiprocessing_context,
            generator=generator,
            prefetch_factor=prefetch_factor,
            persistent_workers=persistent_workers,
            pin_memory_device=pin_memory_device,
            in_order=in_order,
        )
        if seed_per_sample and isinstance(dataset, IterableDataset):
            raise ValueError("seed_per_sample=True needs a map-style dataset (an IterableDataset has no sample index)")
        if device_prefetch < 1:
            raise ValueError(f"device_prefetch should be at least 1, got {device_prefetch}")
        if min_slot_bytes < 1:
            raise ValueError(f"min_slot_bytes should be positive, got {min_slot_bytes}")
        if on_error not in POLICIES:
            raise ValueError(f"on_error must be one of {POLICIES}, got {on_error!r}")
        if on_error == "replace" and isinstance(dataset, IterableDataset):
            raise ValueError("on_error='replace' needs a map-style dataset (an IterableDataset has no other sample "
                             "to take); use on_error='skip'")
        if max_errors is not None and max_errors < 0:
            raise ValueError(f"max_errors should be >= 0 or None, got {max_errors}")
        if max_worker_restarts < 0:
            raise ValueError(f"max_worker_restarts should be >= 0, got {max_worker_restarts}")
        if max_worker_restarts and isinstance(dataset, IterableDataset):
            raise ValueError("max_worker_restarts needs a map-style dataset: a new worker cannot resume the stream "
                             "position of an IterableDataset's dead one")
        self.max_worker_restarts = max_worker_restarts
        self.sample_root = None if sample_root is None else checked_seed(sample_root, "sample_root")
        self.telemetry = telemetry
        self._telemetry: EpochTelemetry | None = None
        self.on_error = on_error
        self.max_errors = max_errors
        self.seed_per_sample = seed_per_sample
        self.device = torch.device(device) if device is not None else None
        self.device_prefetch = device_prefetch
        self.batch_transform = batch_transform
        self.min_slot_bytes = min_slot_bytes
        self._pool: WorkerPool | None = None
        self._warned: set[str] = set()
        self._logged_failures: set[Any] = set()
        self._error_log = ErrorLog(on_error, max_errors, self._logged_failures)
        self._next_epoch = 0
        self._progress: EpochProgress | None = None
        #: what load_state_dict or skip_first_batches says the next epoch skips (NOTE [ Resume ])
        self._resume: ResumePoint | None = None
        #: an IterableDataset's batches the next epoch drops before it hands any out (skip_first_batches)
        self._skip_batches = 0
        #: a persistent loader's live iterator (weak: the loader must not keep it, and through
        #: it the pool, alive in a reference cycle)
        self._live_iterator: weakref.ReferenceType[EpochIterator] | None = None

    def stats(self) -> LoaderStats:
        """Telemetry of the current (or last) epoch: per-stage totals and percentiles,
        batches/s, samples/s and the data-stall fraction (NOTE [ Telemetry ]). Print it
        for a table. Needs ``telemetry=True``."""
        if self._telemetry is None:
            raise RuntimeError("DataLoader.stats() needs DataLoader(..., telemetry=True) and an epoch started")
        finished = self._progress is not None and self._progress.finished
        return self._telemetry.stats(time.perf_counter(), finished)

    def export_chrome_trace(self, path: str | os.PathLike[str]) -> None:
        """Writes the last batches' stage spans, per worker and for the main process, as
        Chrome trace-event JSON (chrome://tracing, Perfetto). Needs ``telemetry=True``."""
        if self._telemetry is None:
            raise RuntimeError("DataLoader.export_chrome_trace() needs DataLoader(..., telemetry=True)")
        self._telemetry.write_chrome_trace(path)

    @property
    def errors(self) -> list[SampleFailure]:
        """The samples left out or replaced in the current (or last) epoch, in the order
        the main process learnt of them: ``SampleFailure(index, error)`` records."""
        return list(self._error_log.failures)

    @property
    def _is_iterable(self) -> bool:
        return isinstance(self.dataset, IterableDataset)

    def __iter__(self) -> EpochIterator:  # type: ignore[override]
        if self.pin_memory and self.pin_memory_device:
            self._warn_once(
                f"pin_memory_device is deprecated in torch; use device={self.pin_memory_device!r} "
                "to get batches on that device."
            )
        source, workers = self._start_epoch()
        progress = self._progress
        assert progress is not None  # the epoch _start_epoch began
        skip, self._skip_batches = self._skip_batches, 0
        if self.persistent_workers and self.num_workers > 0:
            live = self._live_iterator() if self._live_iterator is not None else None
            if live is not None:
                live.restart(source, progress, self._telemetry, workers)
            else:
                live = EpochIterator(source, progress, self._telemetry, workers)
                self._live_iterator = weakref.ref(live)
        else:
            live = EpochIterator(source, progress, self._telemetry, workers)
        # An IterableDataset's positions cannot be counted in batches: its skipped batches are
        # read and dropped, and settle as handed out (NOTE [ Resume ]).
        for _ in itertools.islice(live, skip):
            pass
        return live

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` epoch ``epoch``, as Accelerate's and Hugging Face's
        loaders have it: the loader's epoch (its per-sample seeds, its state's ``"epoch"``)
        and the epoch of its sampler, or of the sampler inside its batch sampler, where
        that has a ``set_epoch`` (fastload's samplers, torch's ``DistributedSampler``).

        The epoch of a state :meth:`load_state_dict` loaded is kept, with its sampler's
        epoch (which the state holds); that of another epoch is dropped, with a warning if
        that epoch was not over. A position :meth:`skip_first_batches` left is kept.

        Raises:
            ValueError: ``epoch`` is not a whole number >= 0.
        """
        epoch = checked_count(epoch, "DataLoader.set_epoch: epoch")
        resume = self._resume
        batching = batching_of(self)
        roles = sampler_roles(batching)
        loaded = resume is not None and resume.from_state
        if loaded and epoch != self._next_epoch:
            assert resume is not None
            if resume.started and (batching.unit == "items" or
                                   remaining_batches(batching, resume, self._index_sampler) > 0):
                warnings.warn(f"fastload: set_epoch({epoch}) drops the loaded state's position in epoch "
                              f"{self._next_epoch} ({resume.batches} batches handed out): epoch {epoch} starts "
                              "from its beginning", stacklevel=2)
            if resume.jumped and roles.resumable is not None:  # it was told to start at the position
                roles.resumable.load_state_dict({**roles.resumable.next_state(), "start": 0})
            self._resume = None
            loaded = False
        self._next_epoch = epoch
        for sampler in (batching.sampler, getattr(batching.sampler, "sampler", None)):
            if loaded and sampler is roles.resumable:
                continue  # the state set its epoch
            set_sampler_epoch = getattr(sampler, "set_epoch", None)
            if callable(set_sampler_epoch):
                set_sampler_epoch(epoch)

    def skip_first_batches(self, num_batches: int) -> DataLoader[T_co]:
        """Position the loader after the first ``num_batches`` batches of its next epoch
        (the one ``iter()`` starts, after any :meth:`set_epoch`), and return it: what
        Accelerate's ``skip_first_batches`` does for a run resumed from a count of steps.

        A map-style epoch jumps there (fastload samplers) or replays the indices before it
        (others), counting ``batch_size`` samples a batch: exact unless a batch of those
        failed whole under ``on_error="skip"``. An ``IterableDataset``'s batches are read
        and dropped. A position that :meth:`load_state_dict` left at that same count is
        kept as is: a state is exact in every case.

        Raises:
            ValueError: ``num_batches`` is not a whole number >= 0, or a loaded state
                left the loader at another position of its next epoch.
        """
        num_batches = checked_count(num_batches, "DataLoader.skip_first_batches: num_batches")
        resume = self._resume
        if resume is not None and resume.started:
            if resume.batches != num_batches:
                raise ValueError(
                    f"DataLoader.skip_first_batches({num_batches}): a loaded state (or an earlier skip) already "
                    f"positions the loader after {resume.batches} batches of epoch {self._next_epoch}; skip exactly "
                    "those (or none)")
            return self
        if num_batches == 0:
            return self
        batching = batching_of(self)
        if batching.unit == "items":
            self._skip_batches = num_batches
            return self
        point = point_after_batches(batching, num_batches)
        roles = sampler_roles(batching)
        resumable = roles.resumable
        if roles.jumps and resumable is not None:
            try:
                resumable.load_state_dict({**resumable.next_state(), "start": point.prefix})
                point.jumped = True
            except ValueError:  # a RandomSampler drawing from torch's global RNG when the epoch begins: replayed
                pass
        point.base_seed = resume.base_seed if resume is not None else None
        self._resume = point
        return self

    def _start_epoch(self) -> tuple[Iterator[Any], list[BaseProcess] | None]:
        """The next epoch's batches, through every stage, and its worker processes (None
        in-process). The loader (its epoch, the resume point, errors, telemetry, the
        sampler and the generators) is left as it was if they cannot be started: trying
        again starts the same epoch."""
        before = self._next_epoch, self._resume, self._progress, self._error_log, self._telemetry, self.sample_root
        epoch, resume = self._next_epoch, self._resume
        batching = batching_of(self)
        roles = sampler_roles(batching)
        generator = getattr(roles.seeded, "generator", None)
        own_generator = self._own_generator(roles)
        loader_generator = self.generator if isinstance(self.generator, torch.Generator) else None
        before_draw = loader_generator.get_state() if loader_generator is not None else None
        streams = max(1, self.num_workers) if batching.unit == "items" else None
        progress = EpochProgress(epoch, resume, streams)
        # torch's order of draws (NOTE [ Seeds ]): the base seed now, the sampler's at its first index.
        if progress.base_seed is None:
            pool = self._pool if self.persistent_workers else None
            progress.base_seed = pool.base_seed if pool is not None else draw_seed(self.generator)
        if self.sample_root is None:
            self.sample_root = progress.base_seed
        if own_generator is not None:
            progress.loader_generator_state = own_generator.get_state()
        # The epoch's order starts here, whenever the samplers begin to draw it (NOTE [ Resume ]).
        sampler_before = None
        if roles.resumable is not None:
            progress.sampler_epoch = roles.resumable.next_epoch()
            sampler_before = {**roles.resumable.next_state(),
                              "start": resume.prefix if resume is not None and resume.jumped else 0}
        if isinstance(generator, torch.Generator):
            progress.generator_state = generator.get_state()
        self._next_epoch, self._resume, self._progress = epoch + 1, None, progress
        self._error_log = ErrorLog(self.on_error, self.max_errors, self._logged_failures)
        self._telemetry = EpochTelemetry(epoch) if self.telemetry else None
        try:
            loader_iterator = self._make_iterator(progress.base_seed, sample_seed(self.sample_root, epoch), batching,
                                                  resume)
            workers = loader_iterator.workers if isinstance(loader_iterator, PoolIterator) else None
            batches: Iterator[Any] = loader_iterator
            if self.batch_transform is not None:
                batches = MappedIterator(batches, self.batch_transform)
            return transfer_stage(batches, pin_memory=self.pin_memory, device=self.device, depth=self.device_prefetch,
                                  warn_once=self._warn_once, progress=progress, telemetry=self._telemetry), workers
        except BaseException:
            self._next_epoch, self._resume, self._progress, self._error_log, self._telemetry, self.sample_root = before
            if progress.generator_state is not None and isinstance(generator, torch.Generator):
                generator.set_state(progress.generator_state)
            if sampler_before is not None and roles.resumable is not None \
                    and roles.resumable.begun(progress.sampler_epoch):
                roles.resumable.load_state_dict(sampler_before)
            if before_draw is not None and loader_generator is not None:  # last: it may be the sampler's too
                loader_generator.set_state(before_draw)
            raise

    def _draws_once(self) -> bool:
        """Whether the base seed is drawn once (persistent workers) or every epoch (torch's rule)."""
        return bool(self.persistent_workers and self.num_workers > 0)

    def _own_generator(self, roles: SamplerRoles) -> torch.Generator | None:
        """The loader's ``generator`` when its state is the loader's to keep: not None, and
        not the sampler's (whose state the sampler, or the loader for it, keeps)."""
        generator = self.generator
        if not isinstance(generator, torch.Generator):
            return None
        shared = (getattr(roles.resumable, "generator", None), getattr(roles.seeded, "generator", None))
        return None if any(generator is other for other in shared) else generator

    def _make_iterator(self, base_seed: int, sample_seed: int, batching: Batching,
                       resume: ResumePoint | None) -> LoaderIterator:
        tasks: Callable[[], Iterator[tuple[Any, Any]]]
        length: Callable[[], int]
        if batching.unit == "items":
            size = self.batch_size if self.batch_size is not None and self._auto_collation else 1
            tasks = functools.partial(_stream_tasks, self._index_sampler, size)
            length = functools.partial(len, self._index_sampler)
        else:
            tasks = functools.partial(epoch_tasks, batching, resume)
            length = functools.partial(remaining_batches, batching, resume, self._index_sampler)
        assert self._progress is not None  # the epoch _start_epoch began
        setup = EpochSetup(
            dataset=self.dataset, iterable=self._is_iterable, index_sampler=self._index_sampler,
            num_workers=self.num_workers, collate_fn=self.collate_fn, auto_collation=self._auto_collation,
            drop_last=self.drop_last, seed_per_sample=self.seed_per_sample, on_error=self.on_error,
            timeout=self.timeout, in_order=self.in_order, prefetch_factor=self.prefetch_factor,
            len_reported=iterable_len_reported(self), errors=self._error_log, telemetry=self._telemetry,
            progress=self._progress, warn_once=self._warn_once)
        if self.num_workers == 0:
            return InProcessIterator(setup, sample_seed, tasks, resume, length)
        self.check_worker_number_rationality()
        return PoolIterator(setup, base_seed, sample_seed, tasks, resume, length, self._lease_pool)

    def state_dict(self) -> dict[str, Any]:
        """Where the loader is: a small JSON-serialisable dict (NOTE [ Resume ]).

        ``"epoch"``: the epoch in progress (the next one once an epoch has been iterated to
        its end); ``"batches"``: the batches of it handed out; ``"settled"``: the positions
        of the epoch those (and any batches that failed whole) covered; ``"base_seed"``:
        the workers' base seed of that epoch when it is drawn already, and
        ``"sample_root"`` the root of the sample seeds (NOTE [ Seeds ]); ``"draws_once"``:
        whether the base seed is drawn once (persistent workers) or every epoch;
        ``"generator"``: the state of the loader's own ``generator``, and
        ``"sampler_generator"`` that of a torch sampler's generator, where they have one;
        ``"sampler"``: the sampler's own state when it is a fastload sampler (else
        ``None``); ``"order"``: what a resumed loader must share; ``"rank"``: the rank of
        the distributed sampler, if one orders the epoch (not part of ``"order"``: a rank
        resumes from another's in-order state, as Lightning's checkpoints need, and refuses
        another's out-of-order positions). Take it between batches, from the training loop.
        """
        batching = batching_of(self)
        roles = sampler_roles(batching)
        progress = self._progress
        generator = getattr(roles.seeded, "generator", None)
        generator_state = generator.get_state() if isinstance(generator, torch.Generator) else None
        own_generator = self._own_generator(roles)
        own_state = own_generator.get_state() if own_generator is not None else None
        persistent_seed = self._pool.base_seed if self.persistent_workers and self._pool is not None else None
        if progress is None:  # nothing iterated since construction or load_state_dict
            epoch, point = self._next_epoch, self._resume or ResumePoint()
            base_seed = point.base_seed if point.base_seed is not None else persistent_seed
        elif progress.finished:
            epoch, point, base_seed = progress.epoch + 1, ResumePoint(), persistent_seed
        else:
            epoch, base_seed = progress.epoch, progress.base_seed
            point = ResumePoint(progress.settled.prefix, progress.settled.beyond_prefix(),
                                stream_items=progress.stream_items, next_stream=progress.next_stream,
                                batches=progress.batches)
            generator_state = progress.generator_state
            own_state = progress.loader_generator_state
        if batching.unit == "items":
            streams = max(1, self.num_workers)
            settled: dict[str, Any] = {"stream_items": list(point.stream_items or [0] * streams),
                                       "next_stream": point.next_stream}
        else:
            settled = {"prefix": point.prefix, "beyond": [list(r) for r in point.beyond]}
        sampler_state = None
        if roles.resumable is not None:
            begun = progress is not None and not progress.finished and roles.resumable.begun(progress.sampler_epoch)
            sampler_state = roles.resumable.state_dict() if begun else roles.resumable.next_state()
            del sampler_state["start"]  # the loader's own positions say where to start
        return {"format": STATE_FORMAT, "epoch": epoch, "batches": point.batches, "settled": settled,
                "base_seed": base_seed, "sample_root": self.sample_root, "draws_once": self._draws_once(),
                "drawn": bool(progress is not None and not progress.finished and progress.drawn),
                "generator": encode_generator_state(own_state),
                "sampler": sampler_state, "sampler_generator": encode_generator_state(generator_state),
                "order": order_description(self, batching), "rank": _rank_of(batching)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next ``iter(loader)`` delivers exactly the
        samples of that epoch not yet delivered (NOTE [ Resume ]), with that epoch's seeds,
        then the next epochs as an uninterrupted loader would.

        ``batch_size`` and ``num_workers`` may differ from the loader that took the state
        (an ``IterableDataset`` needs the same ``num_workers``). fastload samplers jump
        straight to the position. Other samplers are replayed (their indices only, cheap),
        a torch sampler's generator from the state it had when the epoch began, and an
        ``IterableDataset``'s worker streams re-read and discard the items they had given;
        both say so once. The loader's own ``generator`` gets back the state it had after
        the epoch's draw. Nothing changes unless the whole state loads.

        Raises:
            TypeError: ``state`` is not a mapping.
            KeyError: a key of the state is missing.
            ValueError: not a fastload DataLoader state (torchdata's ``StatefulDataLoader``'s
                is named as such), a malformed one (each field is
                checked), or one this loader cannot resume exactly (another dataset length,
                sampler, batching or number of worker streams; a torch sampler drawing from
                the global RNG, mid-epoch; a generator state where this loader has none),
                named in the message.
        """
        where = "DataLoader.load_state_dict"
        if not isinstance(state, Mapping):
            raise TypeError(f"{where}: state must be a mapping (what state_dict() returns), got {type(state).__name__}")
        foreign = TORCHDATA_STATE_KEYS & set(state)
        if foreign and "format" not in state:
            raise ValueError(
                f"{where}: this is the state of torchdata's StatefulDataLoader (it has {sorted(foreign)}), not of "
                "fastload.DataLoader. They record different things (torchdata: its iterator's counters and each "
                "worker's snapshot; fastload: the positions of the epoch delivered, its seeds and its sampler's "
                "state), and neither loads the other's: resume a fastload.DataLoader from a state it took itself.")
        missing = {"format", "epoch", "batches", "settled", "base_seed", "sample_root", "draws_once", "drawn",
                   "generator", "sampler", "sampler_generator", "order"} - set(state)
        if missing:
            raise KeyError(f"{where}: state lacks {sorted(missing)} (a state from fastload.DataLoader.state_dict() "
                           "has them all)")
        if state["format"] != STATE_FORMAT:
            raise ValueError(f"{where}: state format {state['format']!r} is not {STATE_FORMAT!r}, the only one this "
                             "version reads")
        batching = batching_of(self)
        roles = sampler_roles(batching)
        if not isinstance(state["order"], Mapping):
            raise ValueError(f"{where}: order must be a mapping, got {state['order']!r}")
        check_same_order(state["order"], order_description(self, batching))
        epoch = checked_count(state["epoch"], f"{where}: epoch")
        base_seed, sample_root = (None if state[key] is None else checked_seed(state[key], f"{where}: {key}")
                                  for key in ("base_seed", "sample_root"))
        for key in ("draws_once", "drawn"):
            if not isinstance(state[key], bool):
                raise ValueError(f"{where}: {key} must be a bool, got {state[key]!r}")
        sampler_state = state["sampler"]
        bound = len(batching.sampler) if isinstance(batching.sampler, Sized) else None
        if roles.resumable is not None:
            if not isinstance(sampler_state, Mapping) or "config" not in sampler_state:
                raise ValueError(f"{where}: sampler must be the state of this loader's "
                                 f"{type(roles.resumable).__name__} (with its config), got {sampler_state!r}")
            if roles.jumps:
                bound = roles.resumable.epoch_length(checked_count(sampler_state.get("epoch"), f"{where}: "
                                                                   "sampler.epoch"))
        point = settled_from_state(state, batching, bound, max(1, self.num_workers))
        if point.beyond:
            taken_by, here = state.get("rank"), _rank_of(batching)
            if taken_by != here:
                raise ValueError(f"{where}: the state holds positions delivered out of order by rank {taken_by}, which "
                                 f"say nothing of what rank {here} delivered: resume each rank from its own state")
        generator = getattr(roles.seeded, "generator", None)
        generator_state = None
        if roles.seeded is not None and (point.prefix or point.beyond):
            if not isinstance(generator, torch.Generator):
                raise ValueError(
                    f"{where}: {type(roles.seeded).__name__} has no generator of its own, so its order came from "
                    "torch's global random generator and cannot be drawn again: this state cannot resume it "
                    "mid-epoch. Give the sampler generator=torch.Generator(), or use shuffle=True or "
                    "fastload.RandomSampler, which resume exactly.")
            if state["sampler_generator"] is None:
                raise ValueError(f"{where}: the state holds no generator state for this loader's "
                                 f"{type(roles.seeded).__name__}")
        # Drawn from the global RNG before the state was taken, the order cannot be drawn again.
        redrawn = roles.seeded is not None and not isinstance(generator, torch.Generator) and state["drawn"]
        if isinstance(generator, torch.Generator) and state["sampler_generator"] is not None:
            generator_state = decode_generator_state(state["sampler_generator"], generator,
                                                     f"{where}: sampler_generator")
        own_generator = self._own_generator(roles)
        own_state = None
        if state["generator"] is not None:
            if own_generator is None:
                raise ValueError(f"{where}: the state holds the state of the loader's own generator, and this "
                                 "loader has none (or shares it with its sampler): build it with "
                                 "generator=torch.Generator(), as the loader that took the state was")
            own_state = decode_generator_state(state["generator"], own_generator, f"{where}: generator")
        # Everything is checked: now change things (the sampler checks its own state first).
        if roles.resumable is not None:
            roles.resumable.load_state_dict({**sampler_state, "start": point.prefix if roles.jumps else 0})
            point.jumped = roles.jumps
        if generator_state is not None and isinstance(generator, torch.Generator):
            generator.set_state(generator_state)
        if own_state is not None and own_generator is not None:
            own_generator.set_state(own_state)
        point.base_seed = base_seed
        point.from_state = True
        self._next_epoch, self._progress, self._resume, self.sample_root = epoch, None, point, sample_root
        self._skip_batches = 0
        if self._pool is not None and base_seed is not None and base_seed != self._pool.base_seed:
            # Persistent workers seeded otherwise: the next iter() starts them with the state's seeds.
            pool, self._pool = self._pool, None
            pool.shutdown()
        if redrawn:
            self._warn_once(
                f"fastload: the state was taken after {type(roles.seeded).__name__} had drawn its epoch's order from "
                "torch's global random generator, which cannot be drawn again: the resumed epoch delivers every "
                "sample once, in a new order. Give the sampler generator=torch.Generator() for the same order.")
        if state["draws_once"] != self._draws_once():
            taken, this = ("with", "has none") if state["draws_once"] else ("without", "has them")
            self._warn_once(
                f"fastload: the state was taken from a loader {taken} persistent workers and this one {this}: the "
                "epoch in progress resumes exactly, but later epochs draw their base seed as this loader does "
                "(torch's rule: once with persistent workers, every epoch without), so where the sampler draws "
                "from the loader's generator their order is not the original run's.")
        if point.stream_items is not None and any(point.stream_items):
            self._warn_once(f"fastload: resuming an IterableDataset re-reads and discards the "
                            f"{sum(point.stream_items)} items its worker streams had given.")
        elif point.prefix and not point.jumped:
            replayed = batching.sampler
            inner = getattr(replayed, "sampler", None)
            order = inner if inner is not None and batching.unit == "tasks" else replayed
            if generator_state is not None:
                exact = (f"exact: {type(roles.seeded).__name__} draws again from its generator's state at the "
                         "epoch's start")
            elif roles.resumable is not None:
                exact = f"exact: its {type(roles.resumable).__name__} is set to the epoch"
            elif isinstance(order, torch.utils.data.DistributedSampler):
                exact = f"exact: {type(order).__name__}'s order comes from its seed and epoch"
            else:
                exact = f"exact only if {type(order).__name__} repeats its order"
            name = type(replayed).__name__ + (f" (over {type(inner).__name__})" if order is inner else "")
            unit = "batches" if batching.unit == "tasks" and self._auto_collation else "items"
            self._warn_once(f"fastload: {name} cannot jump to a position; replaying its first {point.prefix} "
                            f"{unit} to resume ({exact}).")

    def _lease_pool(self, base_seed: int, sample_seed: int, skip_items: list[int] | None) -> PoolLease:
        if not self.persistent_workers:
            return PoolLease(self._make_pool(base_seed, sample_seed, skip_items), owned=True, fresh=True,
                             on_failure=_nothing)
        # Persistent workers keep the seeds of the epoch that started them, as torch's do.
        fresh = self._pool is None
        if self._pool is None:
            self._pool = self._make_pool(base_seed, sample_seed, skip_items)
        return PoolLease(self._pool, owned=False, fresh=fresh, on_failure=self._drop_pool)

    def _make_pool(self, base_seed: int, sample_seed: int, skip_items: list[int] | None) -> WorkerPool:
        large = _large_python_container(self.dataset)
        if large is not None:
            name, container = large
            self._warn_once(
                f"fastload: dataset.{name} is a Python {type(container).__name__} of {len(container):,} items. With "
                f"{self.num_workers} workers, reading its items touches their reference counts, so each worker copies "
                "the memory pages they live on (copy-on-read) and memory grows by up to that much per worker over "
                "an epoch. Keep such data in flat containers: numpy arrays (strings as one byte buffer plus "
                "offsets), or fastload.text.TokenSequences for token lists."
            )
        config = PoolConfig(
            dataset=self.dataset,
            num_workers=self.num_workers,
            iterable=self._is_iterable,
            auto_collation=self._auto_collation,
            drop_last=self.drop_last,
            collate_fn=self.collate_fn,
            collate_in_slot=self._auto_collation and is_default_collate(self.collate_fn),
            worker_init_fn=self.worker_init_fn,
            seed_per_sample=self.seed_per_sample,
            on_error=self.on_error,
            telemetry=self.telemetry,
            min_slot_bytes=self.min_slot_bytes,
            max_free_slots=(self.prefetch_factor or 2) + 2,  # torch sets it (2) when there are workers
        )
        context = self.multiprocessing_context or multiprocessing.get_context()
        return WorkerPool(config, context, base_seed, sample_seed, self.max_worker_restarts, skip_items)

    def _drop_pool(self) -> None:
        self._pool = None

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, stacklevel=3)


def _nothing() -> None:
    pass


def _rank_of(batching: Batching) -> int | None:
    """The rank of the distributed sampler that orders the epoch (or sits inside the batch sampler that does)."""
    return next((rank for sampler in (batching.sampler, getattr(batching.sampler, "sampler", None))
                 if (rank := rank_of(sampler)) is not None), None)


#: torch's DataLoader arguments that a loader keeps as attributes of the same name
_KEPT_ARGUMENTS = ("dataset", "num_workers", "pin_memory", "timeout", "worker_init_fn", "multiprocessing_context",
                   "generator", "prefetch_factor", "persistent_workers", "pin_memory_device", "in_order")

#: fastload's own options, kept likewise
FASTLOAD_OPTIONS = ("seed_per_sample", "device", "device_prefetch", "batch_transform", "min_slot_bytes", "on_error",
                    "max_errors", "max_worker_restarts", "telemetry", "sample_root")

_BATCHING_ARGUMENTS = ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last")


def constructor_arguments(loader: torch.utils.data.DataLoader[Any], **changes: Any) -> dict[str, Any]:
    """The arguments that build a loader like ``loader`` (torch's or fastload's), with
    ``changes`` applied: how integrations re-create a loader with another sampler, or a
    torch loader as a fastload one. Batching is given as the loader batches: its
    ``batch_sampler`` if it has one of its own, else ``batch_size``, ``drop_last`` and its
    ``sampler`` (the sampler ``shuffle`` made, for example); a change to one of those
    replaces them all, as torch's rules for them require. The ``collate_fn`` torch picks
    for the loader's batching is left to the new loader to pick."""
    arguments = {name: getattr(loader, name) for name in _KEPT_ARGUMENTS}
    arguments.update({name: getattr(loader, name) for name in FASTLOAD_OPTIONS if hasattr(loader, name)})
    collate_fn = loader.collate_fn
    batching = loader.batch_sampler is not None  # torch's _auto_collation
    if not (is_default_collate(collate_fn) if batching else collate_fn in (torch.utils.data.default_convert,
                                                                           default_convert)):
        arguments["collate_fn"] = collate_fn
    if arguments["num_workers"] == 0:
        arguments["prefetch_factor"] = None  # torch fills in its default of 2 only for workers
    if isinstance(loader.dataset, IterableDataset):
        arguments.update(batch_size=loader.batch_size, drop_last=loader.drop_last)
    elif loader.batch_size is not None:  # torch's BatchSampler, made by the loader
        arguments.update(batch_size=loader.batch_size, drop_last=loader.drop_last, sampler=loader.sampler)
    elif loader.batch_sampler is not None:  # the user's
        arguments.update(batch_sampler=loader.batch_sampler)
    else:  # batch_size=None: no batching
        arguments.update(batch_size=None, sampler=loader.sampler)
    if any(name in changes for name in _BATCHING_ARGUMENTS):
        own_batch_sampler = loader.batch_size is None and loader.batch_sampler is not None
        for name in _BATCHING_ARGUMENTS:
            arguments.pop(name, None)
        if changes.get("batch_sampler") is None and "batch_size" not in changes and not own_batch_sampler:
            arguments.update(batch_size=loader.batch_size, drop_last=loader.drop_last)
    arguments.update(changes)
    return arguments


def _stream_tasks(placeholders: Iterable[Any], size: int) -> Iterator[tuple[Any, int]]:
    """An iterable dataset's tasks: each draws ``size`` items from its worker's stream."""
    return ((task, size) for task in placeholders)


#: A list/dict/tuple/set attribute of the dataset with this many items is worth a warning.
LARGE_CONTAINER = 100_000


def _large_python_container(dataset: Any) -> tuple[str, Any] | None:
    """The first attribute of ``dataset`` holding a large Python container, if any."""
    for name, value in vars(dataset).items() if hasattr(dataset, "__dict__") else ():
        if isinstance(value, (list, dict, tuple, set)) and len(value) >= LARGE_CONTAINER:
            return name, value
    return None

