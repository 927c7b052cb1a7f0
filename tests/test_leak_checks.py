"""The leak checks the other tests rely on: /dev/shm is the whole machine's, so they must
count what this process tree leaves there, and nothing that other programs do."""

from __future__ import annotations

import os
import threading

from .conftest import dev_shm_entries, leaked_dev_shm


def _touch(name: str) -> str:
    path = os.path.join("/dev/shm", name)
    open(path, "w").close()
    return path


def test_an_entry_left_by_this_process_is_a_leak():
    before = dev_shm_entries()
    path = _touch(f"torch_{os.getpid()}_leak-check_0")
    try:
        assert leaked_dev_shm(before, settle=0.2) == {os.path.basename(path)}
    finally:
        os.unlink(path)


def test_an_entry_of_a_live_process_outside_this_tree_is_not_ours():
    before = dev_shm_entries()
    path = _touch("torch_1_leak-check_0")  # pid 1 is never one of ours
    try:
        assert leaked_dev_shm(before, settle=0.2) == set()
    finally:
        os.unlink(path)


def test_an_entry_that_goes_away_is_not_a_leak():
    # torch's workers create their shared memory and unlink it at once.
    before = dev_shm_entries()
    path = _touch(f"torch_{os.getpid()}_leak-check_1")
    threading.Timer(0.3, os.unlink, (path,)).start()
    assert leaked_dev_shm(before, settle=3.0) == set()


def test_a_multiprocessing_semaphore_is_not_ours_a_slot_file_is():
    # Named semaphores belong to multiprocessing queues (torch's loaders under spawn or
    # forkserver, here or in another program); fastload's pool uses none.
    before = dev_shm_entries()
    semaphore, slot = _touch("sem.mp-leakchk1"), _touch("fastload-slot-leak-check")
    try:
        assert leaked_dev_shm(before, settle=0.2) == {"fastload-slot-leak-check"}
    finally:
        os.unlink(semaphore)
        os.unlink(slot)
