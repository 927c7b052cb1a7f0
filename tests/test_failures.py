"""Failures are loud and precise, never hang, and leave no process or /dev/shm entry behind."""

from __future__ import annotations

import gc
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

import fastload

from .conftest import dev_shm_entries, leaked_dev_shm, pid_alive, wait_until
from .datasets import FailsAt, KillsItself, Slow, failing_worker_init

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataset_exception_reraises_with_traceback_and_index(num_workers, no_leaks):
    loader = fastload.DataLoader(FailsAt(bad=13), batch_size=4, num_workers=num_workers)
    with pytest.raises(ValueError) as info:
        list(loader)
    text = str(info.value) + "".join(getattr(info.value, "__notes__", []))
    assert "corrupt sample 13" in text
    assert "sample index 13" in text
    if num_workers:
        assert "Traceback" in text and "datasets.py" in text and "DataLoader worker" in text


def test_worker_init_fn_error_reraises_and_stops_the_pool(no_leaks):
    loader = fastload.DataLoader(FailsAt(bad=-1), batch_size=4, num_workers=2, worker_init_fn=failing_worker_init)
    with pytest.raises(OSError, match=r"cannot open the shard of worker \d") as info:
        next(iter(loader))
    assert "while starting" in str(info.value)


def test_iteration_continues_after_a_dataset_exception(no_leaks):
    it = iter(fastload.DataLoader(FailsAt(bad=5), batch_size=4, num_workers=2))
    assert next(it).flatten().tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        next(it)
    assert next(it).flatten().tolist() == [8, 9, 10, 11]


def _local_exception_class() -> type[Exception]:
    class LocalError(Exception):
        pass
    return LocalError


class RaisesUnpicklable(torch.utils.data.Dataset):
    """Index ``bad`` raises an exception whose class is local: it cannot be pickled."""

    error_class = _local_exception_class()

    def __init__(self, bad: int) -> None:
        self.bad = bad

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == self.bad:
            raise self.error_class(f"sample {i} is corrupt")
        return torch.tensor([i])


def test_an_exception_that_cannot_be_pickled_is_reraised_as_runtime_error_naming_it(no_leaks):
    it = iter(fastload.DataLoader(RaisesUnpicklable(bad=5), batch_size=4, num_workers=2))
    assert next(it).flatten().tolist() == [0, 1, 2, 3]
    with pytest.raises(RuntimeError) as info:
        next(it)
    text = str(info.value)
    assert "while fetching sample index 5: an exception of class tests.test_failures._local_exception_class." \
           "<locals>.LocalError, which cannot be pickled" in text
    assert "Traceback" in text and "test_failures.py" in text and "LocalError: sample 5 is corrupt" in text
    assert next(it).flatten().tolist() == [8, 9, 10, 11]  # the worker lives on, as after any sample error


class HoldsALockAt(torch.utils.data.Dataset):
    def __init__(self, bad: int) -> None:
        self.bad = bad

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        return threading.Lock() if i == self.bad else i


def as_list(samples):
    return list(samples)


def test_a_batch_that_cannot_be_pickled_is_its_tasks_error_naming_the_indices(no_leaks):
    it = iter(fastload.DataLoader(HoldsALockAt(bad=6), batch_size=4, num_workers=2, collate_fn=as_list))
    assert next(it) == [0, 1, 2, 3]
    with pytest.raises(TypeError, match=r"while building the batch of task 1 \(sample indices \[4, 5, 6, 7\]\)"
                                        r"(.|\n)*cannot pickle '_thread.lock' object"):
        next(it)
    assert next(it) == [8, 9, 10, 11]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_worker_killed_reports_pid_signal_and_indices(sig, no_leaks):
    loader = fastload.DataLoader(KillsItself(bad=21, sig=sig), batch_size=4, num_workers=2)
    with pytest.raises(fastload.WorkerDiedError) as info:
        for _ in loader:
            pass
    error = info.value
    assert error.signal == sig
    assert 21 in error.indices and [20, 21, 22, 23] == error.indices[:4]
    assert str(error.pid) in str(error) and signal.Signals(sig).name in str(error) and "21" in str(error)
    assert not pid_alive(error.pid)
    assert isinstance(error, RuntimeError)


def test_a_worker_death_is_reported_while_the_other_worker_is_still_busy(no_leaks):
    # Worker 1 dies on its first task while worker 0 is stuck in one for good: only a
    # death noticed as it happens (not at the end of the other work) can end this.
    loader = fastload.DataLoader(KillsItself(bad=4, sig=signal.SIGKILL, stuck_elsewhere=True), batch_size=4,
                                 num_workers=2)
    with pytest.raises(fastload.WorkerDiedError, match="SIGKILL") as info:
        next(iter(loader))
    assert info.value.worker_id == 1 and info.value.indices[:4] == [4, 5, 6, 7]


class ClosesItsDescriptors(torch.utils.data.Dataset):
    """The worker fetching index ``bad`` closes every descriptor it has (as a library that
    daemonizes might) and carries on running."""

    def __init__(self, bad: int) -> None:
        self.bad = bad

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == self.bad:
            os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            time.sleep(60)
        return torch.tensor([i])


def test_a_running_worker_that_lost_its_connection_is_reported_and_stopped(no_leaks):
    with pytest.raises(fastload.WorkerDiedError) as info:
        list(fastload.DataLoader(ClosesItsDescriptors(bad=9), batch_size=4, num_workers=1))
    error = info.value
    assert error.exitcode is None and error.signal is None
    assert f"(pid {error.pid}) lost its connection to the main process while still running (it was stopped)" \
        in str(error)
    assert 9 in error.indices
    assert not pid_alive(error.pid)


def test_timeout_raises_like_torch(no_leaks):
    # The sample would take 10 minutes: only the timeout can end the wait.
    loader = fastload.DataLoader(Slow(delay=600.0, n=8), batch_size=2, num_workers=1, timeout=0.3)
    with pytest.raises(RuntimeError, match=r"DataLoader timed out after 0.3 seconds"):
        next(iter(loader))


def _run_script(body: str, **popen_kwargs) -> subprocess.Popen:
    script = textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen_kwargs)


ITERATE_FOREVER = """
    import signal
    # A shell's background job starts with SIGINT ignored and Python keeps that: restore
    # the handler an interactive `python train.py` has, which raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import multiprocessing
    import fastload
    from tests.datasets import Slow
    loader = fastload.DataLoader(Slow(delay=0.01, n=100000), batch_size=4, num_workers=2)
    it = iter(loader)
    next(it)
    print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    for _ in it:
        pass
"""


def _start_and_get_worker_pids() -> tuple[subprocess.Popen, list[int]]:
    proc = _run_script(ITERATE_FOREVER)
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return proc, [int(p) for p in line.split()]


def test_sigint_during_iteration_exits_cleanly():
    shm_before = dev_shm_entries()
    proc, workers = _start_and_get_worker_pids()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=15)
    assert proc.returncode != 0 and "KeyboardInterrupt" in stderr
    assert "Traceback" in stderr and stderr.count("Traceback") == 1, stderr  # no worker tracebacks
    assert wait_until(lambda: not any(pid_alive(p) for p in workers))
    assert not leaked_dev_shm(shm_before)


def test_sigkill_of_main_process_leaves_no_worker_and_no_shm():
    shm_before = dev_shm_entries()
    proc, workers = _start_and_get_worker_pids()
    proc.kill()
    proc.wait(timeout=5)
    assert wait_until(lambda: not any(pid_alive(p) for p in workers), timeout=5)
    assert not leaked_dev_shm(shm_before)


MADE_ON_A_THREAD_THEN_BUSY = """
    import multiprocessing, os, threading, time
    import fastload
    from tests.datasets import Slow
    class Busy(Slow):
        def __getitem__(self, i):
            print("busy", os.getpid(), flush=True)
            return super().__getitem__(i)
    made = {}
    def make():
        made["it"] = iter(fastload.DataLoader(Busy(delay=30, n=100), batch_size=1, num_workers=2))
    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    time.sleep(60)
"""


def test_busy_workers_die_with_a_main_process_that_made_them_on_a_thread_now_gone():
    proc = _run_script(MADE_ON_A_THREAD_THEN_BUSY)
    workers, busy = None, set()
    while workers is None or not set(workers) <= busy:  # the script's line, and each worker's
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        if line.startswith("busy"):
            busy.add(int(line.split()[1]))
        else:
            workers = [int(p) for p in line.split()]
    assert len(workers) == 2
    proc.kill()  # while both workers are in a 30 s __getitem__
    proc.wait(timeout=5)
    try:
        assert wait_until(lambda: not any(pid_alive(p) for p in workers), timeout=5)
    finally:
        for pid in workers:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_pool_made_on_a_thread_that_then_exits_keeps_its_workers(no_leaks):
    made = {}
    thread = threading.Thread(target=lambda: made.update(it=iter(fastload.DataLoader(
        FailsAt(bad=-1, n=32), batch_size=4, num_workers=2))))
    thread.start()
    thread.join()
    assert [int(b[0]) for b in made["it"]] == [0, 4, 8, 12, 16, 20, 24, 28]


def test_normal_run_leaves_nothing(no_leaks):
    loader = fastload.DataLoader(FailsAt(bad=-1, n=64), batch_size=8, num_workers=2)
    batches = list(loader)
    assert len(batches) == 8
    del loader, batches
    gc.collect()


def test_workers_forked_after_an_error_do_not_run_the_failed_pools_finalizer():
    # The failed epoch's pool lives on in a reference cycle (the exception's traceback)
    # until the garbage collector runs; workers forked meanwhile inherit its finalizer.
    proc = _run_script("""
        import fastload
        from tests.datasets import FailsAt
        try:
            list(fastload.DataLoader(FailsAt(bad=3, n=8), batch_size=2, num_workers=1))
        except ValueError:
            pass
        for _ in range(3):
            assert len(list(fastload.DataLoader(FailsAt(bad=-1, n=64), batch_size=2, num_workers=1))) == 32
        print("done", flush=True)
    """)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and stdout.strip() == "done", stderr
    assert "Exception ignored" not in stderr and "can only test a child process" not in stderr, stderr
