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
   a fresh interpreter, started like a spawn child, that imports torch, fastload's worker
   and the modules of the first pool's dataset, collate function and worker_init_fn (and
   the main script, as forkserver's preload does) before it serves. Each worker is then
   a ``fork()`` of it: milliseconds, and the workers of a pool start side by side.
2. **The dataset once.** The pool's configuration (dataset, collate function...) is
   pickled once, with pickle protocol 5: numpy arrays and CPU tensors go out of band into
   one anonymous shared-memory file (memfd), the rest stays in a small in-band pickle.
   Each worker receives the file's descriptor and maps it copy-on-write
   (``MAP_PRIVATE``): its arrays and tensors are views of the shared pages, free until a
   worker writes to them, and a write stays in that worker, as after ``fork``. The memfd
   has no name and is closed with the pool (a crash leaks nothing). Objects that only
   multiprocessing's own pickler can send (a ``multiprocessing.Queue``, a lock) make the
   one-off pickle fail; the pool then sends the configuration to each worker as
   multiprocessing does, still from the warm server.

What the warm server may hold: imported modules and what their import did, nothing
else. It never runs user code but module imports, so it starts no thread of its own,
initialises no CUDA context, opens no file of a dataset, and holds no dataset: workers
get the same clean state that spawn and forkserver promise (tested: a worker sees its own
``get_worker_info()``, seeds and no CUDA state). It is used for ``multiprocessing_context``
``"spawn"`` and ``"forkserver"`` (or such a context object); ``"fork"`` forks the main
process as before. Like multiprocessing's fork server it exits when the main process
does. A module that a later pool's dataset needs and the server did not preload is
imported by each of that pool's workers, as under plain forkserver.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import sys
import threading
from collections.abc import Iterable
from multiprocessing import forkserver, popen_forkserver, process, reduction, spawn, util
from multiprocessing.context import BaseContext, set_spawning_popen
from typing import Any

import torch

#: Out-of-band buffers start at multiples of this in the shared file.
BUFFER_ALIGNMENT = 64
WARM_METHODS = ("spawn", "forkserver")


# --- the dataset, pickled once -------------------------------------------------------


def _tensor_from_buffer(buffer: Any, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if not len(memoryview(buffer)):
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buffer, dtype=torch.uint8).view(dtype).reshape(shape)


class _OutOfBandPickler(pickle.Pickler):
    """Protocol 5 with CPU tensors out of band too (numpy arrays do it themselves)."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is torch.Tensor and obj.layout == torch.strided and obj.device.type == "cpu" \
                and not obj.requires_grad and not obj.is_conj() and not obj.is_neg() and obj.dtype.itemsize:
            data = obj.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
            buffer = pickle.PickleBuffer(data)  # type: ignore[arg-type]  # a numpy array is a buffer
            return _tensor_from_buffer, (buffer, obj.dtype, tuple(obj.shape))
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


class _WarmServer:
    """fastload's fork server of this process (one per process: a forked child of the
    main process starts its own)."""

    def __init__(self, modules: list[str]) -> None:
        self.pid = os.getpid()
        self.server = forkserver.ForkServer()
        self.server.set_forkserver_preload(modules)
        self.server.ensure_running()

    @property
    def server_pid(self) -> int | None:
        return self.server._forkserver_pid  # type: ignore[attr-defined]


_server: _WarmServer | None = None
_server_lock = threading.Lock()


def preload_modules(objects: Iterable[Any]) -> list[str]:
    """What the server imports before it serves: torch, fastload's worker, the main script
    (as forkserver's ``'__main__'``) and the modules of ``objects``' classes and functions."""
    modules = ["__main__", "torch", "fastload.pool.worker"]
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in modules:  # run with -m: preloaded by name
        modules.append(spec.name)
    for obj in objects:
        for module in (getattr(obj, "__module__", None), type(obj).__module__):
            if isinstance(module, str) and module not in modules and module not in ("builtins", "__main__",
                                                                                    "__mp_main__"):
                modules.append(module)
    return modules


def server(objects: Iterable[Any]) -> _WarmServer:
    """This process's warm server, started (with ``objects``' modules preloaded) if needed."""
    global _server
    with _server_lock:
        if _server is None or _server.pid != os.getpid():
            _server = _WarmServer(preload_modules(objects))
        else:
            _server.server.ensure_running()  # restarted if it died
        return _server


def server_pid() -> int | None:
    """The pid of this process's warm server, if it has one."""
    current = _server
    return current.server_pid if current is not None and current.pid == os.getpid() else None


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
        self.pid = forkserver.read_signed(self.sentinel)


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
