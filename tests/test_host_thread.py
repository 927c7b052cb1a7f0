"""The host thread that pins (or packs for the device) off the training thread
(fastload.prefetch.HostThreadStage, NOTE [ Host thread ]): on the CPU, with the real
EpochIterator and EpochProgress above it, against the same chain run synchronously."""

from __future__ import annotations

import gc
import random
import subprocess
import sys
import threading
import time

import pytest

from fastload.loader_iter import EpochIterator
from fastload.prefetch import HostThreadStage, MappedIterator
from fastload.resume import EpochProgress

from .conftest import wait_until


class Boom(Exception):
    pass


class Source:
    """A loader's iterator: batch k covers positions [2k, 2k + 2) and is reported yielded
    when it is taken; a batch listed in ``fails_below`` is yielded and then fails in a
    synchronous stage above (a batch_transform), one in ``fails_in_loader`` fails before
    it is yielded (the loader's own error)."""

    def __init__(self, progress: EpochProgress, batches: int, fails_below=(), fails_in_loader=()) -> None:
        self.progress, self.batches = progress, batches
        self.fails_below, self.fails_in_loader = set(fails_below), set(fails_in_loader)
        self.next = 0
        self.taken_by: set[int] = set()

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return self.batches

    def __next__(self):
        k = self.next
        if k >= self.batches:
            raise StopIteration
        self.next += 1
        self.taken_by.add(threading.get_ident())
        if k in self.fails_in_loader:
            raise Boom(f"loader {k}")
        self.progress.yielded(((2 * k, 2 * k + 2),))
        if k in self.fails_below:
            raise Boom(f"below {k}")
        return k


def host_for(fails, delays, threads):
    def host(k):
        threads.add(threading.get_ident())
        time.sleep(delays.get(k, 0.0))
        if k in fails:
            raise Boom(f"host {k}")
        return ("pinned", k)
    return host


def drain(iterator):
    """Every outcome in order: a value, or the error's message; then the end."""
    outcomes = []
    while True:
        try:
            outcomes.append(next(iterator))
        except StopIteration:
            return outcomes
        except Boom as exc:
            outcomes.append(str(exc))


def run(threaded: bool, batches, depth, fails_host=(), fails_below=(), fails_in_loader=(), delays=None):
    progress = EpochProgress(0, None, None)
    source = Source(progress, batches, fails_below, fails_in_loader)
    threads: set[int] = set()
    host = host_for(set(fails_host), delays or {}, threads)
    stage = HostThreadStage(source, host, depth=depth, progress=progress) if threaded else MappedIterator(source, host)
    outcomes = drain(EpochIterator(stage, progress, None, None))
    return outcomes, progress, source, threads


def settled(progress):
    return progress.settled.beyond_prefix() if not progress.settled.prefix else \
        [(0, progress.settled.prefix), *progress.settled.beyond_prefix()]


def test_batches_come_in_order_and_the_host_work_runs_off_the_training_thread():
    delays = {k: random.Random(k).choice([0, 0.002, 0.01]) for k in range(30)}
    outcomes, progress, source, threads = run(True, 30, depth=3, delays=delays)
    assert outcomes == [("pinned", k) for k in range(30)]
    assert threading.get_ident() not in threads and len(threads) == 1
    assert source.taken_by == {threading.get_ident()}  # the loader's iterator stays on the training thread
    assert progress.finished and settled(progress) == [(0, 60)] and progress.batches == 30


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_the_stage_works_on_depth_batches_while_the_user_holds_one(depth):
    progress = EpochProgress(0, None, None)
    source = Source(progress, 20)
    stage = HostThreadStage(source, lambda k: k, depth=depth, progress=progress)
    iterator = EpochIterator(stage, progress, None, None)
    handed, ahead = 0, []
    for _ in iterator:
        handed += 1
        ahead.append(source.next - handed)
    assert handed == 20 and max(ahead) == depth


def test_errors_keep_their_place_and_lost_batches_stay_unsettled_like_without_the_thread():
    # The synchronous chain (what a batch_transform-only loader does) is the oracle.
    kwargs = dict(batches=12, fails_host=[3, 9], fails_below=[5], fails_in_loader=[7],
                  delays={2: 0.02, 3: 0.01, 8: 0.02})
    want, want_progress, _, _ = run(False, depth=3, **kwargs)
    got, got_progress, _, _ = run(True, depth=3, **kwargs)
    assert want == [("pinned", 0), ("pinned", 1), ("pinned", 2), "host 3", ("pinned", 4), "below 5", ("pinned", 6),
                    "loader 7", ("pinned", 8), "host 9", ("pinned", 10), ("pinned", 11)]
    assert got == want
    # The batches lost on their way (3, 5, 9) stay unsettled; the loader's own error (7)
    # was never yielded here, so it is settled by whatever the loader reports (nothing).
    assert settled(got_progress) == settled(want_progress) == [(0, 6), (8, 10), (12, 14), (16, 18), (20, 24)]
    assert got_progress.batches == want_progress.batches == 8


@pytest.mark.parametrize("seed", range(40))
def test_random_configurations_match_the_synchronous_chain(seed):
    rng = random.Random(seed)
    batches = rng.randint(0, 25)
    picks = lambda p: [k for k in range(batches) if rng.random() < p]  # noqa: E731
    kwargs = dict(batches=batches, fails_host=picks(0.15), fails_below=picks(0.1), fails_in_loader=picks(0.1),
                  delays={k: rng.choice([0, 0, 0.001, 0.004]) for k in range(batches)})
    want, want_progress, _, _ = run(False, depth=1, **kwargs)
    got, got_progress, _, _ = run(True, depth=rng.randint(1, 5), **kwargs)
    assert got == want
    assert settled(got_progress) == settled(want_progress) and got_progress.batches == want_progress.batches


def host_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fastload-host")]


def test_the_thread_ends_with_the_epoch_and_when_the_iterator_is_dropped():
    before = len(host_threads())
    progress = EpochProgress(0, None, None)
    assert list(HostThreadStage(Source(progress, 5), lambda k: k, depth=2, progress=progress)) == list(range(5))
    assert wait_until(lambda: len(host_threads()) == before, 5)
    # Left early, with slow work queued: the queued work is cancelled, the thread ends.
    started = []
    stage = HostThreadStage(Source(EpochProgress(0, None, None), 50), lambda k: started.append(k) or time.sleep(0.05),
                            depth=8, progress=None)
    next(stage)
    assert len(host_threads()) == before + 1
    del stage
    gc.collect()
    assert wait_until(lambda: len(host_threads()) == before, 5)
    assert len(started) <= 3  # the one running when dropped finished; the rest never started


@pytest.mark.parametrize("where", ["host", "below", "below, still pending"])
def test_after_an_error_a_dropped_iterator_ends_its_thread_without_the_garbage_collector(where):
    # An error kept by the stage, or raised through its frames, must not tie the stage in
    # a reference cycle: its thread and its batches would live until a collection.
    before = len(host_threads())
    gc.disable()
    try:
        progress = EpochProgress(0, None, None)
        source = Source(progress, 10, fails_below=[1] if where.startswith("below") else [])
        stage = HostThreadStage(source, host_for({1} if where == "host" else set(), {}, set()), depth=3,
                                progress=progress)
        iterator = EpochIterator(stage, progress, None, None)
        assert next(iterator) == ("pinned", 0)
        if where != "below, still pending":
            with pytest.raises(Boom):
                next(iterator)
            assert next(iterator) == ("pinned", 2)
        del iterator, stage
        assert wait_until(lambda: len(host_threads()) == before, 5)
    finally:
        gc.enable()


LOOP_ON_ANOTHER_THREAD = """
import threading, time
from fastload.prefetch import HostThreadStage
got = []
def loop():
    for k in HostThreadStage(iter(range(100)), lambda k: time.sleep(0.002) or k, depth=2, progress=None):
        got.append(k)
    print(len(got), got == list(range(100)))
threading.Thread(target=loop).start()
"""


def test_a_loop_on_another_thread_keeps_working_after_the_main_thread_ends():
    result = subprocess.run([sys.executable, "-c", LOOP_ON_ANOTHER_THREAD], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["100", "True"]


def test_a_stage_left_alive_does_not_delay_interpreter_exit():
    script = ("import time\nfrom fastload.prefetch import HostThreadStage\n"
              "stage = HostThreadStage(iter(range(100)), lambda k: time.sleep(0.5) or k, depth=4, progress=None)\n"
              "print(next(stage))\n")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.split() == ["0"], result.stderr
    assert time.perf_counter() - started < 15


def test_a_keyboard_interrupt_from_below_is_raised_at_once():
    progress = EpochProgress(0, None, None)

    def source():
        yield 0
        progress.yielded(((0, 2),))
        yield 1
        raise KeyboardInterrupt

    taken = []
    stage = HostThreadStage(source(), lambda k: taken.append(k) or time.sleep(0.2) or k, depth=4, progress=None)
    with pytest.raises(KeyboardInterrupt):
        next(stage)  # would otherwise wait for batch 0's slow host work first
    stage.close()
