"""How much memory the pool's slots may take: the arena is sized to what is available.

Slots are memfds (``arena.py``): they are charged to the processes' memory, so the limit
that matters is the memory left to this container or machine, not the size of /dev/shm.
"""

from __future__ import annotations

import os

#: bytes: overrides what is measured (e.g. to leave room for something else)
BUDGET_ENV = "FASTLOAD_MEMORY_BUDGET"


def available_memory() -> int | None:
    """Bytes of memory still available: ``FASTLOAD_MEMORY_BUDGET`` if set, else the
    cgroup (v2) limit minus its usage where there is a limit, else MemAvailable."""
    if os.environ.get(BUDGET_ENV):
        return int(os.environ[BUDGET_ENV])
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                return max(0, int(limit) - int(f.read()))
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def batches_in_flight(batch_bytes: int, wanted: int, workers: int) -> int:
    """How many batches may be in flight (``wanted`` at most, 1 at least) so that their
    slots, plus one being filled by each worker, take at most half the available memory."""
    available = available_memory()
    if available is None or batch_bytes <= 0:
        return wanted
    return max(1, min(wanted, available // 2 // batch_bytes - workers))
