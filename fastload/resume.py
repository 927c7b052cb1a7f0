"""Where an epoch is, in terms that survive a restart, and how the next epoch resumes.

NOTE [ Resume ]

An epoch is a sequence of *tasks*, drawn in order from the loader's index sampler. Each
task covers *positions*, in one of three units (:class:`Batching`):

* ``"samples"``: the loader batches with torch's ``BatchSampler`` (``batch_size=n``, the
  usual case): positions are those of the sampler inside it. A task covers the
  positions of its indices, so a state resumes into a loader with another
  ``batch_size``: what remains is batched anew.
* ``"tasks"``: a ``batch_sampler`` of the user's, or ``batch_size=None``: positions are
  the index sampler's items (one per task).
* ``"items"``: an ``IterableDataset``: positions are the items drawn from each worker's
  stream (the main process's, with ``num_workers=0``); a task draws ``batch_size``.

A task is *settled* once its batch has been handed to the user, or once it turned out
to have no batch (every sample failed under ``on_error="skip"``, or an iterable stream
had ended). Batches are handed out in the order the loader's iterator yields them (the
stages between, ``batch_transform`` and the device prefetch, are first in, first out
and one to one), so the k-th hand-out settles the k-th yielded task and every task
dropped before it (:class:`EpochProgress`). A task dropped after it stays unsettled: a
resumed loader runs it again, as an uninterrupted one would have.

With ``in_order=False`` batches are handed out as they arrive, so the settled positions
are a prefix plus some ranges beyond it; the state lists both (a few numbers: at most
the tasks in flight). ``load_state_dict`` makes the next epoch skip exactly those: the
sampler jumps to the prefix (fastload samplers) or is replayed to it (others), the
ranges beyond are left out, and the rest is batched with this loader's ``batch_size``.
So every position of the epoch is delivered once, or reported failed, whatever the
order of delivery (with ``drop_last``, the incomplete batch that is dropped is the last
one the resumed loader forms). Iterable streams skip the items they had given, in each
worker, before the first task.

The order of the epoch must come out the same again, and so must its seeds: the state
holds the epoch's base seed, and the loader's own generator's state after drawing it
(NOTE [ Seeds ] in ``seeding.py``). A fastload sampler gets back its state at the
epoch's start (for ``RandomSampler``, where its draw began: its generator's state, or
the seed it drew from the global RNG) and jumps to the prefix; one inside a batch
sampler of the user's gets it back too and the batch sampler is replayed. A torch sampler with a ``generator`` (torch's
``RandomSampler``, ``WeightedRandomSampler``, ``SubsetRandomSampler``) gets the
generator's state at the epoch's start back before it is replayed: the state holds it
(about 4 KB). One whose ``generator`` is None draws from torch's global RNG,
which no state can give back: resuming it mid-epoch is refused. Any other sampler is
replayed and must repeat its order by itself (a warning says so).

What a resumed loader cannot reproduce is refused, with a ``ValueError`` naming it: a
dataset of another length, another sampler (class, length, batch size or
configuration), a change between the units above, and for an ``IterableDataset``
another number of worker streams (each worker yields its own shard). A state that is
not well formed is refused likewise, and nothing changes unless it all loads.

``skip_first_batches(n)`` makes a point from a count instead (:func:`point_after_batches`:
``n`` batches of ``batch_size`` positions, or of one task), for a run resumed from a
count of steps; an ``IterableDataset``'s ``n`` batches are read and dropped. A loaded
point belongs to its epoch (``set_epoch`` to another drops it); a counted one applies to
whichever epoch comes next.

A batch lost between the loader's iterator and the user (``batch_transform``, pinning or
the device copy raised for it, and the user carried on) is not settled: a resumed loader
delivers it.

Exactness is that of the indices and of fastload's seeds. Randomness the dataset draws
itself is reproduced only where it is seeded per sample (``seed_per_sample=True``) or
absent: after a resume, workers start from their epoch seeds again, so a transform that
draws from the worker's running RNG state sees other numbers than it would have.
"""

from __future__ import annotations

import bisect
import collections
import itertools
from collections.abc import Iterator, Mapping, Sized
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import BatchSampler

from .samplers import ResumableSampler, checked_count, describe_differences

#: What ``DataLoader.state_dict()`` says it is; anything else is refused by ``load_state_dict``.
STATE_FORMAT = "fastload.DataLoader/3"

#: Positions one task covers: ``((start, end), ...)`` half-open ranges (map-style datasets),
#: or ``(stream, items)`` for an iterable dataset's worker stream.
Positions = tuple[Any, ...]


class SettledPositions:
    """A set of non-negative positions, kept as sorted, disjoint, non-touching ranges."""

    def __init__(self, prefix: int = 0, ranges: list[tuple[int, int]] | tuple[()] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        if prefix:
            self.add(0, prefix)
        for start, end in ranges:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        if self._ends and self._starts[-1] <= start <= self._ends[-1]:  # in order: extends the last range
            self._ends[-1] = max(self._ends[-1], end)
            return
        # Merge with every range that overlaps or touches [start, end).
        first = bisect.bisect_left(self._ends, start)
        last = bisect.bisect_right(self._starts, end)
        if first < last:
            start = min(start, self._starts[first])
            end = max(end, self._ends[last - 1])
        self._starts[first:last] = [start]
        self._ends[first:last] = [end]

    @property
    def prefix(self) -> int:
        """How many positions from 0 on are all settled."""
        return self._ends[0] if self._starts and self._starts[0] == 0 else 0

    def beyond_prefix(self) -> list[tuple[int, int]]:
        """The settled ranges after the prefix."""
        skip = 1 if self.prefix else 0
        return list(zip(self._starts[skip:], self._ends[skip:]))


@dataclass
class ResumePoint:
    """What ``load_state_dict`` leaves for the next epoch to skip."""

    #: map-style: the settled prefix, and settled ranges beyond it
    prefix: int = 0
    beyond: list[tuple[int, int]] = field(default_factory=list)
    #: map-style: the sampler was told to start at ``prefix`` (else it is replayed)
    jumped: bool = False
    #: iterable: items each worker stream had given, and the worker whose turn was next
    stream_items: list[int] | None = None
    next_stream: int = 0
    #: batches handed out before the state was taken
    batches: int = 0
    #: the replayed torch sampler's generator state at the epoch's start
    generator_state: torch.Tensor | None = None
    #: the epoch the loader's fastload sampler iterates (it may begin only at the first batch)
    sampler_epoch: int = 0
    #: the workers' base seed of the epoch, if it is not to be drawn (NOTE [ Seeds ])
    base_seed: int | None = None
    #: the point is that of a state of the loader's next epoch (``load_state_dict``), not a
    #: count of batches to skip in whichever epoch comes next (``skip_first_batches``)
    from_state: bool = False

    @property
    def started(self) -> bool:
        """Whether anything of the epoch is settled."""
        return bool(self.prefix or self.beyond or self.batches or any(self.stream_items or ()))


class EpochProgress:
    """What the user has of the epoch: the positions settled so far (NOTE [ Resume ]).

    The loader's iterator reports each task it yields (``yielded``) or drops
    (``dropped``), in its order; ``EpochIterator`` reports each hand-out (``handed``), a
    batch lost on its way (``lost_since``) and the end (``finish``). A stage that works
    on a thread ahead of the user reports its own losses (``lost_oldest``) and marks the
    error it raises as ``accounted``, so that ``EpochIterator`` does not report it again.
    """

    def __init__(self, epoch: int, resume: ResumePoint | None, streams: int | None) -> None:
        self.epoch = epoch
        resume = resume or ResumePoint()
        self.batches = resume.batches
        self.finished = False
        self.settled = SettledPositions(resume.prefix, resume.beyond)
        #: iterable datasets: items settled per stream, and the stream of the last settled task
        self.stream_items = list(resume.stream_items or [0] * (streams or 0)) if streams is not None else None
        self.next_stream = resume.next_stream
        self.generator_state = resume.generator_state
        self.sampler_epoch = resume.sampler_epoch
        self.base_seed = resume.base_seed
        #: the loader's own generator (not the sampler's) after the epoch's draw from it
        self.loader_generator_state: torch.Tensor | None = None
        #: the epoch's first task was taken: the sampler has drawn the order
        self.drawn = False
        self._events: collections.deque[tuple[bool, Positions]] = collections.deque()
        #: tasks yielded so far (``lost_since`` compares against it)
        self.yields = 0
        #: the error a stage raised after reporting its loss itself
        self.accounted: BaseException | None = None

    def yielded(self, positions: Positions) -> None:
        self._events.append((True, positions))
        self.yields += 1

    def lost_since(self, yields: int) -> None:
        """An error reached the user after ``yields`` yields: a batch yielded since then
        never reached them. It is the newest one (a stage that runs ahead hands out the
        older ones later), and it stays unsettled."""
        if self.yields == yields:
            return
        for k in range(len(self._events) - 1, -1, -1):
            if self._events[k][0]:
                del self._events[k]
                return

    def lost_oldest(self) -> None:
        """The oldest yielded batch not yet handed out never reached the user (a stage on a
        thread raises each batch's error in its turn, after older batches, and may have
        taken newer ones meanwhile); it stays unsettled."""
        for k, (was_yielded, _) in enumerate(self._events):
            if was_yielded:
                del self._events[k]
                return

    def dropped(self, positions: Positions) -> None:
        self._events.append((False, positions))

    def handed(self) -> None:
        self.batches += 1
        while self._events:
            was_yielded, positions = self._events.popleft()
            self._settle(positions)
            if was_yielded:
                return

    def finish(self) -> None:
        self.finished = True
        while self._events:
            self._settle(self._events.popleft()[1])

    def _settle(self, positions: Positions) -> None:
        if self.stream_items is not None:
            stream, items = positions
            self.stream_items[stream] += items
            self.next_stream = (stream + 1) % len(self.stream_items)
            return
        for start, end in positions:
            self.settled.add(start, end)


@dataclass(frozen=True)
class Batching:
    """How a loader's tasks map to positions (the units of NOTE [ Resume ])."""

    unit: str  # "samples" | "tasks" | "items"
    #: the sampler whose items the positions count (``None`` for "items")
    sampler: Any
    batch_size: int | None = None
    drop_last: bool = False


def batching_of(loader: Any) -> Batching:
    if loader._is_iterable:
        return Batching("items", None)
    batch_sampler = loader.batch_sampler
    if loader._auto_collation and type(batch_sampler) is BatchSampler:
        return Batching("samples", batch_sampler.sampler, batch_sampler.batch_size, batch_sampler.drop_last)
    return Batching("tasks", loader._index_sampler)


@dataclass(frozen=True)
class SamplerRoles:
    """Who keeps the epoch's order (NOTE [ Resume ])."""

    #: the fastload sampler whose state the loader keeps
    resumable: ResumableSampler | None = None
    #: ``resumable`` is the sampler the positions count, so it can start at the prefix
    jumps: bool = False
    #: else, a torch sampler whose ``generator`` state the loader keeps
    seeded: Any = None


def sampler_roles(batching: Batching) -> SamplerRoles:
    outer = batching.sampler
    inner = getattr(outer, "sampler", None)  # a batch sampler's sampler
    if isinstance(outer, ResumableSampler):
        return SamplerRoles(outer, jumps=True)
    if isinstance(inner, ResumableSampler):
        return SamplerRoles(inner)
    seeded = next((s for s in (outer, inner) if hasattr(s, "generator")), None)
    return SamplerRoles(seeded=seeded)


def _class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def order_description(loader: Any, batching: Batching) -> dict[str, Any]:
    """What must be equal between the loader that took a state and the one resuming it."""
    described: dict[str, Any] = {"unit": batching.unit}
    if batching.unit == "items":
        described["streams"] = max(1, loader.num_workers)
        return described
    sampler = batching.sampler
    described["dataset_length"] = len(loader.dataset) if isinstance(loader.dataset, Sized) else None
    described["sampler"] = _class_name(sampler)
    if not isinstance(sampler, ResumableSampler):  # a fastload sampler checks its own configuration
        described["sampler_length"] = len(sampler) if isinstance(sampler, Sized) else None
        if hasattr(sampler, "sampler"):  # a batch sampler's own sampler
            described["inner_sampler"] = _class_name(sampler.sampler)
        for attribute in ("batch_size", "drop_last"):  # a batch sampler of the user's
            if isinstance(getattr(sampler, attribute, None), (bool, int)):
                described[f"sampler_{attribute}"] = getattr(sampler, attribute)
    return described


def check_same_order(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Raises ``ValueError`` naming every difference that would make the resume inexact."""
    names = {
        "unit": "how batches are formed (samples: torch's BatchSampler over a sampler; tasks: a batch_sampler "
                "or batch_size=None; items: an IterableDataset)",
        "streams": "worker streams of the IterableDataset (max(1, num_workers); each worker yields its own shard)",
        "dataset_length": "len(dataset)",
        "sampler": "the sampler's class",
        "sampler_length": "len(sampler)",
        "inner_sampler": "the batch sampler's sampler's class",
        "sampler_batch_size": "the batch sampler's batch_size",
        "sampler_drop_last": "the batch sampler's drop_last",
    }
    differences = describe_differences(saved, current, names)
    if differences:
        raise ValueError("DataLoader.load_state_dict: this state cannot resume this loader exactly, it was taken "
                         "from a loader that differs in " + "; ".join(differences))


def settled_from_state(state: Mapping[str, Any], batching: Batching, bound: int | None,
                       streams: int) -> ResumePoint:
    """The settled positions ``state`` records, checked: counts are whole numbers >= 0,
    ranges increase beyond the prefix and stay within ``bound`` positions."""
    settled = state["settled"]
    if not isinstance(settled, Mapping):
        raise ValueError(f"DataLoader.load_state_dict: settled must be a mapping, got {settled!r}")
    batches = checked_count(state["batches"], "DataLoader.load_state_dict: batches")
    where = "DataLoader.load_state_dict: settled"
    try:
        if batching.unit == "items":
            items = [checked_count(n, f"{where}.stream_items[{k}]") for k, n in enumerate(settled["stream_items"])]
            if len(items) != streams:
                raise ValueError(f"{where}.stream_items has {len(items)} entries for {streams} worker streams")
            next_stream = checked_count(settled["next_stream"], f"{where}.next_stream")
            if next_stream >= streams:
                raise ValueError(f"{where}.next_stream is {next_stream}, beyond the {streams} worker streams")
            return ResumePoint(stream_items=items, next_stream=next_stream, batches=batches)
        prefix = checked_count(settled["prefix"], f"{where}.prefix")
        beyond = []
        for k, pair in enumerate(settled["beyond"]):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"{where}.beyond[{k}] must be a [start, end] pair, got {pair!r}")
            beyond.append((checked_count(pair[0], f"{where}.beyond[{k}][0]"),
                           checked_count(pair[1], f"{where}.beyond[{k}][1]")))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{where} is malformed for an epoch of {batching.unit} ({exc!r}): {settled!r}") from exc
    previous_end = prefix
    for start, end in beyond:
        if not previous_end < start < end:
            raise ValueError(f"{where}.beyond must hold increasing, disjoint ranges after the prefix {prefix}, "
                             f"got {beyond}")
        previous_end = end
    if bound is not None and previous_end > bound:
        raise ValueError(f"{where} reaches position {previous_end}, beyond the {bound} of this epoch")
    return ResumePoint(prefix, beyond, batches=batches)


def epoch_tasks(batching: Batching, resume: ResumePoint | None) -> Iterator[tuple[Any, Positions]]:
    """The epoch's tasks and the positions each covers, leaving out what ``resume`` says
    was settled (NOTE [ Resume ])."""
    resume = resume or ResumePoint()
    items = iter(batching.sampler)
    if resume.prefix and not resume.jumped:
        # Replayed: a sampler that cannot jump yields its first items again (indices only, cheap).
        for _ in itertools.islice(items, resume.prefix):
            pass
    if batching.unit == "samples" and not resume.beyond:
        assert batching.batch_size is not None
        return _batches(items, resume.prefix, batching.batch_size, batching.drop_last)
    numbered: Iterator[tuple[int, Any]] = zip(itertools.count(resume.prefix), items)
    if resume.beyond:
        numbered = _leaving_out(numbered, resume.beyond)
    if batching.unit == "samples":
        assert batching.batch_size is not None
        return _batches_with_gaps(numbered, batching.batch_size, batching.drop_last)
    return ((item, ((position, position + 1),)) for position, item in numbered)


def _batches(items: Iterator[Any], position: int, size: int, drop_last: bool) -> Iterator[tuple[list[Any], Positions]]:
    """torch's ``BatchSampler`` over ``items`` (whose first is at ``position``), with each
    batch's positions."""
    while True:
        batch = [*itertools.islice(items, size)]
        if not batch or (drop_last and len(batch) < size):
            return
        yield batch, ((position, position + len(batch)),)
        position += len(batch)


def _leaving_out(numbered: Iterator[tuple[int, Any]], ranges: list[tuple[int, int]]) -> Iterator[tuple[int, Any]]:
    pending = collections.deque(sorted(ranges))
    for position, item in numbered:
        while pending and pending[0][1] <= position:
            pending.popleft()
        if pending and pending[0][0] <= position:
            continue
        yield position, item


def _batches_with_gaps(numbered: Iterator[tuple[int, Any]], size: int,
                       drop_last: bool) -> Iterator[tuple[list[Any], Positions]]:
    """:func:`_batches` over items whose positions need not be consecutive."""
    while True:
        chunk = [*itertools.islice(numbered, size)]
        if not chunk or (drop_last and len(chunk) < size):
            return
        yield [item for _, item in chunk], _ranges([position for position, _ in chunk])


def _ranges(positions: list[int]) -> Positions:
    """Increasing positions as half-open ranges of consecutive ones."""
    ranges = []
    start = previous = positions[0]
    for position in positions[1:]:
        if position != previous + 1:
            ranges.append((start, previous + 1))
            start = position
        previous = position
    ranges.append((start, previous + 1))
    return tuple(ranges)


def point_after_batches(batching: Batching, num_batches: int) -> ResumePoint:
    """Where an epoch of map-style tasks is once its first ``num_batches`` batches were
    handed out, none having failed whole (NOTE [ Resume ]): ``batch_size`` positions a
    batch (``"samples"``), or one (``"tasks"``)."""
    assert batching.unit != "items"
    prefix = num_batches * batching.batch_size if batching.unit == "samples" else num_batches  # type: ignore[operator]
    if isinstance(batching.sampler, Sized):
        prefix = min(prefix, len(batching.sampler))
    return ResumePoint(prefix, batches=num_batches)


def remaining_batches(batching: Batching, resume: ResumePoint | None, index_sampler: Any) -> int:
    """``len()`` of an epoch's iterator: the index sampler's (torch's rule), less the
    batches a resume leaves out."""
    full = len(index_sampler)
    if resume is None or not (resume.prefix or resume.beyond):
        return full
    settled = resume.prefix + sum(end - start for start, end in resume.beyond)
    if batching.unit == "tasks":
        return max(0, full - settled)
    assert batching.batch_size is not None
    left = max(0, len(batching.sampler) - settled)
    return left // batching.batch_size if batching.drop_last else -(-left // batching.batch_size)
