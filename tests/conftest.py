from __future__ import annotations

import os
import time

import pytest


def dev_shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm"))


def _in_this_process_tree(pid: int) -> bool:
    while pid > 1:
        if pid == os.getpid():
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            return True  # gone: it may have been one of ours
    return False


def leaked_dev_shm(before: set[str], settle: float = 2.0) -> set[str]:
    """/dev/shm entries made since ``before`` that stay there and that this process tree
    may have made. /dev/shm is the machine's: other programs' entries come and go (torch's
    workers create theirs and unlink them at once), and one named after a live process
    outside this tree (``torch_<pid>_...``) is not ours. Nor is a multiprocessing
    semaphore (``sem.mp-...``: the queues of a torch DataLoader under spawn/forkserver, in
    another program or in a test's torch oracle, until they are collected); fastload's
    pool makes none (its workers talk over pipes)."""
    def ours() -> set[str]:
        new = dev_shm_entries() - before
        return {name for name in new if not name.startswith("sem.mp-") and not (
            name.startswith("torch_") and name.split("_")[1].isdigit()
            and not _in_this_process_tree(int(name.split("_")[1])))}
    wait_until(lambda: not ours(), settle)
    return ours()


# multiprocessing's own helpers, started once per interpreter by spawn/forkserver and kept
# for its lifetime by design: not workers.
_MP_HELPERS = (b"resource_tracker", b"forkserver")


def _is_mp_helper(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return any(name in cmdline for name in _MP_HELPERS)


def child_pids(parent: int | None = None) -> set[int]:
    """Live (non-zombie) processes whose parent is ``parent`` (default: this process),
    other than multiprocessing's resource tracker and fork server."""
    parent = os.getpid() if parent is None else parent
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z" and not _is_mp_helper(entry):
            pids.add(int(entry))
    return pids


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def no_leaks():
    """Asserts that the test leaves no /dev/shm entry and no child process behind."""
    import gc

    shm_before = dev_shm_entries()
    children_before = child_pids()
    yield
    gc.collect()
    assert wait_until(lambda: child_pids() <= children_before), f"leftover processes: {child_pids() - children_before}"
    leaked = leaked_dev_shm(shm_before)
    assert not leaked, f"leftover /dev/shm entries: {leaked}"
