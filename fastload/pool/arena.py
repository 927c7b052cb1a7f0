"""The slot arena: reusable shared-memory buffers that batches are built in.

NOTE [ Slot protocol ]

A *slot* is an anonymous shared-memory file (``memfd_create``) of a fixed capacity.
Slots are created by the worker that fills them (it is the one that knows how many
bytes a batch needs) and are numbered per worker.

1. A worker picks a free slot large enough for the batch (or creates one), writes every
   tensor leaf of the batch into it, and sends the main process a small message: the slot
   id, the layout of the leaves and the pickled non-tensor rest. The first time a slot
   is used, its file descriptor follows the message over the same Unix socket
   (SCM_RIGHTS); the main process maps it once and closes the descriptor, and the worker
   closes its own once it is sent. Mappings are made with ``map_shared``, which keeps no
   descriptor (Python's ``mmap.mmap`` keeps a duplicate for the mapping's life): a slot
   holds a descriptor only between its creation and its first message, so kept batches
   cost memory, never descriptors.
2. The main process wraps the used part of the slot as one numpy array, the *slot view*,
   and builds every tensor of the batch as a view of it. ``weakref.finalize`` on the slot view
   fires when the last tensor (or view, or numpy alias) of the batch dies, whatever
   thread drops it, and queues ``(incarnation, slot_id)`` as released: the key of the
   worker *process* that made the slot (NOTE [ Worker restart ] in ``pool.py``).
3. Released slot ids ride on the next task sent to that worker. Only then does the
   worker put the slot back on its free list. So a slot is never rewritten while the
   user holds any part of the batch that lives in it: keeping every batch of an epoch
   works, it only costs memory (the worker then creates more slots).
4. A worker *retires* slots it no longer wants (too small for the batches it now builds,
   or more free slots than it can use) and says so in its next message; both sides drop
   their mapping. A mapping is unmapped when the last object referring to it dies, so
   the memory of a retired slot is returned once the last slot view dies.

Because slots are memfds and never have a name, nothing appears in /dev/shm and nothing
can be leaked by a crash, even SIGKILL of the main process: the kernel frees a slot
when the last process mapping it exits.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import mmap
import os
import resource
import tempfile
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np

#: Leaves start at multiples of this: keeps every dtype aligned and SIMD loads happy.
LEAF_ALIGNMENT = 64
#: Slot capacities are rounded up to this, so that slightly varying batches reuse slots.
SLOT_GRANULE = 1 << 20


def align_up(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


#: "memfd" (default) or "file": where slots live. memfds are charged to the process's
#: memory like any anonymous memory, whatever the size of /dev/shm (a container's is
#: often 64 MB; torch's DataLoader needs batches to fit there). Where memfd_create is
#: missing (old kernels, some sandboxes), or with FASTLOAD_SLOT_BACKING=file, a slot is an
#: unlinked temporary file: in /dev/shm when it has room for it, else in the temporary
#: directory (disk-backed: slower, but it works). Either way nothing has a name for long.
SLOT_BACKING_ENV = "FASTLOAD_SLOT_BACKING"


def anonymous_file(name: str, capacity: int) -> int:
    """A descriptor of a nameless shared-memory file for a slot of ``capacity`` bytes.

    Raises ``RuntimeError`` (see :func:`too_many_open_files`) when the process has no
    descriptor left."""
    try:
        if os.environ.get(SLOT_BACKING_ENV, "memfd") != "file" and hasattr(os, "memfd_create"):
            try:
                return os.memfd_create(name, os.MFD_CLOEXEC)
            except OSError as exc:
                if exc.errno == errno.EMFILE:
                    raise
        directory = "/dev/shm" if _room_in("/dev/shm", capacity) else tempfile.gettempdir()
        fd, path = tempfile.mkstemp(prefix=name + "-", dir=directory)
    except OSError as exc:
        if exc.errno == errno.EMFILE:
            raise too_many_open_files("A DataLoader worker cannot create the shared memory for a batch.") from exc
        raise
    os.unlink(path)  # from here on it exists only as long as a descriptor or mapping does
    _report_backing(directory)
    return fd


def too_many_open_files(consequence: str) -> RuntimeError:
    """The error for a process that reached its limit of open descriptors (``EMFILE``):
    torch's words (its main-process error, for tools that match on them), then what
    helps when fastload is the loader."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return RuntimeError(
        f"Too many open files. {consequence} Please increase the limit using `ulimit -n` in the shell or change the "
        "sharing strategy by calling `torch.multiprocessing.set_sharing_strategy('file_system')` at the beginning "
        "of your code. fastload: its batches do not go through torch's sharing strategy, so raising the limit is "
        f"what helps (resource.setrlimit(resource.RLIMIT_NOFILE, ...) in Python; it is {soft} here, at most "
        f"{hard}). fastload holds no descriptor per batch or per slot, only a few per worker (its socket and "
        "process handles), so the descriptors in use are the program's own: files or sockets opened and never "
        "closed (by the dataset, or by the code around the loader), or the workers of many DataLoaders alive at once."
    )


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value


def map_shared(fd: int, capacity: int) -> ctypes.Array:
    """A writable buffer over the first ``capacity`` bytes of the file ``fd``, shared with
    every process that maps the file. It keeps no descriptor (``fd`` may be closed at
    once) and is unmapped when the buffer object dies: numpy arrays and tensors made
    from it (``np.frombuffer``, ``torch.frombuffer``) keep it alive."""
    address = _libc.mmap(None, capacity, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    if address == _MAP_FAILED:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot map a slot of {capacity} bytes: {os.strerror(code)}")
    buffer = (ctypes.c_ubyte * capacity).from_address(address)
    # Not at exit: objects still referring to the memory may be used until the very end;
    # the process's exit unmaps everything anyway.
    weakref.finalize(buffer, _libc.munmap, address, capacity).atexit = False
    return buffer


def _room_in(directory: str, nbytes: int) -> bool:
    try:
        stats = os.statvfs(directory)
    except OSError:
        return False
    return os.access(directory, os.W_OK) and stats.f_bavail * stats.f_frsize >= 4 * nbytes


_reported: set[str] = set()


def _report_backing(directory: str) -> None:
    if directory not in _reported:
        _reported.add(directory)
        warnings.warn(f"fastload: slots are unlinked files in {directory} (memfd_create is unavailable or "
                      f"{SLOT_BACKING_ENV}=file)" + ("" if directory == "/dev/shm" else
                      "; /dev/shm has too little room, so they are disk-backed"), stacklevel=3)


@dataclass
class _Slot:
    capacity: int
    buffer: ctypes.Array
    fd: int | None  # open until the main process has received it


@dataclass
class AcquiredSlot:
    """What a worker gets to write a batch into."""

    slot_id: int
    buffer: ctypes.Array
    capacity: int
    #: the descriptor to send with this message (first use of the slot), else None
    new_fd: int | None


@dataclass
class WorkerSlots:
    """A worker's own slots: creates, reuses and retires them (worker side of the protocol).

    ``max_free`` bounds how many unused slots a worker keeps mapped; beyond it, released
    slots are retired, so memory returns to the system after the user drops a pile of
    batches it had kept.
    """

    min_capacity: int
    max_free: int
    _slots: dict[int, _Slot] = field(default_factory=dict)
    _free: set[int] = field(default_factory=set)
    _retired: list[int] = field(default_factory=list)
    _next_id: int = 0

    def acquire(self, nbytes: int) -> AcquiredSlot:
        """A free slot of at least ``nbytes``, created if none fits; marks it in use."""
        fitting = [s for s in self._free if self._slots[s].capacity >= nbytes]
        if fitting:
            slot_id = min(fitting, key=lambda s: self._slots[s].capacity)
            self._free.discard(slot_id)
            slot = self._slots[slot_id]
            # A slot whose first batch never left the worker has not been sent yet either.
            return AcquiredSlot(slot_id, slot.buffer, slot.capacity, slot.fd)
        # Free slots too small for this batch would likely stay too small: retire them
        # instead of growing the arena beside them.
        for slot_id in list(self._free):
            self._retire(slot_id)
        capacity = align_up(max(nbytes, self.min_capacity), SLOT_GRANULE)
        fd = anonymous_file(f"fastload-slot-{os.getpid()}-{self._next_id}", capacity)
        try:
            os.ftruncate(fd, capacity)
            buffer = map_shared(fd, capacity)
        except BaseException:
            os.close(fd)
            raise
        slot_id = self._next_id
        self._next_id += 1
        self._slots[slot_id] = _Slot(capacity, buffer, fd)
        return AcquiredSlot(slot_id, buffer, capacity, fd)

    def sent(self, slot_id: int) -> None:
        """The main process now holds the slot's descriptor; ours is no longer needed."""
        slot = self._slots[slot_id]
        if slot.fd is not None:
            os.close(slot.fd)
            slot.fd = None

    def release(self, slot_ids: list[int]) -> None:
        """The main process no longer references these slots: they may be rewritten."""
        for slot_id in slot_ids:
            if slot_id in self._slots:
                self._free.add(slot_id)
        while len(self._free) > self.max_free:
            self._retire(min(self._free, key=lambda s: self._slots[s].capacity))

    def release_unsent(self, slot_id: int) -> None:
        """A slot was acquired but its batch never left the worker (e.g. an error)."""
        self._free.add(slot_id)

    def take_retired(self) -> list[int]:
        """Slots retired since the last message; the main process must drop them."""
        retired, self._retired = self._retired, []
        return retired

    def _retire(self, slot_id: int) -> None:
        self._free.discard(slot_id)
        slot = self._slots.pop(slot_id)
        if slot.fd is not None:
            os.close(slot.fd)
        self._retired.append(slot_id)  # its memory is unmapped with the last view of it


class SlotTable:
    """The main process's side: maps of every worker's slots, and slot views on them, keyed by
    the *incarnation* of the worker process that made the slot (NOTE [ Worker restart ]).

    Thread-safety: ``view`` / ``map`` / ``retire`` / ``take_released`` run on the
    iterating thread; slot-view finalizers may run on any thread and only append to a deque.
    """

    def __init__(self) -> None:
        self._maps: dict[tuple[int, int], ctypes.Array] = {}
        self._released: collections.deque[tuple[int, int]] = collections.deque()
        self._pending: dict[int, list[int]] = {}
        self._gone: set[int] = set()

    def map(self, incarnation: int, slot_id: int, fd: int, capacity: int) -> None:
        try:
            self._maps[(incarnation, slot_id)] = map_shared(fd, capacity)
        finally:
            os.close(fd)

    def retire(self, incarnation: int, slot_ids: list[int]) -> None:
        # Slot views still alive keep their mapping (and so the memory) alive.
        for slot_id in slot_ids:
            self._maps.pop((incarnation, slot_id), None)

    def view(self, incarnation: int, slot_id: int, nbytes: int) -> np.ndarray:
        """A uint8 view of the first ``nbytes`` of a slot whose death releases the slot."""
        view = np.frombuffer(self._maps[(incarnation, slot_id)], dtype=np.uint8, count=nbytes)  # type: ignore[call-overload]
        weakref.finalize(view, self._released.append, (incarnation, slot_id))
        return view

    def take_released(self, incarnation: int) -> list[int]:
        """Slots of ``incarnation`` released since the last call for it."""
        while self._released:
            other, slot_id = self._released.popleft()
            if other not in self._gone:
                self._pending.setdefault(other, []).append(slot_id)
        return self._pending.pop(incarnation, [])

    def forget(self, incarnation: int) -> None:
        """The process ``incarnation`` is gone: drop its maps and pending releases. Its
        batches the user still holds keep their memory; their releases are ignored. A
        restarted worker is a new incarnation (see ``WorkerPool``), so its slot ids can
        never be taken for the dead one's."""
        self._gone.add(incarnation)
        for key in [k for k in self._maps if k[0] == incarnation]:
            del self._maps[key]
        self._pending.pop(incarnation, None)
