"""Fetching samples from a dataset: the one piece shared by the in-process path and workers.

NOTE [ Per-sample seeding ]

With ``seed_per_sample=True`` every call ``dataset[i]`` runs with ``random``, ``numpy``
and ``torch`` seeded from ``(sample_seed, i)``. ``sample_seed`` is the loader's seed for
the epoch's samples (NOTE [ Seeds ] in ``seeding.py``), so the augmentation of sample
``i`` depends on the seed, the epoch and ``i`` only, never on which worker fetched it or
how many workers there are, and a resumed epoch augments exactly as the original.

A dataset that fetches a batch at once (``__getitems__``: torch's ``Subset``, HF
``datasets``) is called once per batch, seeded from ``(sample_seed, the batch's
indices)``: its augmentations are the same for any number of workers, and after a resume
where the batches are the same (same ``batch_size``, in order).

Seeding is cheap (about 10 µs: torch's CPU generator directly, not ``torch.manual_seed``,
which walks every device backend). In the main process (``num_workers=0``) the global RNG
states are saved before each task and restored after it, so that the training loop's own
randomness is not disturbed.
"""

from __future__ import annotations

import contextlib
import inspect
import random
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .sample_errors import MAX_REPLACEMENTS, OnError, SampleFailure, describe, malformed, structure
from .seeding import mix_seed


def seed_sample_rngs(seed: int) -> None:
    """Seed ``random``, ``numpy`` and torch's CPU generator (and CUDA's, once CUDA is
    initialized in this process) for one sample. Not ``torch.manual_seed``: it walks every
    device backend, about 100 µs a call in a CUDA build, where this takes about 10 µs."""
    random.seed(seed)
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)
    np.random.seed(seed & 0xFFFFFFFF)


class StreamExhausted(Exception):
    """Internal: an iterable dataset has no (complete) batch left for this task."""


class SkippedTask(Exception):
    """Internal: under ``on_error="skip"`` every sample of this task failed."""


class _Failed(Exception):
    """Internal: a sample failed and the policy left it out."""


class SampleFetcher:
    """Turns one task (a batch of indices, one index, or a batch-sized count for an
    iterable dataset) into the list of samples, or the single sample, it names.

    Mirrors torch's ``_MapDatasetFetcher``/``_IterableDatasetFetcher`` semantics,
    including ``__getitems__`` and ``drop_last`` for iterable datasets. Under
    ``on_error="raise"`` exceptions of the dataset propagate unchanged; ``current_index``
    then names the index (or, for ``__getitems__``, the indices) being fetched, ``None``
    for an iterable dataset. The other policies (NOTE [ Sample errors ] in
    ``sample_errors.py``) leave out or replace failed samples and collect
    :class:`SampleFailure` records, taken with :meth:`take_failures`. ``stream`` names
    where an iterable dataset's stream is read (``"worker 1"``), for those records.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        iterable: bool,
        auto_collation: bool,
        drop_last: bool,
        seed_per_sample: bool,
        restore_rng: bool,
        on_error: OnError = "raise",
        stream: str = "the main process",
    ) -> None:
        self.dataset = dataset
        self.on_error = on_error
        self.stream = stream
        self.failures: list[SampleFailure] = []
        #: the index each sample of the last map-style batch came from (replacements included)
        self.indices: list[Any] = []
        self.iterable = iterable
        self.auto_collation = auto_collation
        self.drop_last = drop_last
        self.seed_per_sample = seed_per_sample
        self.restore_rng = restore_rng
        self.sample_seed = 0
        self.current_index: Any = None
        self._iterator: Iterator[Any] | None = None
        self._ended = False
        self._drawn = 0  # items drawn from the iterable's stream this epoch
        self._last_failed = False  # the last item drawn raised

    def start_epoch(self, sample_seed: int, skip_items: int = 0) -> None:
        """Start an epoch with per-sample seeds from ``sample_seed``; an iterable dataset's
        stream is created anew and its first ``skip_items`` items drawn and dropped (a
        resume: those were delivered, or reported failed, before; NOTE [ Resume ])."""
        self.sample_seed = sample_seed
        if self.iterable:
            self._iterator = iter(self.dataset)
            self._ended = False
            self._drawn = 0
            self._last_failed = False
            for _ in range(skip_items):
                try:
                    self._draw()
                except StopIteration:
                    break
                except _Failed:
                    if self._ended:
                        break
            self.failures.clear()  # reported by the epoch that first drew them

    def take_failures(self) -> list[SampleFailure]:
        failures, self.failures = self.failures, []
        return failures

    def fetch(self, task: Any) -> Any:
        if self.iterable:
            return self._fetch_iterable(task)
        with self._kept_global_rngs():
            return self._fetch_map(task)

    def _kept_global_rngs(self) -> Any:
        """In the main process, per-sample seeding leaves the global RNGs as it found them
        (saved and restored once per task: saving numpy's state alone costs ~70 µs)."""
        return _preserved_global_rngs() if self.seed_per_sample and self.restore_rng else contextlib.nullcontext()

    def _fetch_map(self, task: Any) -> Any:
        if not self.auto_collation:
            try:
                return self._get_handled(task)[1]
            except _Failed:
                raise SkippedTask from None
        getitems = getattr(self.dataset, "__getitems__", None)
        if getitems:
            self.current_index = list(task)
            try:
                if self.seed_per_sample:  # one call for the batch: seeded once, from its indices
                    seed_sample_rngs(mix_seed(self.sample_seed, "batch", tuple(task)))
                samples = getitems(task)
                self.indices = task
                return samples
            except Exception:
                if self.on_error == "raise":
                    raise
                # Find the failing samples one at a time below.
        if self.on_error == "raise":  # the common case, kept as lean as torch's fetcher
            self.indices = task
            return [self._get(i) for i in task]
        pairs = []
        for index in task:
            try:
                pairs.append(self._get_handled(index))
            except _Failed:
                pass
        if not pairs:
            raise SkippedTask
        self.indices = [index for index, _ in pairs]
        return [sample for _, sample in pairs]

    def collate(self, samples: list[Any], collate_fn: Any) -> Any:
        """``collate_fn(samples)``; under skip/replace, a batch that cannot be collated
        loses (or replaces) its malformed samples and is collated once more."""
        try:
            return collate_fn(samples)
        except Exception as exc:
            if self.iterable or not self.auto_collation or len(samples) < 2:
                raise
            bad = malformed(samples)
            if not bad:
                raise
            wanted = structure(samples[next(p for p in range(len(samples)) if p not in bad)])
            if self.on_error == "raise":
                exc.add_note(f"(fastload: sample indices {[self.indices[p] for p in bad]} differ in structure from "
                             f"the rest of the batch: {structure(samples[bad[0]])} where the others have {wanted})")
                raise
        kept, indices = [], []
        for position, (index, sample) in enumerate(zip(self.indices, samples)):
            if position not in bad:
                kept.append(sample)
                indices.append(index)
                continue
            self.failures.append(SampleFailure(index, f"malformed: its structure {structure(sample)} differs from "
                                                      f"the batch's {wanted}"))
            if self.on_error == "replace":
                with self._kept_global_rngs():
                    index, sample = self._replace(index, wanted)
                kept.append(sample)
                indices.append(index)
        self.indices = indices
        return collate_fn(kept)

    def _get_handled(self, index: Any) -> tuple[Any, Any]:
        """(index used, sample) for ``index`` under the policy; raises ``_Failed`` to skip."""
        try:
            return index, self._get(index)
        except Exception as exc:
            if self.on_error == "raise":
                raise
            self.failures.append(SampleFailure(index, describe(exc)))
            if self.on_error == "skip":
                raise _Failed from None
        return self._replace(index, None)

    def _replace(self, index: Any, wanted: Any) -> tuple[Any, Any]:
        """A replacement for the failed sample ``index``: the first of its candidates
        (a pure function of the epoch seed, the index and the attempt) that loads, and
        has structure ``wanted`` when one is given."""
        for attempt in range(MAX_REPLACEMENTS):
            candidate = mix_seed(self.sample_seed, "replace", index, attempt) % len(self.dataset)
            try:
                sample = self._get(candidate)
            except Exception as exc:
                self.failures.append(SampleFailure(candidate, describe(exc)))
                continue
            if wanted is None or structure(sample) == wanted:
                return candidate, sample
        raise RuntimeError(f"on_error='replace': sample {index!r} failed and so did its {MAX_REPLACEMENTS} "
                           f"replacements; the last failures: {self.failures[-3:]}")

    def _get(self, index: Any) -> Any:
        self.current_index = index
        if self.seed_per_sample:
            seed_sample_rngs(mix_seed(self.sample_seed, index))
        return self.dataset[index]

    def _fetch_iterable(self, task: Any) -> Any:
        self.current_index = None
        if self._iterator is None:
            raise RuntimeError("SampleFetcher.start_epoch() must be called before fetch()")
        if self._ended:
            raise StreamExhausted
        if not self.auto_collation:
            try:
                return self._draw()
            except StopIteration:
                raise StreamExhausted from None
            except _Failed:
                raise SkippedTask from None
        samples = []
        for _ in task:
            try:
                samples.append(self._draw())
            except StopIteration:
                break
            except _Failed:
                if self._ended:
                    break
        if self._ended and (not samples or self.drop_last and len(samples) < len(task)):
            raise StreamExhausted
        if not samples:  # every item failed, and the stream goes on
            raise SkippedTask
        return samples

    def _draw(self) -> Any:
        """The stream's next item. Raises ``StopIteration`` at its end, and ``_Failed``
        (under skip) for an item that raised, recording what happened: an item left out,
        or the end of the stream, since a generator cannot go on once it raised."""
        assert self._iterator is not None
        self._drawn += 1
        try:
            item = next(self._iterator)
        except StopIteration:
            self._ended = True
            if self._last_failed:
                # Likely an iterator over a generator that raised: what would have followed is lost.
                self.failures.append(SampleFailure(None, "the stream ended right after this item failed (an "
                                                         "iterator over a generator that raised?)",
                                                   self.stream, self._drawn - 1, ended_stream=True))
            raise
        except Exception as exc:
            if self.on_error == "raise":
                raise
            self._last_failed = True
            self._ended = isinstance(self._iterator, types.GeneratorType) and \
                inspect.getgeneratorstate(self._iterator) == inspect.GEN_CLOSED
            self.failures.append(SampleFailure(None, describe(exc), self.stream, self._drawn,
                                               ended_stream=self._ended))
            raise _Failed from None
        self._last_failed = False
        return item


class _preserved_global_rngs:
    """The global RNGs :func:`seed_sample_rngs` seeds, saved and given back (CUDA's too,
    where it is initialized: seeding a sample seeds it then)."""

    def __enter__(self) -> None:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self._states = (random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)

    def __exit__(self, *exc: object) -> None:
        py_state, np_state, torch_state, cuda_states = self._states
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)

