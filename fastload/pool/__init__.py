"""fastload's shared-memory worker pool. See NOTE [ Slot protocol ] in ``arena.py``,
NOTE [ Worker lifecycle ] in ``worker.py`` and NOTE [ Pool shutdown ] in ``pool.py``."""

from .pool import WorkerDiedError, WorkerPool

__all__ = ["WorkerDiedError", "WorkerPool"]
