"""The messages between the main process and a worker (pickled, one per socket write).

main → worker: :class:`Task`, :class:`StartEpoch`, :class:`Stop`. Each of the first two
carries the ids of slots the main process has released since its last message to that
worker (see NOTE [ Slot protocol ] in ``arena.py``).

worker → main: exactly one :class:`Answer` (:class:`Batch`, :class:`Skipped`,
:class:`Error` or :class:`EndOfData`) per task, in task order per worker. A :class:`Batch` whose ``new_slot_capacity`` is set is
followed on the socket by the slot's file descriptor (SCM_RIGHTS). An :class:`Error`
with ``task_id=None`` means the worker could not start (or restart) its epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..sample_errors import SampleFailure
from ..torch_private import ExceptionWrapper
from .batch_codec import LayoutEntry


@dataclass
class Task:
    task_id: int
    #: a batch of indices, one index, or for an iterable dataset a batch-sized placeholder
    indices: Any
    released: list[int] = field(default_factory=list)


@dataclass
class StartEpoch:
    """Re-create the iterable dataset's iterator and use the epoch's sample seed."""

    #: the epoch's seed for per-sample seeding and replacements (NOTE [ Per-sample seeding ])
    sample_seed: int
    released: list[int] = field(default_factory=list)
    #: items of the iterable dataset's stream to skip first (a resume: NOTE [ Resume ])
    skip_items: int = 0


@dataclass
class Stop:
    pass


@dataclass
class Answer:
    """Base of the worker's answers: each says which slots the worker has retired."""

    task_id: int | None
    retired: list[int]


@dataclass
class Batch(Answer):
    slot_id: int | None
    new_slot_capacity: int | None
    nbytes: int
    layout: list[LayoutEntry]
    skeleton: bytes
    #: samples left out or replaced under on_error="skip"/"replace"
    failures: list[SampleFailure] = field(default_factory=list)
    #: with telemetry: (fetch start, fetch end, collate end, samples, reported stages or None):
    #: NOTE [ Telemetry ] in telemetry.py
    telemetry: tuple[float, float, float, int, dict[str, float] | None] | None = None


@dataclass
class Skipped(Answer):
    """Under on_error="skip", every sample of the task failed: no batch."""

    failures: list[SampleFailure]


@dataclass
class Error(Answer):
    #: the exception with the worker's traceback; its text names the sample index
    error: ExceptionWrapper


@dataclass
class EndOfData(Answer):
    """The iterable dataset's stream has no (complete) batch left for this task."""

    #: items of the stream that failed under on_error="skip" before its end was found
    failures: list[SampleFailure] = field(default_factory=list)
