"""Resumable, distributed and length-bucketing samplers.

:class:`RandomSampler` is torch's, index for index: its order comes from a generator
(or torch's global RNG), and its state holds where an iteration's randomness began. Every
other sampler here derives its order for an epoch from ``(seed, epoch)`` only (see NOTE
[ Resumable sampling ] in ``seeding.py``). All have ``state_dict()`` /
``load_state_dict()``: ``epoch`` and ``start`` (how many items of that epoch were already
yielded), what the order comes from (``seed``; a generator state or drawn seed for
:class:`RandomSampler`), and ``config``: what else the order depends on (lengths, sizes,
flags), checked on load so that a state never silently resumes a differently configured
sampler. The ``(seed, epoch)`` samplers compute the epoch's order eagerly, at ``iter()``
time; :class:`RandomSampler` draws at its first index, as torch's does.

A distributed sampler's ``config`` holds the world size, not its rank: a rank may resume
from another rank's state (Lightning checkpoints rank 0's loader state only), which is
exact when the ranks handed out the same number of batches in order, as DDP's lockstep
makes them (``fastload.DataLoader`` refuses another rank's out-of-order positions).

Epochs: calling ``set_epoch(e)`` (as with torch's ``DistributedSampler``) or
``load_state_dict`` fixes the epoch of the next iteration; iterating again without either
moves to the next epoch by itself — silently for the single-process samplers (torch's
``RandomSampler`` also reshuffles every epoch), with one warning for the distributed
ones (torch's would silently repeat the same order).

The subclasses of torch's samplers pass ``isinstance`` checks against them (Lightning
uses ``isinstance(sampler, RandomSampler)`` to tell whether a loader shuffles).
"""

from __future__ import annotations

import itertools
import math
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.utils.data as tud

from .seeding import decode_generator_state, encode_generator_state, epoch_generator, mix_seed

__all__ = [
    "BucketBatchSampler",
    "DistributedBatchSampler",
    "DistributedBucketBatchSampler",
    "DistributedSampler",
    "DistributedSamplerWrapper",
    "RandomSampler",
    "ResumableSampler",
    "SequentialSampler",
]


def describe_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                         names: Mapping[str, str] | None = None) -> list[str]:
    """One phrase per key whose value differs between ``saved`` (a state) and ``current``."""
    names = names or {}
    return [f"{names.get(key, key)}: {saved.get(key)!r} in the state, {current.get(key)!r} here"
            for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


def checked_count(value: Any, what: str) -> int:
    """``value`` if it is a whole number >= 0 (not a bool, float or string), else ValueError naming ``what``."""
    if type(value) is not int or value < 0:
        raise ValueError(f"{what} must be a whole number >= 0, got {value!r}")
    return value


def checked_seed(value: Any, what: str) -> int:
    """``value`` if it is a seed torch draws (a whole number in [0, 2**63)), else ValueError naming ``what``."""
    if type(value) is not int or not 0 <= value < 1 << 63:
        raise ValueError(f"{what} must be a whole number in [0, 2**63), got {value!r}")
    return value


class ResumableSampler:
    """The epoch and position bookkeeping every fastload sampler shares.

    A subclass calls :meth:`_init_cursor` in its constructor, :meth:`_begin_epoch` at the
    start of ``__iter__``, and wraps what it yields in :meth:`_counted`. Its order is a
    function of ``(seed, epoch)``, unless it overrides the three ``_order_state`` hooks
    (:class:`RandomSampler`: the order comes from a generator, as torch's).
    """

    #: warn once when an epoch advances without set_epoch (distributed samplers)
    _warn_on_auto_epoch = False

    def _init_cursor(self, seed: int, epoch: int = 0) -> None:
        self.seed = int(seed)
        self.epoch = epoch
        self._epoch_fixed = True  # the next iteration uses self.epoch as is
        self._start = 0  # items of the next iteration to skip
        self._yielded = 0  # items of the current iteration yielded so far
        self._warned_auto_epoch = False
        self._linked_epoch: int | None = None  # the epoch last taken from another sampler (_follow_epoch_of)

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iteration (its order is a function of seed and epoch)."""
        self.epoch = epoch
        self._epoch_fixed = True

    def next_epoch(self) -> int:
        """The epoch the next iteration will use."""
        return self.epoch if self._epoch_fixed else self.epoch + 1

    def begun(self, epoch: int) -> bool:
        """Whether iteration ``epoch`` has begun (so :meth:`state_dict` describes it)."""
        return not self._epoch_fixed and self.epoch == epoch

    def order_config(self) -> dict[str, Any]:
        """Everything besides ``seed`` and ``epoch`` that this sampler's order depends on."""
        raise NotImplementedError

    def epoch_length(self, epoch: int) -> int:
        """How many items epoch ``epoch`` yields (``len(self)`` unless that depends on the epoch)."""
        return len(self)  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, Any]:
        """``{"seed", "epoch", "start", "config"}``: what the order comes from (for
        :class:`RandomSampler`, ``"generator"``/``"drawn_seed"`` instead of ``"seed"``), the
        epoch being (or last) iterated, how many items of it were yielded, and
        :meth:`order_config`. JSON-serialisable."""
        return {**self._order_state(upcoming=False), "epoch": int(self.epoch), "start": self._yielded,
                "config": self.order_config()}

    def next_state(self) -> dict[str, Any]:
        """The state whose loading makes the next iteration start from its beginning as
        this sampler's next iteration would."""
        return {**self._order_state(upcoming=True), "epoch": self.next_epoch(), "start": 0,
                "config": self.order_config()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Make the next iteration epoch ``state["epoch"]``, skipping its first ``state["start"]`` items.

        Nothing changes unless the whole state is valid.

        Raises:
            KeyError: ``epoch`` (or ``seed``) missing.
            ValueError: ``seed``, ``epoch`` or ``start`` not a whole number >= 0, or a
                ``config`` other than this sampler's (another length, batch size, world
                size, ...): its order would differ.
        """
        name = type(self).__name__
        if "epoch" not in state:
            raise KeyError(f"{name}.load_state_dict: state lacks ['epoch']")
        order = self._check_order_state(state, f"{name}.load_state_dict")
        epoch = checked_count(state["epoch"], f"{name}.load_state_dict: epoch")
        start = checked_count(state.get("start", 0), f"{name}.load_state_dict: start")
        if "config" in state:
            if not isinstance(state["config"], Mapping):
                raise ValueError(f"{name}.load_state_dict: config must be a mapping (what order_config() returns), "
                                 f"got {state['config']!r}")
            differences = describe_differences(state["config"], self.order_config())
            if differences:
                raise ValueError(f"{name}.load_state_dict: the state was taken from a sampler configured "
                                 f"otherwise, so its order would differ: {'; '.join(differences)}")
        self._apply_order_state(order)
        self.set_epoch(epoch)
        self._start = start

    def _order_state(self, upcoming: bool) -> dict[str, Any]:
        """What the order of the iteration in progress (``upcoming``: the next one) comes
        from, besides its epoch."""
        return {"seed": self.seed}

    def _check_order_state(self, state: Mapping[str, Any], where: str) -> Any:
        """The checked content of :meth:`_order_state`'s keys in ``state``."""
        if "seed" not in state:
            raise KeyError(f"{where}: state lacks ['seed']")
        return checked_count(state["seed"], f"{where}: seed")

    def _apply_order_state(self, order: Any) -> None:
        self.seed = order

    def _begin_epoch(self) -> tuple[int, int]:
        """(epoch, start) of the iteration that begins now."""
        if not self._epoch_fixed:
            self.epoch += 1
            if self._warn_on_auto_epoch and not self._warned_auto_epoch:
                self._warned_auto_epoch = True
                warnings.warn(
                    f"{type(self).__name__} was iterated again without set_epoch(); fastload advanced it to "
                    f"epoch {self.epoch} so that the order changes. Call sampler.set_epoch(epoch) every epoch "
                    "to choose the epoch yourself.",
                    stacklevel=3,
                )
        self._epoch_fixed = False
        start, self._start = self._start, 0
        self._yielded = start
        return self.epoch, start

    def _follow_epoch_of(self, other: Any) -> None:
        """Take ``other``'s epoch if it changed since this sampler last took it: the sampler
        Lightning injects, and sets the epoch of, in place of this one's."""
        linked = getattr(other, "epoch", None)
        if isinstance(linked, int) and linked != self._linked_epoch:
            self._linked_epoch = linked
            self.set_epoch(linked)

    def _counted(self, items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            self._yielded += 1
            yield item


def _rank_and_world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """Explicit values, or those of the initialized process group (torch's rule)."""
    if num_replicas is None or rank is None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "num_replicas and rank must be given when no torch.distributed process group is initialized"
            )
        num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
        rank = dist.get_rank() if rank is None else rank
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
    if not 0 <= rank < num_replicas:
        raise ValueError(f"Invalid rank {rank}, rank should be in the interval [0, {num_replicas - 1}]")
    return num_replicas, rank


class SequentialSampler(ResumableSampler, tud.SequentialSampler):
    """``torch.utils.data.SequentialSampler`` that can resume mid-epoch."""

    def __init__(self, data_source: Sized) -> None:
        super().__init__(data_source)
        self._init_cursor(seed=0)

    def order_config(self) -> dict[str, Any]:
        return {"length": len(self.data_source)}

    def __iter__(self) -> Iterator[int]:
        _, start = self._begin_epoch()
        return self._counted(range(start, len(self.data_source)))


class RandomSampler(ResumableSampler, tud.RandomSampler):
    """``torch.utils.data.RandomSampler`` (same arguments), index for index, that can
    resume mid-epoch.

    Each iteration draws as torch's does, and when torch's does (at its first index):
    from ``self.generator`` as it is then, so one assigned after construction (as
    Accelerate does) is used; or, when that is None, from a generator seeded by one draw
    from torch's global RNG, so ``torch.manual_seed(s)`` before iterating repeats the
    order; with replacement, 32 indices per draw. The same generator state, or the same
    global seed, gives torch's sequence.

    To resume, an iteration remembers where its randomness began: its generator's state,
    or the seed it drew from the global RNG (:meth:`state_dict`; JSON, about 4 KB with a
    generator). :meth:`load_state_dict` puts the generator back in that state at once
    (or keeps the seed for the next iteration), and the next iteration draws the same
    indices again, skips those already yielded, and leaves the generator where an
    uninterrupted iteration would have.

    ``seed=s`` is short for ``generator=torch.Generator().manual_seed(s)``. The epoch
    (``set_epoch``, as Lightning calls it) only labels iterations: the order comes from
    the generator, as torch's does.
    """

    def __init__(
        self,
        data_source: Sized,
        replacement: bool = False,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        if seed is not None:
            if generator is not None:
                raise ValueError("RandomSampler: give generator or seed, not both")
            generator = torch.Generator().manual_seed(seed)
        super().__init__(data_source, replacement=replacement, num_samples=num_samples, generator=generator)
        self._init_cursor(seed=0)
        #: where the iteration in progress (or last begun) drew from: its generator's
        #: state, or the seed it drew from the global RNG
        self._origin: torch.Tensor | int | None = None
        #: a seed drawn by the iteration a loaded state describes, for the next iteration
        self._loaded_seed: int | None = None

    def order_config(self) -> dict[str, Any]:
        return {"length": len(self.data_source), "replacement": self.replacement, "num_samples": self.num_samples}

    def __iter__(self) -> Iterator[int]:
        # A generator function, like torch's: nothing is drawn before the first index.
        _, start = self._begin_epoch()
        seed, self._loaded_seed = self._loaded_seed, None
        if seed is None and self.generator is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        if seed is not None:
            self._origin = seed
            generator = torch.Generator().manual_seed(seed)
        else:
            self._origin = self.generator.get_state()
            generator = self.generator
        for position, index in enumerate(_torch_random_order(len(self.data_source), self.num_samples,
                                                              self.replacement, generator)):
            if position >= start:
                self._yielded += 1
                yield index

    def _order_state(self, upcoming: bool) -> dict[str, Any]:
        if upcoming or self._epoch_fixed or self._origin is None:
            origin = self._loaded_seed if self._loaded_seed is not None else \
                (self.generator.get_state() if self.generator is not None else None)
        else:
            origin = self._origin
        if isinstance(origin, torch.Tensor):
            return {"generator": encode_generator_state(origin), "drawn_seed": None}
        return {"generator": None, "drawn_seed": origin}

    def _check_order_state(self, state: Mapping[str, Any], where: str) -> Any:
        missing = {"generator", "drawn_seed"} - set(state)
        if missing:
            raise KeyError(f"{where}: state lacks {sorted(missing)}")
        if state["generator"] is not None:
            if state["drawn_seed"] is not None:
                raise ValueError(f"{where}: a state holds a generator state or a drawn seed, not both")
            if self.generator is None:
                raise ValueError(f"{where}: the state was taken from a RandomSampler drawing from its generator; "
                                 "this one has generator=None (give it a torch.Generator)")
            return decode_generator_state(state["generator"], self.generator, f"{where}: generator")
        if state["drawn_seed"] is not None:
            return checked_seed(state["drawn_seed"], f"{where}: drawn_seed")
        if state.get("start", 0) != 0:  # items of an iteration whose randomness the state does not hold
            raise ValueError(f"{where}: a state with start={state.get('start')!r} needs the generator state or "
                             "the drawn_seed its iteration began from; it has neither")
        return None

    def _apply_order_state(self, order: Any) -> None:
        self._loaded_seed = None
        if isinstance(order, torch.Tensor):
            self.generator.set_state(order)
        elif order is not None:
            self._loaded_seed = order


def _torch_random_order(n: int, count: int, replacement: bool, generator: torch.Generator) -> Iterator[int]:
    """The indices torch's ``RandomSampler`` yields, drawn from ``generator`` as it draws
    them: 32 at a time with replacement, one permutation of ``n`` at a time without."""
    if replacement:
        for _ in range(count // 32):
            yield from torch.randint(high=n, size=(32,), dtype=torch.int64, generator=generator).tolist()
        yield from torch.randint(high=n, size=(count % 32,), dtype=torch.int64, generator=generator).tolist()
        return
    for _ in range(count // n):
        yield from torch.randperm(n, generator=generator).tolist()
    yield from torch.randperm(n, generator=generator).tolist()[: count % n]


class DistributedSampler(ResumableSampler, tud.DistributedSampler):
    """``torch.utils.data.DistributedSampler``: same arguments, same per-epoch order
    (``seed + epoch``), same padding by repeating indices and strided split; rank and world
    size come from the initialized process group when not given. In addition it resumes
    mid-epoch, and advances its epoch (warning once) when ``set_epoch`` is forgotten.
    """

    _warn_on_auto_epoch = True

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,  # type: ignore[arg-type]
                         drop_last=drop_last)  # torch's needs only len(dataset)
        self._init_cursor(seed)

    def order_config(self) -> dict[str, Any]:
        return {"length": len(self.dataset), "num_replicas": self.num_replicas,  # type: ignore[arg-type]
                "shuffle": self.shuffle, "drop_last": self.drop_last}

    def __iter__(self) -> Iterator[Any]:
        _, start = self._begin_epoch()
        indices = list(super().__iter__())
        return self._counted(indices[start:])


class DistributedSamplerWrapper(ResumableSampler, tud.DistributedSampler):
    """Distributes any sampler, or batch sampler, across ranks.

    Each epoch every rank draws the wrapped sampler's whole sequence (identically: a
    wrapped sampler with a ``generator`` attribute — torch's ``RandomSampler``,
    ``WeightedRandomSampler``, ``SubsetRandomSampler`` — is reseeded from ``(seed,
    epoch)``; a fastload sampler gets its state set; anything else must be
    deterministic), pads it by repeating items from its start (or, with ``drop_last``,
    drops the tail) to a multiple of the world size, and keeps every
    ``num_replicas``-th item from ``rank``. Every rank yields the same number of items,
    no item is lost, and duplicates are only the padding.

    It is a ``torch.utils.data.DistributedSampler`` to ``isinstance``, which is how
    frameworks tell a loader that is sharded already (Lightning then injects no sampler
    of its own); ``shuffle`` says whether the wrapped sampler is a random one.
    """

    _warn_on_auto_epoch = True

    def __init__(
        self,
        sampler: tud.Sampler[Any] | Iterable[Any],
        num_replicas: int | None = None,
        rank: int | None = None,
        *,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        self.sampler = sampler
        self.num_replicas, self.rank = _rank_and_world(num_replicas, rank)
        self.drop_last = drop_last
        self._init_cursor(seed)

    def _global_sequence(self, epoch: int) -> list[Any]:
        sampler = self.sampler
        inner_seed = mix_seed(self.seed, epoch, "wrapped")
        if hasattr(sampler, "generator"):  # torch's random samplers, and fastload's RandomSampler
            if sampler.generator is None:
                sampler.generator = torch.Generator()
            sampler.generator.manual_seed(inner_seed)
        elif isinstance(sampler, ResumableSampler):
            sampler.load_state_dict({"seed": inner_seed, "epoch": epoch})
        elif hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        return list(sampler)

    def order_config(self) -> dict[str, Any]:
        wrapped_length = len(self.sampler) if isinstance(self.sampler, Sized) else None
        return {"wrapped": type(self.sampler).__name__, "wrapped_length": wrapped_length,
                "num_replicas": self.num_replicas, "drop_last": self.drop_last}

    def _per_rank(self, total: int) -> int:
        return total // self.num_replicas if self.drop_last else math.ceil(total / self.num_replicas)

    def __iter__(self) -> Iterator[Any]:
        epoch, start = self._begin_epoch()
        items = self._global_sequence(epoch)
        size = self._per_rank(len(items)) * self.num_replicas
        if len(items) < size:
            items = (items * math.ceil(size / max(1, len(items))))[:size]
        mine = items[self.rank : size : self.num_replicas]
        return self._counted(mine[start:])

    def __len__(self) -> int:
        return self._per_rank(len(self.sampler))  # type: ignore[arg-type]

    @property
    def shuffle(self) -> bool:  # type: ignore[override]
        """Whether the wrapped sampler draws a random order (it has a ``generator``)."""
        return hasattr(self.sampler, "generator")

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        """Items per rank, as torch's ``DistributedSampler`` names it."""
        return len(self)

    @property
    def total_size(self) -> int:  # type: ignore[override]
        """Items over all ranks, padding included, as torch's ``DistributedSampler`` names it."""
        return len(self) * self.num_replicas


class DistributedBatchSampler(DistributedSamplerWrapper):
    """Batches split across ranks batch by batch, the way Accelerate shards a loader:
    every rank draws the wrapped sampler's whole sequence (as
    :class:`DistributedSamplerWrapper` does) and rank ``r`` takes batches ``r``,
    ``r + num_replicas``, ... The batches are the wrapped sampler's items cut into
    ``batch_size``; with ``batch_size=None`` the wrapped sampler is a batch sampler and
    its batches are kept.

    Every rank yields the same number of batches. The last step is completed with items
    repeated from the start of the sequence: its short batch filled up to the batch size
    (a batch sampler's own ``batch_size``), missing batches added (whole batches repeated,
    for a batch sampler without a batch size). So the ranks' batches of a step have one
    shape, and gathered in rank order the real samples come first (what
    ``accelerator.gather_for_metrics`` relies on to drop the padding). With
    ``drop_last`` the incomplete last step is dropped instead (items cut into batches: up
    to ``batch_size * num_replicas - 1`` left out, none repeated).

    A wrapped sampler that is distributed already (``DistributedSampler``, as Lightning
    injects one when it re-creates this batch sampler) is only batched, as torch's
    ``BatchSampler`` batches (it gives every rank as many items), and its epoch (which
    Lightning sets) is followed.
    """

    def __init__(
        self,
        sampler: tud.Sampler[Any] | Sequence[Any],
        batch_size: int | None,
        num_replicas: int | None = None,
        rank: int | None = None,
        *,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        if batch_size is not None and (type(batch_size) is not int or batch_size < 1):
            raise ValueError(f"batch_size should be a positive integer or None, got {batch_size!r}")
        #: the wrapped sampler is split across ranks already: it is only batched
        self.presplit = isinstance(sampler, tud.DistributedSampler)
        if self.presplit and (num_replicas or 1) > 1:
            raise ValueError(f"DistributedBatchSampler: the {type(sampler).__name__} given is distributed already; "
                             "it is batched as it is, so give no num_replicas")
        super().__init__(sampler, *((1, 0) if self.presplit else (num_replicas, rank)), drop_last=drop_last,
                         seed=seed)
        #: whether the wrapped sampler yields batches (``batch_size=None``)
        self.of_batches = batch_size is None
        own = getattr(sampler, "batch_size", None)
        self.batch_size = batch_size if batch_size is not None else own if isinstance(own, int) else None

    def order_config(self) -> dict[str, Any]:
        return {**super().order_config(), "batch_size": self.batch_size, "of_batches": self.of_batches}

    def _per_rank(self, total: int) -> int:
        if self.of_batches:  # ``total`` batches
            return total // self.num_replicas if self.drop_last else math.ceil(total / self.num_replicas)
        assert self.batch_size is not None
        step = self.batch_size * self.num_replicas
        return total // step if self.drop_last else math.ceil(total / step)

    def _global_sequence(self, epoch: int) -> list[Any]:
        if self.presplit:  # its seed and epoch are its own (Lightning sets the epoch)
            return list(self.sampler)
        return super()._global_sequence(epoch)

    def __iter__(self) -> Iterator[list[Any]]:
        if self.presplit:
            self._follow_epoch_of(self.sampler)
        epoch, start = self._begin_epoch()
        sequence = self._global_sequence(epoch)
        if self.of_batches:
            batches = [list(batch) for batch in sequence]
        else:
            assert self.batch_size is not None
            batches = [sequence[at : at + self.batch_size] for at in range(0, len(sequence), self.batch_size)]
        steps = self._per_rank(len(sequence))
        batches = self._to_steps(batches, steps * self.num_replicas)
        return self._counted(batches[self.rank :: self.num_replicas][start:])

    def _to_steps(self, batches: list[list[Any]], count: int) -> list[list[Any]]:
        """``batches`` cut or completed to ``count`` batches (see the class docstring)."""
        size = self.batch_size
        if self.drop_last or self.presplit:  # whole steps of full batches; a split sampler is batched as it is
            return batches[:count]
        fill = itertools.cycle([item for batch in batches for item in batch])
        if size is not None and batches and len(batches[-1]) < size:
            batches[-1] = batches[-1] + list(itertools.islice(fill, size - len(batches[-1])))
        originals = len(batches)
        while len(batches) < count:
            if size is not None:
                batches.append(list(itertools.islice(fill, size)))
            else:
                batches.append(list(batches[(len(batches) - originals) % originals]))
        return batches

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        return len(self) * (self.batch_size or 1)


class BucketBatchSampler(ResumableSampler, tud.BatchSampler):
    """Batches of similar-length samples: less padding for variable-length data.

    Shuffle all indices, cut them into windows of ``sort_window`` samples, sort each
    window by length, cut it into batches; each epoch, shuffle the batches. Batches are
    either ``batch_size`` samples, or (``max_tokens``) as many as fit a token budget,
    counting padding: a batch costs ``max(length) * len(batch)``. Fixed-size batches are
    formed anew every epoch. Token batches are formed once (from ``seed``), as fairseq
    forms its batches, and only their order changes: every epoch then has the same
    number of batches, so ``len()`` holds for every epoch (frameworks take it once:
    Lightning ends an epoch after that many batches; learning-rate schedules count on it).

    Split across ranks (:class:`DistributedBucketBatchSampler`, or ``sampler=``), all
    ranks build the same epoch batches (same ``seed``), take them in groups of
    ``num_replicas`` neighbours in length order (so a group's batches cost about the
    same), pad the last group by repeating batches from the start (or drop it with
    ``drop_last``), shuffle the groups, and rank ``r`` takes the ``r``-th batch of each.

    It is a ``torch.utils.data.BatchSampler`` to ``isinstance``, so that Lightning, which
    re-creates the batch samplers of loaders made in a ``*_dataloader`` hook to inject its
    ``DistributedSampler``, passes that sampler by name: see ``sampler``.

    Args:
        lengths: the length of every sample (a sequence or 1-D array of ints).
        batch_size: samples per batch. Exactly one of ``batch_size``/``max_tokens``.
        max_tokens: token budget per batch (padding included).
        shuffle: shuffle indices and batches; without it, windows follow index order.
        drop_last: drop the last batch if it has fewer than ``batch_size`` samples
            (fixed-size mode; token batches are never incomplete), and split across
            ranks, the last incomplete group of batches.
        seed: root seed of the order; equal on all ranks.
        sort_window: samples sorted together (default 256 batches' worth): larger means
            less padding, smaller means more varied batch composition (the order of the
            batches is shuffled either way). On log-normal lengths (median 100, tail to
            2048) with batches of 64: 100 batches' worth pads 8.4%, 256 about 3%.
        sampler: the sampler Lightning injects when it re-creates this one: a
            distributed one (with ``num_replicas`` and ``rank``, such as
            ``DistributedSampler``) splits the batches across its ranks as above (with
            padding: Lightning's unrepeated sampler for prediction gets repeats too), and
            each iteration takes its ``epoch`` once it changes (Lightning calls its
            ``set_epoch``); any other (prediction on one device) changes nothing. Its own
            order is not used: the batches have theirs.

    Raises:
        ValueError: for bad sizes, negative lengths, or a sample longer than ``max_tokens``
            (named by index).
        TypeError: ``lengths`` is a sampler (a batch sampler re-created by position, as
            Lightning does for loaders made outside its hooks).
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int | None = None,
        *,
        max_tokens: int | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        sort_window: int | None = None,
        sampler: tud.Sampler[Any] | None = None,
    ) -> None:
        if isinstance(lengths, tud.Sampler):
            raise TypeError(
                f"{type(self).__name__} got a {type(lengths).__name__} where the sample lengths go: it was re-created "
                "as BatchSampler(sampler, batch_size=..., drop_last=...), as Lightning re-creates the batch sampler of "
                "a DataLoader made outside a *_dataloader hook. Make the DataLoader inside the LightningModule's or "
                "LightningDataModule's *_dataloader hook (Lightning then passes the sampler by name), or use "
                "DistributedBucketBatchSampler with Trainer(use_distributed_sampler=False).")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.ndim != 1:
            raise ValueError(f"lengths must be 1-D, got shape {self.lengths.shape}")
        if (batch_size is None) == (max_tokens is None):
            raise ValueError("give exactly one of batch_size and max_tokens")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if len(self.lengths) and self.lengths.min() < 0:
            raise ValueError(f"lengths must be >= 0; sample {int(self.lengths.argmin())} has {self.lengths.min()}")
        if max_tokens is not None and len(self.lengths) and self.lengths.max() > max_tokens:
            bad = int(self.lengths.argmax())
            raise ValueError(f"sample {bad} has length {self.lengths[bad]}, more than max_tokens={max_tokens}")
        self.batch_size = batch_size  # type: ignore[assignment]  # None with max_tokens
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.drop_last = drop_last
        self._init_cursor(seed)
        if sort_window is None:
            if batch_size is not None:
                typical = batch_size
            else:  # batches of about max_tokens / the median length
                assert max_tokens is not None
                typical = max(1, max_tokens // max(1, int(np.median(self.lengths)) if len(self.lengths) else 1))
            sort_window = 256 * typical
        if sort_window < 1:
            raise ValueError(f"sort_window must be >= 1, got {sort_window}")
        self.sort_window = sort_window
        self.sampler = sampler  # type: ignore[assignment]  # the injected sampler, or None: not torch's batched one
        self.num_replicas, self.rank = _ranks_of(sampler)
        self._cache: tuple[int, list[list[int]]] | None = None
        self._lengths_crc: int | None = None

    def order_config(self) -> dict[str, Any]:
        if self._lengths_crc is None:
            self._lengths_crc = zlib.crc32(self.lengths.tobytes())
        config = {"length": len(self.lengths), "lengths_crc32": self._lengths_crc, "batch_size": self.batch_size,
                  "max_tokens": self.max_tokens, "shuffle": self.shuffle, "drop_last": self.drop_last,
                  "sort_window": self.sort_window}
        if self.num_replicas > 1 or isinstance(self, DistributedBucketBatchSampler):
            config.update(num_replicas=self.num_replicas)
        return config

    def _sorted_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batches in window-sorted order (before shuffling the batches)."""
        if self.max_tokens is not None:
            epoch = 0  # token batches are formed once: the count is every epoch's
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        n = len(self.lengths)
        generator = epoch_generator(self.seed, epoch, "order")
        order = torch.randperm(n, generator=generator).numpy() if self.shuffle else np.arange(n)
        window = np.arange(n) // self.sort_window
        # Longest first within each window, ties in shuffled order (lexsort is stable).
        order = order[np.lexsort((-self.lengths[order], window))]
        if self.batch_size is not None:
            batches = [order[i : i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
            if self.drop_last and batches and len(batches[-1]) < self.batch_size:
                batches.pop()
        else:
            batches = self._pack_tokens(order, window)
        self._cache = (epoch, batches)
        return batches

    def _pack_tokens(self, order: np.ndarray, window: np.ndarray) -> list[list[int]]:
        assert self.max_tokens is not None
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        lengths = self.lengths[order].tolist()
        windows = window.tolist()
        for position, (index, length) in enumerate(zip(order.tolist(), lengths)):
            new_window = position > 0 and windows[position] != windows[position - 1]
            if current and (new_window or max(longest, length) * (len(current) + 1) > self.max_tokens):
                batches.append(current)
                current, longest = [], 0
            current.append(index)
            longest = max(longest, length)
        if current:
            batches.append(current)
        return batches

    def _groups(self, epoch: int) -> list[list[list[int]]]:
        """The epoch's batches in groups of ``num_replicas`` (one batch each with one rank)."""
        batches = self._sorted_batches(epoch)
        world = self.num_replicas
        if self.drop_last:
            batches = batches[: len(batches) // world * world]
        elif batches and len(batches) % world:
            pad = world - len(batches) % world
            batches = batches + (batches * math.ceil(pad / len(batches)))[:pad]
        return [batches[i : i + world] for i in range(0, len(batches), world)]

    def _shuffled(self, units: list[Any], epoch: int) -> list[Any]:
        if not self.shuffle:
            return units
        permutation = torch.randperm(len(units), generator=epoch_generator(self.seed, epoch, "batches")).tolist()
        return [units[i] for i in permutation]

    def __iter__(self) -> Iterator[list[int]]:
        if self.sampler is not None:
            self._follow_epoch_of(self.sampler)
        epoch, start = self._begin_epoch()
        mine = [group[self.rank] for group in self._shuffled(self._groups(epoch), epoch)]
        return self._counted(mine[start:])

    def __len__(self) -> int:
        return self.epoch_length(self.epoch)

    def epoch_length(self, epoch: int) -> int:
        if self.batch_size is not None and self.num_replicas == 1:
            n = len(self.lengths)
            return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return len(self._groups(epoch))

    def distributed(self, num_replicas: int, rank: int) -> DistributedBucketBatchSampler:
        """This sampler's configuration (and seed) split across ``num_replicas`` ranks, as ``rank``."""
        return DistributedBucketBatchSampler(
            self.lengths, self.batch_size, max_tokens=self.max_tokens, num_replicas=num_replicas, rank=rank,
            shuffle=self.shuffle, drop_last=self.drop_last, seed=self.seed, sort_window=self.sort_window)


class DistributedBucketBatchSampler(BucketBatchSampler):
    """:class:`BucketBatchSampler` split across ranks: every rank gets the same number of
    batches, and at each step the ranks' batches hold similar token counts (see there).

    ``num_replicas`` and ``rank`` come from the initialized process group when not given
    (or from ``sampler``, when Lightning injects one).
    """

    _warn_on_auto_epoch = True

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int | None = None,
        *,
        max_tokens: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        sort_window: int | None = None,
        sampler: tud.Sampler[Any] | None = None,
    ) -> None:
        super().__init__(lengths, batch_size, max_tokens=max_tokens, shuffle=shuffle, drop_last=drop_last,
                         seed=seed, sort_window=sort_window, sampler=sampler)
        if sampler is None:
            self.num_replicas, self.rank = _rank_and_world(num_replicas, rank)
        elif (num_replicas, rank) != (None, None) and (num_replicas, rank) != (self.num_replicas, self.rank):
            raise ValueError(f"DistributedBucketBatchSampler: num_replicas={num_replicas}, rank={rank} given, and a "
                             f"sampler of {self.num_replicas} replicas, rank {self.rank}: give one or the other")


def rank_of(sampler: Any) -> int | None:
    """The rank of a distributed sampler (one with whole-number ``num_replicas`` and
    ``rank``, fastload's or torch's); None for any other sampler, or None."""
    num_replicas, rank = getattr(sampler, "num_replicas", None), getattr(sampler, "rank", None)
    return rank if isinstance(num_replicas, int) and isinstance(rank, int) else None


def _ranks_of(sampler: Any) -> tuple[int, int]:
    """``(num_replicas, rank)`` of a distributed sampler, checked; ``(1, 0)`` for any other."""
    rank = rank_of(sampler)
    return (1, 0) if rank is None else _rank_and_world(sampler.num_replicas, rank)
