"""WorkerPool: the worker processes, their sockets and slots, as one unit.

NOTE [ Pool shutdown ]

``shutdown()`` is idempotent and runs from: the end of an epoch (non-persistent pools),
the iterator's or loader's finalizer (``del``, early ``break`` then garbage collection),
interpreter exit (``weakref.finalize`` runs at exit), and any error path (a dead worker,
a timeout, KeyboardInterrupt). Order:

1. send ``Stop`` to every worker still alive (a worker blocked in a long
   ``__getitem__`` reads it when done);
2. join each worker for a short grace period, then SIGTERM, then SIGKILL: shutdown
   never hangs on a stuck worker;
3. close the sockets. Slot maps held by live batches stay valid: batches the user keeps
   outlive the pool (see NOTE [ Slot protocol ] in ``arena.py``).

Workers also exit on their own when the main process dies (NOTE [ Worker lifecycle ]
in ``worker.py``), and slots are anonymous memfds, so even SIGKILL of the main process
leaves neither processes nor /dev/shm entries behind.

NOTE [ Worker restart ]

With ``max_worker_restarts=n`` (map-style datasets), a worker that dies is replaced, up
to n times over the pool's life: the new process takes the dead one's place and worker
id, is seeded as it was (and given the epoch's seed), and is sent again, in order, every
task the dead one had not answered. Answers the dead worker did send were kept. So each
task is answered exactly once, and with ``in_order`` the batches come out in the order
they would have without the death: the same indices. Their augmentations are the same
only where the dataset's randomness is seeded per sample (``seed_per_sample=True``) or
absent, since the new process starts from the dead one's seed, not from where its RNG
state had got to. The new process's slots are filed under a new *incarnation* number, so
slot ids it reuses can never be confused with the dead one's (whose batches the user may
still hold: they stay valid).

NOTE [ Epochs on a persistent pool ]

A persistent pool serves epoch after epoch, and an epoch may be left before its end (a
``break``, a new ``iter()``): its tasks still in the workers are answered later. Task ids
increase over the pool's life, across epochs, and ``start_epoch`` sets the first id of
the new epoch as a floor: an answer to a task below it is stale. A stale batch is still
unpacked (its message may map a new slot, and dropping the batch releases that slot, so
the worker gets it back) and then dropped, as is a stale error or end of stream; the
workers are told the new epoch's seed (and, on a resume, the stream items to skip) by a
``StartEpoch`` message that queues behind the old epoch's tasks, so every task is run
with the seed of the epoch it belongs to.
"""

from __future__ import annotations

import array
import errno
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field
from multiprocessing import reduction
from multiprocessing.connection import Connection, wait
from collections.abc import Callable
from typing import Any, cast

import numpy as np

from . import messages, warm_start
from .arena import SlotTable, too_many_open_files
from .batch_codec import unpack_batch
from ..telemetry import BatchRecord
from .worker import PoolConfig, WorkerConfig, worker_main

#: Seconds a stopping worker gets before SIGTERM, and again before SIGKILL. An idle
#: worker exits at once; this only bounds one that is busy in ``__getitem__``.
STOP_GRACE = 2.0

logger = logging.getLogger("fastload")


class WorkerDiedError(RuntimeError):
    """A worker process exited, or could no longer be reached, while the main process
    waited for its batches.

    Attributes: ``worker_id``, ``pid``, ``exitcode`` (``None`` if the process was still
    running when its connection to the main process broke: it is then stopped),
    ``signal`` (``None`` if it was not killed by a signal) and ``indices``: the sample
    indices of the tasks it held.
    """

    def __init__(self, worker_id: int, pid: int | None, exitcode: int | None, indices: list[Any],
                 restarts: str = "") -> None:
        self.worker_id = worker_id
        self.pid = pid
        self.exitcode = exitcode
        self.signal = -exitcode if exitcode is not None and exitcode < 0 else None
        self.indices = indices
        if exitcode is None:
            how = "lost its connection to the main process while still running (it was stopped)"
        elif self.signal is not None:
            how = f"was killed by signal {self.signal} ({signal.Signals(self.signal).name})"
        else:
            how = f"exited unexpectedly with exit code {exitcode}"
        hint = " (killed by the kernel's OOM killer? check `dmesg`)" if self.signal == signal.SIGKILL else ""
        super().__init__(
            f"DataLoader worker {worker_id} (pid {pid}) {how}{hint} while holding sample indices {indices}{restarts}"
        )


@dataclass
class Received:
    """One answer to one task, as the iterator sees it."""

    task_id: int
    worker_id: int
    kind: str  # "batch" | "skipped" | "error" | "end"
    value: Any = None  # the batch, or the ExceptionWrapper
    #: samples left out or replaced (NOTE [ Sample errors ] in sample_errors.py)
    failures: list[Any] = field(default_factory=list)
    #: bytes of the batch's slot
    nbytes: int = 0
    #: with telemetry: the batch's record (NOTE [ Telemetry ] in telemetry.py)
    telemetry: BatchRecord | None = None


class WorkerPool:
    """``num_workers`` processes that answer tasks with batches in shared-memory slots.

    Not thread-safe: one thread iterates. Tasks are answered per worker in the order
    they were sent to it; across workers, in any order.
    """

    def __init__(self, config: PoolConfig, context: multiprocessing.context.BaseContext, base_seed: int,
                 sample_seed: int, max_restarts: int = 0, skip_items: list[int] | None = None) -> None:
        self.config = config
        self.slots = SlotTable()
        self._context = context
        # spawn/forkserver: workers fork from the warm server (NOTE [ Warm start ]).
        self._warm = warm_start.uses_warm_start(context)
        self._start_context: Any = warm_start.WarmContext(context.get_start_method()) if self._warm else context
        #: the configuration pickled once for warm workers; False where it must go per worker
        self._shared_config: warm_start.SharedPickle | bool | None = None
        #: the workers' RNGs are seeded base_seed + worker_id, for the pool's life (torch's rule)
        self.base_seed = base_seed
        #: iterable datasets: items each worker skips at the start of its first epoch (a resume)
        self._skip_items = skip_items
        #: the current epoch's sample seed: what a restarted worker must use
        self._sample_seed = sample_seed
        self.max_restarts = max_restarts
        #: workers replaced so far (see NOTE [ Worker restart ])
        self.restarts = 0
        #: the slot-table key of each worker's current process
        self._incarnation = list(range(config.num_workers))
        self._conns: list[Connection] = []
        self._socks: list[socket.socket] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        #: task_id -> indices, per worker: what a worker holds, for error messages
        self.outstanding: list[dict[int, Any]] = [dict() for _ in range(config.num_workers)]
        #: task ids increase over the pool's life, across epochs (NOTE [ Epochs on a persistent pool ])
        self._next_task_id = 0
        #: answers with a task id below this belong to an abandoned epoch and are dropped
        self._current_floor = 0
        #: whether a worker takes new tasks (not after its iterable dataset ran out)
        self._accepting = [True] * config.num_workers
        # Registered first: it sees the lists fill up, so a failed start is cleaned up too.
        self._finalizer = weakref.finalize(self, _shutdown_processes, os.getpid(), self._processes, self._conns,
                                           self._socks)
        try:
            for worker_id in range(config.num_workers):
                self._start_worker(worker_id)
        except BaseException:
            self.shutdown(grace=0.0)
            raise
        self._skip_items = None  # only the first epoch of the first workers skips (a resume)

    def _start_worker(self, worker_id: int) -> None:
        """Starts worker ``worker_id``'s process, in a new place or in a dead one's."""
        try:
            main_end, worker_end = self._context.Pipe(duplex=True)
        except OSError as exc:
            if exc.errno == errno.EMFILE:
                raise too_many_open_files("A DataLoader cannot start its worker processes.") from exc
            raise
        # The kernel's parent-death signal fires when the thread that started the process
        # exits: only the main thread lives as long as the process (NOTE [ Worker lifecycle ]).
        die_with_parent = threading.current_thread() is threading.main_thread()
        skip = self._skip_items[worker_id] if self._skip_items else 0
        try:
            pool_config = self._warm_config() if self._warm else self.config
        except BaseException:
            main_end.close()
            worker_end.close()
            raise
        worker_config = WorkerConfig(pool_config, worker_id, self.base_seed, self._sample_seed, die_with_parent, skip)
        target: Callable[..., None]
        args: tuple[Any, ...]
        if self._warm:
            target, args = warm_start.warm_worker_main, (warm_start.ProcessState(), worker_config, worker_end)
        else:
            target, args = worker_main, (worker_config, worker_end)
        process = self._start_context.Process(target=target, args=args, name=f"fastload-worker-{worker_id}",
                                              daemon=True)
        sock = socket.socket(fileno=os.dup(main_end.fileno()))
        if worker_id < len(self._processes):
            self._conns[worker_id], self._socks[worker_id], self._processes[worker_id] = main_end, sock, process
        else:
            self._conns.append(main_end)
            self._socks.append(sock)
            self._processes.append(process)
        try:
            process.start()
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            # spawn/forkserver pickle the worker's configuration in start(), before any
            # worker runs: torch's warning (tools match on it), then an error that says
            # which object could not be sent, not just that one could not.
            warnings.warn(TORCH_PICKLE_WARNING, stacklevel=2)
            raise _unpicklable(self.config, self._context, exc) from exc
        except OSError as exc:
            if exc.errno == errno.EMFILE:
                raise too_many_open_files("A DataLoader cannot start its worker processes.") from exc
            raise
        finally:
            worker_end.close()  # so that later workers do not inherit it

    def _warm_config(self) -> PoolConfig:
        """The configuration a warm worker is sent: pickled once into shared memory (it
        unpickles as the PoolConfig), or, if only multiprocessing's own pickler can send
        it, the PoolConfig itself, pickled per worker (NOTE [ Warm start ])."""
        warm_start.server()
        if self._shared_config is None:
            try:
                self._shared_config = warm_start.SharedPickle(self.config)
            except Exception:  # NeedsMultiprocessing, or unpicklable: the per-worker pickling names what
                self._shared_config = False
        return cast(PoolConfig, self._shared_config or self.config)

    @property
    def num_workers(self) -> int:
        return self.config.num_workers

    @property
    def processes(self) -> list[multiprocessing.process.BaseProcess]:
        """The worker processes, by worker id (a restart replaces its entry in place)."""
        return self._processes

    def is_active(self, worker_id: int) -> bool:
        return self._accepting[worker_id]

    @property
    def next_task_id(self) -> int:
        """The id the next task submitted will have."""
        return self._next_task_id

    def submit(self, worker_id: int, indices: Any) -> int:
        """Send a task (a batch of indices, one index, or an iterable dataset's placeholder)
        to ``worker_id``; returns its id. It is outstanding until answered."""
        task_id = self._next_task_id
        self._next_task_id += 1
        released = self.slots.take_released(self._incarnation[worker_id])
        self._send(worker_id, messages.Task(task_id, indices, released))
        self.outstanding[worker_id][task_id] = indices
        return task_id

    def load(self, worker_id: int) -> int:
        """How many of the current epoch's tasks ``worker_id`` has not answered yet (an
        abandoned epoch's are answered and dropped, and do not count: NOTE [ Epochs on a
        persistent pool ])."""
        return sum(1 for task_id in self.outstanding[worker_id] if task_id >= self._current_floor)

    def start_epoch(self, sample_seed: int, skip_items: list[int] | None = None) -> int:
        """Begin a new epoch on a persistent pool (NOTE [ Epochs on a persistent pool ]):
        answers to earlier tasks will be dropped; returns the id of the epoch's first task.
        ``skip_items``: per worker, items its iterable dataset's stream skips (a resume)."""
        self._current_floor = self._next_task_id
        self._sample_seed = sample_seed
        for worker_id in range(self.num_workers):
            if self._processes[worker_id].is_alive():
                released = self.slots.take_released(self._incarnation[worker_id])
                skip = skip_items[worker_id] if skip_items else 0
                self._send(worker_id, messages.StartEpoch(sample_seed, released, skip))
        return self._current_floor

    def _send(self, worker_id: int, message: Any) -> None:
        try:
            self._conns[worker_id].send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the worker is dead; receive() reports it with its exit status

    def receive(self, timeout: float | None) -> Received:
        """The next answer from any worker. Raises ``WorkerDiedError`` or, after
        ``timeout`` seconds without an answer, ``RuntimeError`` (torch's message)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            waiting = [w for w in range(self.num_workers) if self.outstanding[w]]
            if not waiting:
                raise RuntimeError("fastload internal error: waiting for a batch while no task is outstanding")
            handles: list[Any] = [self._conns[w] for w in waiting]
            handles += [self._processes[w].sentinel for w in waiting]
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait(handles, remaining)
            if not ready:
                raise RuntimeError(f"DataLoader timed out after {timeout} seconds")
            for worker_id in waiting:
                conn = self._conns[worker_id]
                if conn in ready or (self._processes[worker_id].sentinel in ready and conn.poll(0)):
                    received = self._read(worker_id)
                    if received is not None:
                        return received
                    break
                if self._processes[worker_id].sentinel in ready:
                    self._worker_died(worker_id)
                    break  # restarted: wait again, on the new process

    def _read(self, worker_id: int) -> Received | None:
        arrived = time.perf_counter() if self.config.telemetry else 0.0
        try:
            message = pickle.loads(self._conns[worker_id].recv_bytes())
        except (EOFError, ConnectionResetError):
            self._worker_died(worker_id)
            return None
        self.slots.retire(self._incarnation[worker_id], message.retired)
        if isinstance(message, messages.Error) and message.task_id is None:
            message.error.reraise()  # the worker could not start its epoch: the pool is unusable
        task_id = message.task_id
        assert task_id is not None  # only an Error of an epoch's start has none
        # Unpacked even when stale: it maps a new slot, and dropping it releases the slot.
        try:
            value = self._unpack(worker_id, message) if isinstance(message, messages.Batch) else None
        except _DiedMidMessage:
            self._worker_died(worker_id)  # the task is still outstanding: a restart re-issues it
            return None
        self.outstanding[worker_id].pop(task_id, None)
        if task_id < self._current_floor:
            return None
        if isinstance(message, messages.Batch):
            telemetry = None
            if message.telemetry is not None:
                started, fetched, collated, samples, reported = message.telemetry
                telemetry = (self._processes[worker_id].pid or 0, started, fetched, collated, arrived,
                             time.perf_counter(), samples, reported)
            return Received(task_id, worker_id, "batch", value, message.failures, message.nbytes, telemetry)
        if isinstance(message, messages.Skipped):
            return Received(task_id, worker_id, "skipped", None, message.failures)
        if isinstance(message, messages.Error):
            return Received(task_id, worker_id, "error", message.error)
        return Received(task_id, worker_id, "end", failures=message.failures)

    def _unpack(self, worker_id: int, message: messages.Batch) -> Any:
        incarnation = self._incarnation[worker_id]
        if message.new_slot_capacity is not None:
            try:
                fd = _receive_fd(self._socks[worker_id])
            except (EOFError, OSError) as exc:
                raise _DiedMidMessage from exc
            assert message.slot_id is not None  # a new slot has an id
            self.slots.map(incarnation, message.slot_id, fd, message.new_slot_capacity)
        view: np.ndarray | None = None
        if message.slot_id is not None:
            view = self.slots.view(incarnation, message.slot_id, message.nbytes)
        return unpack_batch(message.skeleton, message.layout, view)

    def _worker_died(self, worker_id: int) -> None:
        """Restarts the worker (NOTE [ Worker restart ]) or raises ``WorkerDiedError``."""
        process = self._processes[worker_id]
        exitcode = _wait_for_exit(process, STOP_GRACE)
        if exitcode is None:  # running, but its connection broke: of no use, and must not linger
            process.kill()
            process.join()
        indices = [i for task in self.outstanding[worker_id].values() for i in _as_list(task)]
        if self.restarts >= self.max_restarts or self.config.iterable:
            used = f" (after {self.restarts} worker restarts, max_worker_restarts={self.max_restarts})" \
                if self.max_restarts else ""
            raise WorkerDiedError(worker_id, process.pid, exitcode, indices, used)
        died = WorkerDiedError(worker_id, process.pid, exitcode, indices)
        self._conns[worker_id].close()
        self._socks[worker_id].close()
        self.slots.forget(self._incarnation[worker_id])
        self._incarnation[worker_id] = max(self._incarnation) + 1
        self.restarts += 1
        self._start_worker(worker_id)
        for task_id, task in sorted(self.outstanding[worker_id].items()):
            self._send(worker_id, messages.Task(task_id, task))
        logger.warning("fastload: %s; restarted it as pid %d (restart %d of max_worker_restarts=%d)",
                       died, self._processes[worker_id].pid, self.restarts, self.max_restarts)

    def retire_worker(self, worker_id: int) -> None:
        """Stop sending to a worker that has exhausted its iterable dataset this epoch."""
        self._accepting[worker_id] = False

    def reactivate(self) -> None:
        """All workers take tasks again (a new epoch of a persistent iterable pool)."""
        self._accepting = [True] * self.num_workers

    def shutdown(self, grace: float = STOP_GRACE) -> None:
        """Stop the workers (idempotent). ``grace=0`` on failure paths: a worker still
        busy then is stuck or irrelevant, and the error should surface now."""
        if isinstance(self._shared_config, warm_start.SharedPickle):
            self._shared_config.close()
        detached = self._finalizer.detach()
        if detached is not None:
            _, shutdown, args, _ = detached
            shutdown(*args, grace)  # type: ignore[call-arg]  # _shutdown_processes(..., grace)


def _unpicklable(config: PoolConfig, context: Any, exc: BaseException) -> TypeError:
    method = context.get_start_method()
    for name in ("dataset", "collate_fn", "worker_init_fn"):
        value = getattr(config, name)
        try:
            reduction.ForkingPickler.dumps(value)
        except Exception as error:
            return TypeError(
                f"fastload: with the {method!r} start method every worker receives the DataLoader's {name} by "
                f"pickling, and {name}={value!r} cannot be pickled: {error}. Define it at module level (no lambdas "
                "or local classes) without open files, locks or sockets, or use multiprocessing_context='fork'."
            )
    return TypeError(f"fastload: with the {method!r} start method the worker's configuration cannot be pickled: {exc}")


class _DiedMidMessage(Exception):
    """The worker died between a batch message and the slot descriptor that follows it."""


def _receive_fd(sock: socket.socket) -> int:
    """The slot descriptor that follows a batch message (sent by ``reduction.sendfds``).

    Raises ``EOFError`` if none came (the worker is gone), and at this process's limit of
    open descriptors, where the kernel drops the descriptor and says so with
    ``MSG_CTRUNC``, ``RuntimeError`` with torch's advice."""
    fds = array.array("i")
    try:
        data, ancdata, flags, _ = sock.recvmsg(1, socket.CMSG_SPACE(fds.itemsize))
    except OSError as exc:
        if exc.errno == errno.EMFILE:
            raise too_many_open_files(_NO_COMMUNICATION) from exc
        raise
    if reduction.ACKNOWLEDGE and (data or ancdata):
        sock.send(b"A")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise too_many_open_files(_NO_COMMUNICATION)
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise EOFError(f"expected one slot descriptor, received {len(fds)}")
    return fds[0]


_NO_COMMUNICATION = "Communication with the workers is no longer possible."

#: torch's DataLoader warns this, word for word, when a worker's arguments cannot be pickled.
TORCH_PICKLE_WARNING = (
    "Got pickle error when attempting to start a worker Process. This might be because the worker Process arguments "
    "are not picklable. Python 3.14+ changed the multiprocessing start method in non-Mac POSIX platforms to "
    "'forkserver', which requires the worker Process arguments to be picklable. You can also try "
    "multiprocessing.set_start_method('fork')."
)


def _wait_for_exit(process: multiprocessing.process.BaseProcess, timeout: float) -> int | None:
    """``process.join(timeout)``, then its exit code (None: still running). ``join`` must
    not be used with a timeout: it trusts the process's sentinel pipe and then blocks
    until the exit, but a process can close that pipe long before (a library closing
    every descriptor it has)."""
    deadline = time.monotonic() + timeout
    wait([process.sentinel], timeout)
    while process.exitcode is None and time.monotonic() < deadline:
        time.sleep(0.001)  # the sentinel closed before the process ended (or it is ending now)
    return process.exitcode


def _as_list(indices: Any) -> list[Any]:
    return list(indices) if isinstance(indices, (list, tuple)) else [indices]


def _shutdown_processes(
    owner: int, processes: list[Any], conns: list[Connection], socks: list[socket.socket], grace: float = STOP_GRACE
) -> None:
    """See NOTE [ Pool shutdown ]. Module-level so that the finalizer holds no pool.

    Only in ``owner``, the process that made the pool: a forked process (a later pool's
    worker) inherits the pool's objects and its finalizer, but not its workers."""
    if os.getpid() != owner:
        return
    stop = pickle.dumps(messages.Stop())
    for process, conn in zip(processes, conns):
        if process.is_alive():
            try:
                conn.send_bytes(stop)
            except (OSError, ValueError):
                pass
    deadline = time.monotonic() + grace
    for process in processes:
        if process.pid is not None:
            _wait_for_exit(process, max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.pid is not None and process.is_alive():
            process.terminate()
            _wait_for_exit(process, STOP_GRACE)  # SIGTERM's default action ends it; SIGKILL if handled
            if process.is_alive():
                process.kill()
                process.join()
    for conn in conns:
        conn.close()
    for sock in socks:
        sock.close()
