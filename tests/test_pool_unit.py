"""The pool as a unit, below DataLoader: the slot protocol's two sides (``WorkerSlots``
in a worker, ``SlotTable`` in the main process), the batch codec, and ``WorkerPool``
driven directly with tasks. Each test is one rule of NOTE [ Slot protocol ] (arena.py)
or of the pool's contract (pool.py)."""

from __future__ import annotations

import dataclasses
import gc
import multiprocessing
import os
import signal
from collections import namedtuple

import numpy as np
import pytest
import torch

from fastload.collate import default_collate
from fastload.pool import WorkerDiedError
from fastload.pool.arena import SLOT_GRANULE, SlotTable, WorkerSlots
from fastload.pool.batch_codec import pack_batch, unpack_batch
from fastload.pool.pool import WorkerPool
from fastload.pool.worker import PoolConfig

from .datasets import FailsAt, KillsItself, Squares
from .helpers import assert_same

# -- WorkerSlots: a worker's own slots ------------------------------------------------


def test_a_new_slot_is_at_least_the_batch_rounded_to_the_granule_and_comes_with_its_descriptor():
    slots = WorkerSlots(min_capacity=1, max_free=2)
    slot = slots.acquire(SLOT_GRANULE + 1)
    assert slot.capacity == 2 * SLOT_GRANULE and slot.new_fd is not None
    assert len(slot.buffer) == slot.capacity


def test_a_slot_in_use_is_never_handed_out_again():
    slots = WorkerSlots(min_capacity=1024, max_free=2)
    first, second = slots.acquire(10), slots.acquire(10)
    assert first.slot_id != second.slot_id


def test_a_sent_slot_drops_its_descriptor_and_is_reused_once_released():
    slots = WorkerSlots(min_capacity=1024, max_free=2)
    slot = slots.acquire(100)
    slots.sent(slot.slot_id)
    slots.release([slot.slot_id])
    again = slots.acquire(100)
    assert again.slot_id == slot.slot_id and again.new_fd is None


def test_the_smallest_free_slot_that_fits_is_reused():
    slots = WorkerSlots(min_capacity=1, max_free=4)
    small, large = slots.acquire(SLOT_GRANULE), slots.acquire(3 * SLOT_GRANULE)
    slots.release([small.slot_id, large.slot_id])
    assert slots.acquire(10).slot_id == small.slot_id


def test_free_slots_beyond_max_free_are_retired_smallest_first_and_reported_once():
    slots = WorkerSlots(min_capacity=1, max_free=1)
    small, large = slots.acquire(SLOT_GRANULE), slots.acquire(2 * SLOT_GRANULE)
    slots.release([small.slot_id, large.slot_id])
    assert slots.take_retired() == [small.slot_id] and slots.take_retired() == []


def test_free_slots_too_small_for_a_batch_are_retired_instead_of_kept_beside_a_new_one():
    slots = WorkerSlots(min_capacity=1, max_free=4)
    small = slots.acquire(SLOT_GRANULE)
    slots.release([small.slot_id])
    bigger = slots.acquire(4 * SLOT_GRANULE)
    assert bigger.slot_id != small.slot_id and slots.take_retired() == [small.slot_id]


def test_a_slot_whose_batch_never_left_is_free_again_with_its_descriptor():
    slots = WorkerSlots(min_capacity=1024, max_free=2)
    slot = slots.acquire(10)
    slots.release_unsent(slot.slot_id)
    again = slots.acquire(10)
    assert again.slot_id == slot.slot_id and again.new_fd == slot.new_fd


# -- SlotTable: the main process's side ---------------------------------------------------


def mapped(table: SlotTable, slots: WorkerSlots, nbytes: int, incarnation: int = 0):
    """A slot made by ``slots`` (the worker), mapped by ``table`` as the main process maps
    one it received: through a descriptor of its own."""
    slot = slots.acquire(nbytes)
    table.map(incarnation, slot.slot_id, os.dup(slot.new_fd), slot.capacity)
    slots.sent(slot.slot_id)
    return slot


def test_what_a_worker_writes_the_main_process_sees_in_its_view():
    table, slots = SlotTable(), WorkerSlots(min_capacity=1024, max_free=2)
    slot = mapped(table, slots, 16)
    slot.buffer[:4] = b"\x01\x02\x03\x04"
    assert table.view(0, slot.slot_id, 4).tolist() == [1, 2, 3, 4]


def test_dropping_the_last_view_releases_the_slot_once_to_its_incarnation():
    table, slots = SlotTable(), WorkerSlots(min_capacity=1024, max_free=2)
    slot = mapped(table, slots, 16)
    view = table.view(0, slot.slot_id, 16)
    alias = view[2:5]
    del view
    gc.collect()
    assert table.take_released(0) == []  # a part of the view is alive
    del alias
    gc.collect()
    assert table.take_released(1) == [] and table.take_released(0) == [slot.slot_id] and table.take_released(0) == []


def test_a_forgotten_incarnations_releases_are_ignored_and_its_slot_ids_never_confused():
    table = SlotTable()
    dead, restarted = WorkerSlots(min_capacity=1024, max_free=2), WorkerSlots(min_capacity=1024, max_free=2)
    old = mapped(table, dead, 16, incarnation=0)
    kept = table.view(0, old.slot_id, 16)  # a batch the user still holds
    table.forget(0)
    new = mapped(table, restarted, 16, incarnation=1)  # the same slot id, another process
    assert new.slot_id == old.slot_id
    del kept
    gc.collect()
    assert table.take_released(1) == [] and table.take_released(0) == []


def test_a_retired_slots_live_view_stays_valid():
    table, slots = SlotTable(), WorkerSlots(min_capacity=1024, max_free=2)
    slot = mapped(table, slots, 16)
    slot.buffer[:2] = b"\x07\x08"
    view = table.view(0, slot.slot_id, 2)
    table.retire(0, [slot.slot_id])
    gc.collect()
    assert view.tolist() == [7, 8]
    with pytest.raises(KeyError):
        table.view(0, slot.slot_id, 2)


# -- the batch codec: every kind of leaf, there and back ----------------------------------

Pair = namedtuple("Pair", ["left", "right"])


@dataclasses.dataclass
class Record:
    name: str
    value: torch.Tensor


LEAVES = {
    "float32": torch.randn(3, 4),
    "int64": torch.arange(6).view(2, 3),
    "bool": torch.tensor([True, False, True]),
    "float16": torch.randn(5).half(),
    "bfloat16": torch.randn(5).bfloat16(),
    "uint8 image": torch.randint(0, 255, (3, 8, 8), dtype=torch.uint8),
    "0-d": torch.tensor(3.5),
    "empty": torch.empty(0, 4),
    "transposed": torch.arange(12.0).view(3, 4).t(),
    "channels_last": torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last),
    "expanded": torch.arange(3.0).view(3, 1).expand(3, 4),
    "column (copied compact)": torch.arange(12.0).view(3, 4)[:, 1],
    "numpy float64": np.random.default_rng(0).random((2, 3)),
    "numpy int32": np.arange(5, dtype=np.int32),
    "numpy complex": np.array([1 + 2j, 3j]),
    "numpy empty": np.zeros((0, 2), np.float32),
    "numpy scalar": np.float32(2.5),
    "python values": {"n": 3, "x": 0.5, "s": "text", "none": None},
    "requires grad (pickled)": torch.ones(2, requires_grad=True),
    "object array (pickled)": np.array(["a", 1], dtype=object),
    "nested": {"pair": Pair(torch.ones(2), [np.arange(3), ("t", torch.zeros(1, dtype=torch.int16))]),
               "record": Record("r", torch.full((2,), 7))},
}


@pytest.mark.parametrize("kind", list(LEAVES))
def test_a_batch_comes_back_equal_with_its_strides(kind):
    batch = LEAVES[kind]
    table, slots = SlotTable(), WorkerSlots(min_capacity=1024, max_free=2)
    packed = pack_batch(batch, slots)
    view = None
    if packed.slot is not None:
        table.map(0, packed.slot.slot_id, os.dup(packed.slot.new_fd), packed.slot.capacity)
        view = table.view(0, packed.slot.slot_id, packed.nbytes)
    unpacked = unpack_batch(packed.skeleton, packed.layout, view)
    if kind.endswith("(pickled)"):
        assert packed.slot is None
        assert torch.equal(unpacked, batch) if isinstance(batch, torch.Tensor) else list(unpacked) == list(batch)
        return
    assert_same(unpacked, batch)
    if isinstance(batch, torch.Tensor) and not kind.startswith("column"):
        assert unpacked.stride() == batch.stride()


def test_leaves_live_in_the_slot_without_a_copy():
    table, slots = SlotTable(), WorkerSlots(min_capacity=1024, max_free=2)
    packed = pack_batch({"x": torch.zeros(4), "y": np.zeros(2)}, slots)
    table.map(0, packed.slot.slot_id, os.dup(packed.slot.new_fd), packed.slot.capacity)
    unpacked = unpack_batch(packed.skeleton, packed.layout, table.view(0, packed.slot.slot_id, packed.nbytes))
    packed.slot.buffer[0:4] = np.float32(9).tobytes()  # the worker writes the slot again
    assert unpacked["x"][0].item() == 9.0


def test_a_batch_without_arrays_needs_no_slot():
    packed = pack_batch(["a", 1, {"b": None}], WorkerSlots(min_capacity=1024, max_free=2))
    assert packed.slot is None and packed.nbytes == 0
    assert unpack_batch(packed.skeleton, packed.layout, None) == ["a", 1, {"b": None}]


# -- WorkerPool, driven directly ------------------------------------------------------------


def pool_config(dataset, workers: int = 2, **changes) -> PoolConfig:
    return PoolConfig(**{**dict(dataset=dataset, num_workers=workers, iterable=False, auto_collation=True,
                                drop_last=False, collate_fn=default_collate, collate_in_slot=False,
                                worker_init_fn=None, seed_per_sample=False, on_error="raise", telemetry=False,
                                min_slot_bytes=1 << 16, max_free_slots=4), **changes})


@pytest.fixture
def make_pool():
    pools = []

    def make(dataset, workers: int = 2, max_restarts: int = 0, **changes) -> WorkerPool:
        pool = WorkerPool(pool_config(dataset, workers, **changes), multiprocessing.get_context("fork"), base_seed=1,
                          sample_seed=2, max_restarts=max_restarts)
        pools.append(pool)
        return pool
    yield make
    for pool in pools:
        pool.shutdown()


def test_each_task_is_answered_once_with_its_batch_and_task_ids_increase(make_pool):
    pool = make_pool(Squares(8))
    ids = [pool.submit(k % 2, [2 * k, 2 * k + 1]) for k in range(4)]
    assert ids == [0, 1, 2, 3] and pool.next_task_id == 4
    assert [pool.load(w) for w in (0, 1)] == [2, 2]
    answers = {}
    while len(answers) < 4:
        answer = pool.receive(timeout=30)
        answers[answer.task_id] = answer
    assert [pool.load(w) for w in (0, 1)] == [0, 0]
    for k, answer in answers.items():
        assert answer.kind == "batch" and answer.worker_id == k % 2
        assert answer.value[1].tolist() == [2 * k, 2 * k + 1]


def test_a_worker_answers_its_tasks_in_the_order_they_were_sent(make_pool):
    pool = make_pool(Squares(20), workers=1)
    ids = [pool.submit(0, [k]) for k in range(6)]
    assert [pool.receive(timeout=30).task_id for _ in ids] == ids


def test_an_exception_comes_back_as_an_error_answer_and_the_worker_goes_on(make_pool):
    pool = make_pool(FailsAt(bad=3, n=8), workers=1)
    failing, next_one = pool.submit(0, [3]), pool.submit(0, [4])
    error = pool.receive(timeout=30)
    assert (error.task_id, error.kind) == (failing, "error")
    with pytest.raises(ValueError, match="corrupt sample 3"):
        error.value.reraise()
    assert pool.receive(timeout=30).task_id == next_one


def test_a_dead_worker_is_reported_with_its_pid_signal_and_the_indices_it_held(make_pool):
    pool = make_pool(KillsItself(bad=5, sig=signal.SIGKILL), workers=1)
    pool.submit(0, [4, 5])
    pid = pool.processes[0].pid
    with pytest.raises(WorkerDiedError) as raised:
        while True:
            pool.receive(timeout=30)
    assert raised.value.pid == pid and raised.value.indices == [4, 5]
    assert raised.value.exitcode == -signal.SIGKILL


def test_a_restarted_worker_answers_the_dead_ones_tasks(make_pool):
    pool = make_pool(Squares(8), workers=1, max_restarts=1)
    dead = pool.processes[0]
    os.kill(dead.pid, signal.SIGKILL)
    dead.join()
    ids = [pool.submit(0, [k]) for k in (4, 5, 6)]  # sent to the dead one: re-sent to its replacement
    answers = [pool.receive(timeout=30) for _ in ids]
    assert [a.task_id for a in answers] == ids and [a.value[1].tolist() for a in answers] == [[4], [5], [6]]
    assert pool.restarts == 1 and pool.processes[0].pid != dead.pid


def test_answers_of_an_abandoned_epoch_are_dropped_and_not_counted_as_load(make_pool):
    pool = make_pool(Squares(20), workers=1)
    pool.submit(0, [0])  # the epoch is left before its answer
    first = pool.start_epoch(sample_seed=5)
    assert first == pool.next_task_id == 1 and pool.load(0) == 0
    task = pool.submit(0, [7])
    assert pool.load(0) == 1
    answer = pool.receive(timeout=30)
    assert answer.task_id == task and answer.value[1].tolist() == [7]


def test_shutdown_stops_every_worker_and_can_be_repeated(make_pool):
    pool = make_pool(Squares(8))
    processes = list(pool.processes)
    pool.shutdown()
    pool.shutdown()
    assert all(not p.is_alive() for p in processes)
