"""What happens to a sample that cannot be loaded: the ``on_error`` policy.

NOTE [ Sample errors ]

``on_error="raise"`` (the default, torch's behaviour): the sample's exception ends the
epoch, re-raised in the main process with the worker's traceback and the sample index.

``on_error="skip"``: the sample is left out of its batch (a batch whose samples all fail
is left out of the epoch), and the failure is recorded.

``on_error="replace"``: the sample is replaced by another one, chosen as a pure function
of ``(epoch seed, index, attempt)``, so batch sizes and the number of batches stay as
they were and every rank of a distributed job replaces alike (DDP needs the same number
of steps everywhere). A replacement that fails too is recorded and replaced in turn, up
to ``MAX_REPLACEMENTS`` times.

A sample fails when ``dataset[i]`` raises, or when it is *malformed*: its batch cannot be
collated and its structure (types, keys, tensor shapes and dtypes) differs from that of
most samples in the batch. Failures are recorded as :class:`SampleFailure` (index and
error text) in ``loader.errors`` for the current epoch, logged once per index on the
``fastload`` logger, and beyond ``max_errors`` in an epoch they end it with
:class:`TooManySampleErrors`.

An ``IterableDataset`` has no indices: its failures name the item of a worker's stream
instead. A stream may end with the error: a generator cannot go on once it raised, so
the rest of that worker's stream is lost. That is recorded as such (``ended_stream``)
and logged as what it is, not as one sample left out, when the stream itself ends: it
is the generator, or an iterator that ends right after the error. A stream that chains
several generators (``itertools.chain``) goes on with the next one, so what the raising
one had left cannot be told from the outside; catch errors inside the generators to go
on past them.
"""

from __future__ import annotations

import collections
import logging
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch

#: what a sample that fails to load does (``DataLoader(on_error=...)``)
OnError = Literal["raise", "skip", "replace"]
POLICIES: tuple[OnError, ...] = get_args(OnError)
#: replacements tried for one failed sample before the failure is raised
MAX_REPLACEMENTS = 16

logger = logging.getLogger("fastload")


@dataclass(frozen=True)
class SampleFailure:
    """One sample that could not be used: its index and what went wrong.

    For an ``IterableDataset`` (``index`` is None): ``stream`` names the worker whose
    stream it was (``"worker 1"``, or ``"the main process"``), ``item`` its 1-based
    position there, and ``ended_stream`` says that the stream ended with it, so that
    its remaining items were lost."""

    index: Any
    error: str
    stream: str | None = None
    item: int | None = None
    ended_stream: bool = False

    def describe(self, policy: str) -> str:
        """What happened, in words, under ``on_error=policy``."""
        if self.stream is None:
            return f"sample {self.index!r} failed and was {'left out' if policy == 'skip' else 'replaced'}"
        if self.ended_stream:
            return (f"the stream of {self.stream} ended at its item {self.item} after an error, so the rest of "
                    "that stream is lost (a generator cannot go on once it raised: catch errors inside it to go on)")
        return f"item {self.item} of the stream of {self.stream} failed and was left out"


class TooManySampleErrors(RuntimeError):
    """More samples failed in one epoch than ``max_errors`` allows."""


def describe(exc: BaseException) -> str:
    """One line: the exception's type and message, and where in the dataset it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def structure(sample: Any) -> Any:
    """A hashable summary of a sample's structure: what collation needs to agree."""
    if isinstance(sample, torch.Tensor):
        return ("tensor", sample.dtype, tuple(sample.shape))
    if isinstance(sample, np.ndarray):
        return ("ndarray", sample.dtype.str, sample.shape)
    if isinstance(sample, Mapping):
        return (type(sample), tuple((k, structure(v)) for k, v in sorted(sample.items(), key=lambda kv: repr(kv[0]))))
    if isinstance(sample, Sequence) and not isinstance(sample, (str, bytes)):
        return (type(sample), tuple(structure(v) for v in sample))
    return type(sample)


def malformed(samples: Sequence[Any]) -> list[int]:
    """Positions of the samples whose structure differs from the most common one (the
    first sample's on a tie)."""
    shapes = [structure(s) for s in samples]
    counts = collections.Counter(shapes)
    best = max(counts.values())
    majority = next(s for s in shapes if counts[s] == best)
    return [i for i, s in enumerate(shapes) if s != majority]


class ErrorLog:
    """The failures of one epoch, as the main process sees them."""

    def __init__(self, policy: str, max_errors: int | None, logged: set[Any]) -> None:
        self.policy = policy
        self.max_errors = max_errors
        self.failures: list[SampleFailure] = []
        self._logged = logged  # indices logged so far, over the loader's life

    def record(self, failures: Sequence[SampleFailure]) -> None:
        for failure in failures:
            self.failures.append(failure)
            key = failure.index if failure.stream is None else (failure.stream, failure.item, failure.ended_stream)
            if key not in self._logged:
                self._logged.add(key)
                logger.warning("fastload: %s (on_error=%r): %s", failure.describe(self.policy), self.policy,
                               failure.error)
        if self.max_errors is not None and len(self.failures) > self.max_errors:
            shown = "; ".join(f"{f.describe(self.policy)}: {f.error}" for f in self.failures[:3])
            raise TooManySampleErrors(
                f"{len(self.failures)} samples failed in this epoch, more than max_errors={self.max_errors}. "
                f"First ones: {shown}"
            )
