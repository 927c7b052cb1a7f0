"""spawn/forkserver workers started warm (NOTE [ Warm start ]): forked from fastload's
own fork server, the dataset pickled once into shared memory, with spawn's guarantees
kept. torch's DataLoader under the same start method is the oracle."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys

import pytest
import torch

import fastload
from fastload.pool import warm_start

from . import datasets
from .conftest import child_pids, pid_alive, wait_until
from .datasets import ReadsTheEnvironment, ReportsToAQueue, Squares, WorkerState, WritesToASharedTensor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["spawn", "forkserver"]


def rows(loader):
    return [{k: (v[0] if isinstance(v, (list, torch.Tensor)) and len(v) == 1 else v) for k, v in batch.items()}
            for batch in loader]


def plain(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@pytest.mark.parametrize("method", METHODS)
def test_warm_workers_see_what_torchs_spawned_workers_see(method, no_leaks):
    datasets.MODULE_STATE = "changed in the main process"  # a fresh interpreter does not see it
    try:
        def loader(cls):
            return cls(WorkerState(8), batch_size=1, num_workers=2, multiprocessing_context=method,
                       generator=torch.Generator().manual_seed(7))

        ours = [{k: plain(v) for k, v in row.items()} for row in rows(loader(fastload.DataLoader))]
        theirs = [{k: plain(v) for k, v in row.items()} for row in rows(loader(torch.utils.data.DataLoader))]
    finally:
        datasets.MODULE_STATE = "as imported"
    server = warm_start.server_pid()
    assert server is not None and all(row["ppid"] == server for row in ours)  # forked from the warm server
    assert len({row["pid"] for row in ours}) == 2
    for mine, torchs in zip(ours, theirs, strict=True):
        for key in ("id", "num_workers", "seed", "random", "numpy", "torch", "module_state", "cuda_initialized",
                    "dataset_is_a_copy", "array_sum", "tensor_sum", "array_writeable"):
            assert mine[key] == torchs[key], key
        assert mine["module_state"] == "as imported" and mine["cuda_initialized"] is False
    # Writes to the dataset's arrays stay in the worker that made them (copy-on-write).
    first = {row["id"]: (row["before_array"], row["before_tensor"]) for row in ours[:2]}
    assert first == {0: (0, 0.0), 1: (0, 0.0)}
    assert all((row["before_array"], row["before_tensor"]) == (1000 + row["id"], 1000.0 + row["id"])
               for row in ours[2:])


def test_the_warm_server_holds_one_thread_and_no_dataset(no_leaks):
    list(fastload.DataLoader(WorkerState(4), batch_size=2, num_workers=2, multiprocessing_context="spawn"))
    server = warm_start.server_pid()
    assert server is not None and pid_alive(server)
    assert len(os.listdir(f"/proc/{server}/task")) == 1
    with open(f"/proc/{server}/maps") as f:
        maps = f.read()
    assert "fastload-dataset" not in maps and "libcuda.so" not in maps  # the driver: loaded when CUDA starts
    assert "libtorch_cpu.so" in maps  # torch was imported before the server served


def test_a_multiprocessing_context_object_starts_warm_too(no_leaks):
    context = multiprocessing.get_context("forkserver")
    got = rows(fastload.DataLoader(WorkerState(4), batch_size=1, num_workers=2, multiprocessing_context=context))
    assert {int(row["ppid"]) for row in got} == {warm_start.server_pid()}


def test_the_dataset_is_pickled_once_into_shared_memory():
    dataset = WorkerState(4)
    shared = warm_start.SharedPickle(dataset)
    try:
        # the array and the tensor (512 KiB) went out of band; the in-band pickle is small
        assert shared.buffer_bytes == dataset.array.nbytes + dataset.tensor.numel() * 4
        assert shared.inband_size < 4096
    finally:
        shared.close()


def test_what_only_multiprocessing_can_send_is_sent_per_worker_from_the_warm_server(no_leaks):
    queue = multiprocessing.get_context("spawn").Queue()
    loader = fastload.DataLoader(ReportsToAQueue(8, queue), batch_size=2, num_workers=2,
                                 multiprocessing_context="spawn")
    assert [labels.tolist() for _, labels, _ in loader] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert sorted(queue.get(timeout=10) for _ in range(8)) == list(range(8))
    assert warm_start.server_pid() is not None


def test_an_unpicklable_dataset_is_named_before_any_worker_starts(no_leaks):
    before = child_pids()
    with pytest.raises(TypeError, match=r"DataLoader's collate_fn by pickling, and collate_fn=<function .*<lambda>"), \
            pytest.warns(UserWarning, match="Got pickle error when attempting to start a worker Process"):
        list(fastload.DataLoader(Squares(8), num_workers=2, collate_fn=lambda b: b, multiprocessing_context="spawn"))
    server = warm_start.server_pid()
    assert server is None or child_pids(server) == set()  # the server forked no worker
    assert child_pids() <= before


def test_a_dead_warm_worker_is_restarted_from_the_warm_server(no_leaks):
    loader = fastload.DataLoader(Squares(200), batch_size=10, num_workers=2, multiprocessing_context="forkserver",
                                 max_worker_restarts=2)
    labels, killed = [], []
    for n, (_, batch_labels, _) in enumerate(loader):
        labels += batch_labels.tolist()
        if n in (3, 10):
            victim = next(p for p in multiprocessing.active_children() if p.name.startswith("fastload-worker"))
            os.kill(victim.pid, signal.SIGKILL)
            victim.join(10)
            killed.append(victim.pid)
    assert labels == list(range(200)) and len(killed) == 2
    assert all(int(p.pid) not in killed for p in multiprocessing.active_children()
               if p.name.startswith("fastload-worker"))


WARM_OFF = """
import os, sys
sys.path.insert(0, {repo!r})
import fastload
from fastload.pool import warm_start
from tests.datasets import WorkerState
rows = list(fastload.DataLoader(WorkerState(2), batch_size=1, num_workers=2, multiprocessing_context="spawn"))
print(warm_start.server_pid(), sorted(set(int(r["ppid"]) for r in rows)) == [os.getpid()])
"""


def test_fastload_warm_start_0_starts_workers_as_multiprocessing_does():
    result = subprocess.run([sys.executable, "-c", WARM_OFF.format(repo=REPO)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "FASTLOAD_WARM_START": "0"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "True"]  # no warm server; spawn's workers are our children


EXITS = """
import sys
sys.path.insert(0, {repo!r})
import fastload
from fastload.pool import warm_start
from tests.datasets import Squares
list(fastload.DataLoader(Squares(4), num_workers=2, multiprocessing_context="forkserver"))
print(warm_start.server_pid(), flush=True)
"""


def test_the_warm_server_exits_with_the_main_process():
    result = subprocess.run([sys.executable, "-c", EXITS.format(repo=REPO)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    server = int(result.stdout.split()[-1])
    assert wait_until(lambda: not pid_alive(server), 10)


def test_a_tensor_in_shared_memory_stays_shared_with_the_workers(no_leaks):
    dataset = WritesToASharedTensor(8)
    assert sorted(int(i) for batch in fastload.DataLoader(dataset, batch_size=2, num_workers=2,
                                                          multiprocessing_context="spawn") for i in batch) == list(range(8))
    assert dataset.cache.tolist() == [1.0 * (i + 1) for i in range(8)]  # written by the workers, seen here


def test_storages_are_pickled_once_and_views_keep_sharing_them():
    base = torch.arange(20.0).reshape(4, 5)
    objects = {"base": base, "view": base[1:, ::2], "expanded": torch.zeros(1).expand(10_000),
               "channels_last": torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)}
    shared = warm_start.SharedPickle(objects)
    try:
        assert shared.buffer_bytes == 20 * 4 + 4 + 2 * 3 * 4 * 5 * 4  # base once, the expanded one's single float
        loaded = warm_start._load_shared(os.dup(shared.fd), shared.size, shared.inband_size, shared.layout)
    finally:
        shared.close()
    for name, tensor in objects.items():
        assert torch.equal(loaded[name], tensor) and loaded[name].stride() == tensor.stride(), name
    loaded["base"][1, 0] = 99
    assert loaded["view"][0, 0] == 99 and base[1, 0] == 5  # one storage in the copy; the original untouched


def test_a_later_loader_sees_the_environment_of_its_start(no_leaks, monkeypatch):
    def values():
        return [v for batch in fastload.DataLoader(ReadsTheEnvironment(), batch_size=1, num_workers=2,
                                                   multiprocessing_context="forkserver") for v in batch]

    monkeypatch.delenv("FASTLOAD_TEST_VARIABLE", raising=False)
    assert values() == ["<unset>", "<unset>"]
    monkeypatch.setenv("FASTLOAD_TEST_VARIABLE", "set after the server started")
    assert values() == ["set after the server started"] * 2


MAIN_KILLED = """
import sys, time
sys.path.insert(0, {repo!r})
import fastload
from fastload.pool import warm_start
from tests.datasets import StuckAfterTheFirst
if __name__ == "__main__":
    loader = fastload.DataLoader(StuckAfterTheFirst(1000), batch_size=1, num_workers=2, persistent_workers=True,
                                 multiprocessing_context="spawn")
    iterator = iter(loader)
    next(iterator)
    print(warm_start.server_pid(), *[p.pid for p in iterator._workers], flush=True)
    time.sleep(60)
"""


def test_busy_workers_and_the_server_exit_when_the_main_process_is_killed(tmp_path):
    script = tmp_path / "main.py"
    script.write_text(MAIN_KILLED.format(repo=REPO))
    main = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in main.stdout.readline().split()]
        assert len(pids) == 3 and all(pid_alive(p) for p in pids)
    finally:
        main.kill()
        main.wait()
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), 15), [p for p in pids if pid_alive(p)]


def test_a_packages_main_module_is_not_run_again_by_the_warm_server(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {REPO!r})\n"
        "with open(os.path.join(os.path.dirname(__file__), 'runs'), 'a') as f:\n"
        "    f.write(f'{os.getpid()}\\n')\n"
        "import fastload\n"
        "from tests.datasets import Squares\n"
        "print(len(list(fastload.DataLoader(Squares(4), num_workers=2, multiprocessing_context='spawn'))))\n")
    result = subprocess.run([sys.executable, "-m", "pkg"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["4"] and len((package / "runs").read_text().split()) == 1
