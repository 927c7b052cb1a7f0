"""The worker process: fetch samples, collate into a slot, report.

NOTE [ Worker lifecycle ]

* Start: ignore SIGINT (Ctrl-C is the main process's to handle: it shuts the pool
  down), one intra-op thread (a forked child whose parent has run an OpenMP parallel
  region can hang in its own first one), seed ``random``/``numpy``/``torch`` exactly as torch seeds its workers
  (``base_seed + worker_id``), publish ``torch.utils.data.get_worker_info()``, run
  ``worker_init_fn``.
* Loop: wait for a message from the main process (see ``messages.py``) and answer every
  task with exactly one message: a batch, an error, or end-of-data. Errors in the dataset
  or collate function are reported and the worker carries on, like torch's.
* Parent death: a worker never outlives its parent, even while it is busy in a long
  ``__getitem__``. Where the worker was started from the main thread, ``PR_SET_PDEATHSIG``
  makes the kernel kill it as soon as the parent dies. That signal fires when the *thread*
  that started the process exits, not the process, so it cannot be used for workers
  started from another thread (a pool made on a short-lived thread would lose them).
  There, and where ``prctl`` is missing, a daemon thread of the worker checks every
  ``PARENT_CHECK_INTERVAL`` seconds that its parent is still the one it started with
  (``os.getppid()``, as torch's watchdog checks) and ends the process (``os._exit``) when
  it is not. A thread rather than a check between tasks, so that a long ``__getitem__``
  does not delay it. The thread only sleeps and reads the parent's pid: it holds no lock
  that a ``fork()`` in the dataset could copy locked (Python 3.12+ still warns about any
  ``fork()`` in a process with threads), needs the GIL for a moment per check (code that
  holds the GIL for seconds delays the check as long), and shows to the dataset only in
  ``threading.enumerate()`` and ``threading.active_count()``, as ``fastload-parent-watch``.
* Answers cannot kill the worker by failing to pickle. Their fields are built by fastload
  from picklable values (task indices arrived pickled; failures are recorded as text; a
  batch is pickled while it is packed, and a failure there is the task's error), except
  the class of a reported exception: one that cannot be pickled (a local class, say)
  reaches the main process as a ``RuntimeError`` naming it, with its message and the
  worker's traceback.
* Stop: on a ``stop`` message, on EOF of the socket, or on a failed send.
"""

from __future__ import annotations

import copy
import ctypes
import os
import pickle
import random
import signal
import socket
import threading
import time
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any, Callable

import numpy as np
import torch

from ..collate import deferred_collate
from ..fetch import SampleFetcher, SkippedTask, StreamExhausted
from ..sample_errors import OnError
from ..torch_private import ExceptionWrapper, numpy_seed_like_torch, publish_worker_info
from ..telemetry import collect_into
from . import messages
from .arena import WorkerSlots
from .batch_codec import pack_batch

#: How often a worker without the parent-death signal checks that its parent is alive (seconds).
PARENT_CHECK_INTERVAL = 0.1
_PR_SET_PDEATHSIG = 1


@dataclass
class PoolConfig:
    """The loader settings every worker of a pool runs with."""

    dataset: Any
    num_workers: int
    iterable: bool
    auto_collation: bool
    drop_last: bool
    collate_fn: Callable[[Any], Any]
    #: collate with ``deferred_collate`` so that the batch is stacked straight into a slot
    collate_in_slot: bool
    worker_init_fn: Callable[[int], None] | None
    seed_per_sample: bool
    #: see NOTE [ Sample errors ] in sample_errors.py
    on_error: OnError
    #: measure the stages of each batch (NOTE [ Telemetry ] in telemetry.py)
    telemetry: bool
    min_slot_bytes: int
    max_free_slots: int


@dataclass
class WorkerConfig:
    """What one worker is started with; pickled once per worker under spawn/forkserver."""

    pool_config: PoolConfig
    worker_id: int
    #: torch's: the worker seeds its RNGs with base_seed + worker_id
    base_seed: int
    #: the first epoch's seed for per-sample seeding and replacements
    sample_seed: int
    die_with_parent: bool
    #: items of the iterable dataset's stream to skip in the first epoch (a resume)
    skip_items: int = 0


def _set_parent_death_signal() -> bool:
    """Whether the kernel will now kill this process when its parent('s thread) dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        return False


def _watch_parent(parent_pid: int) -> None:
    """Ends this process as soon as its parent is gone (NOTE [ Worker lifecycle ])."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_INTERVAL)
    os._exit(1)


def _seed_like_torch(base_seed: int, worker_id: int) -> int:
    seed = base_seed + worker_id
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(numpy_seed_like_torch(base_seed, worker_id))
    return seed


def worker_main(config: WorkerConfig, conn: Connection) -> None:
    """Entry point of a worker process (module level, so spawn can import it)."""
    parent_pid = os.getppid()
    if config.die_with_parent and _set_parent_death_signal():
        if os.getppid() != parent_pid:  # it died before the signal was armed
            os._exit(1)
    else:
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="fastload-parent-watch", daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    # SCM_RIGHTS needs a socket object; it shares the connection's descriptor.
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        _WorkerLoop(config, conn, sock).run()
    except (BrokenPipeError, ConnectionResetError, EOFError):
        pass  # the main process went away: nothing to report to
    finally:
        sock.close()


class _WorkerLoop:
    def __init__(self, config: WorkerConfig, conn: Connection, sock: socket.socket) -> None:
        self.config = config
        self.pool_config = config.pool_config
        self.conn = conn
        self.sock = sock
        self.slots = WorkerSlots(self.pool_config.min_slot_bytes, self.pool_config.max_free_slots)
        self.fetcher = SampleFetcher(
            self.pool_config.dataset,
            iterable=self.pool_config.iterable,
            auto_collation=self.pool_config.auto_collation,
            drop_last=self.pool_config.drop_last,
            seed_per_sample=self.pool_config.seed_per_sample,
            restore_rng=False,
            on_error=self.pool_config.on_error,
            stream=f"worker {config.worker_id}",
        )
        self.where = f"DataLoader worker {config.worker_id} (pid {os.getpid()})"

    def run(self) -> None:
        config, pool_config = self.config, self.pool_config
        seed = _seed_like_torch(config.base_seed, config.worker_id)
        publish_worker_info(config.worker_id, pool_config.num_workers, seed, pool_config.dataset)
        try:
            if pool_config.worker_init_fn is not None:
                pool_config.worker_init_fn(config.worker_id)
            self.fetcher.start_epoch(config.sample_seed, config.skip_items)
        except Exception:
            wrapper = ExceptionWrapper(where=f"{self.where} while starting (worker_init_fn / iter(dataset))")
            self._send(messages.Error(None, self.slots.take_retired(), wrapper))
            return
        while True:
            message = self._receive()
            if isinstance(message, messages.Stop):
                return
            self.slots.release(message.released)
            if isinstance(message, messages.StartEpoch):
                self._start_epoch(message)
            else:
                self._run_task(message)

    def _receive(self) -> Any:
        return pickle.loads(self.conn.recv_bytes())

    def _start_epoch(self, message: messages.StartEpoch) -> None:
        try:
            self.fetcher.start_epoch(message.sample_seed, message.skip_items)
        except Exception:
            wrapper = ExceptionWrapper(where=f"{self.where} while calling iter(dataset)")
            self._send(messages.Error(None, self.slots.take_retired(), wrapper))

    def _run_task(self, task: messages.Task) -> None:
        reported: dict[str, float] = {}
        started = time.perf_counter() if self.pool_config.telemetry else 0.0
        previous = collect_into(reported) if self.pool_config.telemetry else None
        try:
            samples = self.fetcher.fetch(task.indices)
        except StreamExhausted:
            self._send(messages.EndOfData(task.task_id, self.slots.take_retired(), self.fetcher.take_failures()))
            return
        except SkippedTask:
            self._send(messages.Skipped(task.task_id, self.slots.take_retired(), self.fetcher.take_failures()))
            return
        except Exception as exc:
            self.fetcher.take_failures()  # the error ends the epoch; it says what happened
            self._send_error(task, exc, self.fetcher.current_index)
            return
        finally:
            if self.pool_config.telemetry:
                collect_into(previous)
        fetched = time.perf_counter() if self.pool_config.telemetry else 0.0
        try:
            collate = deferred_collate if self.pool_config.collate_in_slot else self.pool_config.collate_fn
            batch = self.fetcher.collate(samples, collate)
            packed = pack_batch(batch, self.slots)
        except Exception as exc:
            self.fetcher.take_failures()
            self._send_error(task, exc, None)
            return
        telemetry = None
        if self.pool_config.telemetry:
            count = len(samples) if self.pool_config.auto_collation else 1
            telemetry = (started, fetched, time.perf_counter(), count, reported or None)
        slot = packed.slot
        self._send(
            messages.Batch(
                task_id=task.task_id,
                retired=self.slots.take_retired(),
                slot_id=None if slot is None else slot.slot_id,
                new_slot_capacity=None if slot is None or slot.new_fd is None else slot.capacity,
                nbytes=packed.nbytes,
                layout=packed.layout,
                skeleton=packed.skeleton,
                failures=self.fetcher.take_failures(),
                telemetry=telemetry,
            )
        )
        if slot is not None and slot.new_fd is not None:
            reduction.sendfds(self.sock, [slot.new_fd])
            self.slots.sent(slot.slot_id)

    def _send_error(self, task: messages.Task, exc: BaseException, index: Any) -> None:
        if index is None:
            where = f"{self.where} while building the batch of task {task.task_id} (sample indices {task.indices!r})"
        else:
            where = f"{self.where} while fetching sample index {index!r}"
        wrapper = ExceptionWrapper(exc_info=(type(exc), exc, exc.__traceback__), where=where)
        self._send(messages.Error(task.task_id, self.slots.take_retired(), wrapper))

    def _send(self, message: Any) -> None:
        try:
            data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            if not isinstance(message, messages.Error):
                raise
            # See NOTE [ Worker lifecycle ]: only an exception's class can fail to pickle.
            message = copy.copy(message)
            message.error = _as_runtime_error(message.error, exc)
            data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self.conn.send_bytes(data)


def _as_runtime_error(wrapper: ExceptionWrapper, reason: Exception) -> ExceptionWrapper:
    """``wrapper``, whose exception class cannot be pickled, as a ``RuntimeError`` that
    says what was raised: the class's name, then (as always) its message and traceback."""
    cls = wrapper.exc_type
    picklable = copy.copy(wrapper)
    picklable.exc_type = RuntimeError
    picklable.where = (f"{wrapper.where}: an exception of class {cls.__module__}.{cls.__qualname__}, which cannot be "
                       f"pickled to reach the main process ({reason}), so it is re-raised as RuntimeError")
    return picklable
