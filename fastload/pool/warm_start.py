"""Starting spawn/forkserver workers warm: from fastload's own fork server, with the
dataset pickled once into shared memory.

NOTE [ Warm start ]

Under ``spawn`` and ``forkserver`` every worker is a fresh interpreter that imports torch
(a second or two) and unpickles the dataset it was sent through a pipe (one pickle per
worker: an ImageNet-sized index of paths is ~225 MB each time). A second loader in the
same process pays it all again. fastload keeps their guarantees and removes the waiting:

1. **The warm server.** Once per process, on the first pool that needs it, fastload
   starts a fork server of its own (multiprocessing's ``ForkServer``, a separate instance,
   so that a user's own use of ``forkserver`` and its preload list are untouched). It is
   a fresh interpreter, started like a spawn child, that imports torch and fastload's
   worker before it serves, and nothing of the user's (``PRELOAD``: a user module's import
   may read ``sys.argv``, start CUDA, or run a whole program). Each worker is a
   ``fork()`` of it: milliseconds, and the workers of a pool start side by side. A worker
   then imports the user's modules itself, as a spawned one does (the main script too,
   as ``__mp_main__``), and takes from the main process what a spawned worker would
   inherit at its start: the environment, umask, CPU affinity and standard streams
   (``ProcessState``).
2. **The dataset once.** The pool's configuration (dataset, collate function...) is
   pickled once, with pickle protocol 5: numpy arrays and the storages of CPU tensors go
   out of band into one anonymous shared-memory file (memfd), each storage once however
   many tensors view it (views keep sharing it, strides are kept); the rest stays in a
   small in-band pickle. Each worker receives the file's descriptor and maps it
   copy-on-write (``MAP_PRIVATE``): its arrays and tensors are views of the shared pages,
   free until a worker writes to them, and a write stays in that worker, as after
   ``fork``. The memfd has no name and is closed with the pool (a crash leaks nothing).
   What only multiprocessing's own pickler sends as it should (a ``Queue``, a lock, a
   ``Connection``, a tensor in shared memory or on CUDA, which torch shares instead of
   copying) makes the one-off pickle give up; the pool then sends the configuration to
   each worker as multiprocessing does, still from the warm server.
3. **Lifetime.** The server exits when the main process does (its liveness pipe closes)
   once its workers are gone. A worker's parent is the server, so each worker also
   watches the main process itself (its end of the pipe it was started through closes
   when the main process dies, even by SIGKILL) and exits with it.

What the warm server holds: the modules in ``PRELOAD`` and what their import did. It
starts no thread, initialises no CUDA context (importing torch does not), opens no file
of a dataset, and holds no dataset: workers get the clean state that spawn and
forkserver promise (tested: a worker sees its own ``get_worker_info()``, seeds, module
state and no CUDA state). It is used for ``multiprocessing_context`` ``"spawn"`` and
``"forkserver"`` (or such a context object, or the default context when it is one of
them); ``"fork"`` forks the main process as before. ``FASTLOAD_WARM_START=0`` starts
workers as multiprocessing does.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import threading
from multiprocessing import forkserver, popen_forkserver, process, reduction, spawn, util
from multiprocessing.context import BaseContext, set_spawning_popen
from typing import Any

import torch

#: Out-of-band buffers start at multiples of this in the shared file.
BUFFER_ALIGNMENT = 64
WARM_METHODS = ("spawn", "forkserver")


# --- the dataset, pickled once -------------------------------------------------------


class NeedsMultiprocessing(Exception):
    """The object holds something only multiprocessing's own pickler sends as it should
    (a connection, a lock, a tensor in shared memory, a CUDA tensor): it is then sent to
    each worker that way."""


def _storage_from_buffer(buffer: Any) -> torch.Tensor:
    if not len(memoryview(buffer)):
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(buffer, dtype=torch.uint8)


def _tensor_on(storage: torch.Tensor, dtype: torch.dtype, size: tuple[int, ...], stride: tuple[int, ...],
               offset: int) -> torch.Tensor:
    return torch.empty(0, dtype=dtype).set_(storage.untyped_storage(), offset, size, stride)


class _Storage:
    """One tensor storage's bytes, out of band; pickled once however many tensors use it
    (the pickler's memo), so views keep sharing one storage, as torch's pickling keeps them."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def __reduce__(self) -> tuple[Any, ...]:
        data = torch.empty(0, dtype=torch.uint8).set_(self.tensor.untyped_storage()).numpy()
        return _storage_from_buffer, (pickle.PickleBuffer(data),)  # type: ignore[arg-type]  # numpy is a buffer


class _OutOfBandPickler(pickle.Pickler):
    """Protocol 5 with CPU tensors' storages out of band too (numpy arrays do it
    themselves). Raises :class:`NeedsMultiprocessing` for what must go another way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._storages: dict[int, _Storage] = {}

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is torch.Tensor:
            if obj.device.type != "cpu" or obj.is_shared() or obj.layout != torch.strided:
                raise NeedsMultiprocessing(f"a {obj.device.type} tensor{' in shared memory' if obj.is_shared() else ''}")
            if obj.requires_grad or obj.is_conj() or obj.is_neg() or obj.__dict__:
                return NotImplemented  # torch's own pickling, by value
            storage = obj.untyped_storage()
            key = storage.data_ptr() if storage.nbytes() else id(obj)
            shared = self._storages.setdefault(key, _Storage(obj))
            return _tensor_on, (shared, obj.dtype, tuple(obj.shape), tuple(obj.stride()), obj.storage_offset())
        if type(obj) in reduction.ForkingPickler._extra_reducers:  # type: ignore[attr-defined]
            raise NeedsMultiprocessing(type(obj).__name__)
        return NotImplemented


class SharedPickle:
    """An object pickled once into an anonymous shared-memory file, which every process
    it is sent to maps copy-on-write. Sent to a process started by multiprocessing (its
    descriptor travels as the process's other descriptors do), it pickles as a few
    numbers and the descriptor."""

    def __init__(self, obj: Any) -> None:
        buffers: list[pickle.PickleBuffer] = []
        stream = io.BytesIO()
        _OutOfBandPickler(stream, protocol=5, buffer_callback=buffers.append).dump(obj)
        inband = stream.getbuffer()
        layout, offset = [], _align(len(inband))
        for buffer in buffers:
            raw = buffer.raw()
            layout.append((offset, raw.nbytes))
            offset = _align(offset + raw.nbytes)
        self.inband_size = len(inband)
        self.layout = layout
        self.size = max(offset, 1)
        self.fd = os.memfd_create("fastload-dataset", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.size)
            with mmap.mmap(self.fd, self.size) as mapping:
                mapping[: len(inband)] = inband
                for buffer, (start, nbytes) in zip(buffers, layout):
                    mapping[start : start + nbytes] = buffer.raw()
        except BaseException:
            os.close(self.fd)
            raise
        self._closer = util.Finalize(self, os.close, (self.fd,))

    @property
    def buffer_bytes(self) -> int:
        """Bytes sent out of band (arrays and tensors)."""
        return sum(nbytes for _, nbytes in self.layout)

    def close(self) -> None:
        self._closer()

    def __reduce__(self) -> tuple[Any, ...]:
        return _load_shared, (reduction.DupFd(self.fd), self.size, self.inband_size, self.layout)


def _load_shared(fd: Any, size: int, inband_size: int, layout: list[tuple[int, int]]) -> Any:
    """In a worker: map the file copy-on-write and unpickle with views of it as buffers."""
    descriptor = fd.detach() if hasattr(fd, "detach") else fd
    try:
        mapping = mmap.mmap(descriptor, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(descriptor)
    view = memoryview(mapping)
    buffers = [view[start : start + nbytes] for start, nbytes in layout]
    return pickle.loads(view[:inband_size], buffers=buffers)


def _align(n: int) -> int:
    return -(-n // BUFFER_ALIGNMENT) * BUFFER_ALIGNMENT


# --- the warm server -------------------------------------------------------------------


#: What the warm server imports before it serves: torch and fastload's worker, nothing of
#: the user's. A user module's import may read sys.argv, start CUDA (``cuInit`` before a
#: fork breaks CUDA in every child), or run a whole program (a ``python -m`` package's
#: ``__main__``); and it may change after the server started (``importlib.reload``). So
#: each worker imports the user's modules itself, as a spawned one does.
PRELOAD = ["torch", "fastload.pool.worker"]


class _WarmServer:
    """fastload's fork server of this process (one per process: a forked child of the
    main process starts its own)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.server = forkserver.ForkServer()
        self.server.set_forkserver_preload(PRELOAD)
        self.server.ensure_running()

    @property
    def server_pid(self) -> int | None:
        return self.server._forkserver_pid  # type: ignore[attr-defined]


_server: _WarmServer | None = None
_server_lock = threading.Lock()


def server() -> _WarmServer:
    """This process's warm server, started if needed (again, if it died)."""
    global _server
    with _server_lock:
        if _server is None or _server.pid != os.getpid():
            _server = _WarmServer()
        else:
            _server.server.ensure_running()
        return _server


def server_pid() -> int | None:
    """The pid of this process's warm server, if it has one."""
    current = _server
    return current.server_pid if current is not None and current.pid == os.getpid() else None


class ProcessState:
    """What a spawned worker would inherit from the main process at its start, and a fork
    of the server, started earlier, would not: the environment, the umask, the CPU
    affinity and the standard streams. Applied in the worker when unpickled, first of
    its arguments (before the dataset, whose modules may read them)."""

    def __init__(self) -> None:
        self.environ = dict(os.environ)
        self.umask = os.umask(0o022)
        os.umask(self.umask)
        self.affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        self.streams = [fd for fd in (0, 1, 2) if _is_open(fd)]

    def __reduce__(self) -> tuple[Any, ...]:
        return _apply_state, (self.environ, self.umask, self.affinity,
                              [(fd, reduction.DupFd(fd)) for fd in self.streams])


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _apply_state(environ: dict[str, str], umask: int, affinity: set[int] | None, streams: list[tuple[int, Any]]) -> None:
    os.environ.clear()
    os.environ.update(environ)
    os.umask(umask)
    if affinity is not None:
        try:
            os.sched_setaffinity(0, affinity)
        except OSError:
            pass  # CPUs the server may not use (a cgroup): keep the server's
    for target, handle in streams:
        fd = handle.detach()
        if fd != target:
            os.dup2(fd, target)
            os.close(fd)


def warm_worker_main(state: None, config: Any, conn: Any) -> None:
    """A warm worker's entry point: ``state`` was applied when unpickled. The worker's
    parent is the warm server, so it also watches the main process itself: its end of the
    pipe the main process started it through closes when the main process dies (even by
    SIGKILL), and the worker then exits (its parent, the server, would live on while a
    worker holds the server's own liveness pipe)."""
    import multiprocessing

    from .worker import worker_main

    main = multiprocessing.parent_process()
    if main is not None and main.sentinel is not None:
        threading.Thread(target=_exit_with, args=(main.sentinel,), name="fastload-main-watch", daemon=True).start()
    worker_main(config, conn)


def _exit_with(sentinel: int) -> None:
    from multiprocessing.connection import wait

    wait([sentinel])
    os._exit(1)


class _WarmPopen(popen_forkserver.Popen):
    """multiprocessing's forkserver Popen, asking fastload's warm server for the fork: the
    same protocol (preparation data and the pickled process over a pipe; the pid, then
    the exit status, back on the sentinel)."""

    def _launch(self, process_obj: Any) -> None:
        preparation = spawn.get_preparation_data(process_obj._name)
        message = io.BytesIO()
        set_spawning_popen(self)  # descriptors in the process's arguments are sent with it
        try:
            reduction.dump(preparation, message)
            reduction.dump(process_obj, message)
        finally:
            set_spawning_popen(None)
        assert _server is not None
        self.sentinel, write_end = _server.server.connect_to_new_process(self._fds)  # type: ignore[attr-defined]
        parent_end = os.dup(write_end)  # the child watches it to learn that this process is gone
        self.finalizer = util.Finalize(self, util.close_fds, (parent_end, self.sentinel))  # type: ignore[attr-defined]
        with open(write_end, "wb", closefd=True) as pipe:
            pipe.write(message.getbuffer())
        try:
            self.pid = forkserver.read_signed(self.sentinel)
        except EOFError as exc:
            raise RuntimeError(
                f"fastload's warm server (pid {_server.server_pid}) did not start a worker: it has exited. Set "
                "FASTLOAD_WARM_START=0 to start workers as multiprocessing does, and please report this.") from exc


class WarmProcess(process.BaseProcess):
    """A process forked from the warm server."""

    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _WarmPopen(process_obj)


class WarmContext(BaseContext):
    """The context a pool starts its workers with instead of a spawn/forkserver one.
    ``get_start_method()`` still answers the user's method."""

    Process = WarmProcess  # type: ignore[assignment]

    def __init__(self, method: str) -> None:
        self._method = method

    def get_start_method(self, allow_none: bool = False) -> str:
        return self._method


def uses_warm_start(context: BaseContext) -> bool:
    """Whether workers of ``context`` start warm (NOTE [ Warm start ])."""
    return context.get_start_method() in WARM_METHODS and hasattr(os, "memfd_create") \
        and reduction.HAVE_SEND_HANDLE and os.environ.get("FASTLOAD_WARM_START", "1") != "0"


__all__ = ["SharedPickle", "WarmContext", "server", "server_pid", "uses_warm_start"]
