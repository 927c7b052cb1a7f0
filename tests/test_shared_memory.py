"""Where slots live: memfds, whatever the size of /dev/shm (containers often give it
64 MB), and unlinked files where memfds are unavailable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

import fastload
from fastload.pool.budget import BUDGET_ENV

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import sys, torch, fastload, torch.utils.data as tud
class Big(tud.Dataset):
    def __len__(self): return 32
    def __getitem__(self, i): return torch.full((256, 1024), float(i))  # 1 MB per sample
Loader = fastload.DataLoader if sys.argv[1] == "fastload" else tud.DataLoader
print(sys.argv[1], "sum", sum(int(b[:, 0, 0].sum()) for b in Loader(Big(), batch_size=4, num_workers=2)))
"""


def run_with_small_dev_shm(loader: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs SCRIPT in a private mount namespace whose /dev/shm is a 1 MB tmpfs."""
    command = f"mount -t tmpfs -o size=1m tmpfs /dev/shm && exec {sys.executable} -W always -c '{SCRIPT}' {loader}"
    return subprocess.run(["unshare", "--mount", "sh", "-c", command], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def can_make_a_small_dev_shm() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                           capture_output=True)
    return probe.returncode == 0


needs_namespace = pytest.mark.skipif(not can_make_a_small_dev_shm(),
                                     reason="needs root to mount a small /dev/shm in a mount namespace")


@needs_namespace
def test_batches_four_times_the_size_of_dev_shm_need_no_room_there():
    ours = run_with_small_dev_shm("fastload")
    assert ours.returncode == 0, ours.stderr
    assert "fastload sum 496" in ours.stdout
    theirs = run_with_small_dev_shm("torch")  # torch's loader puts each batch in /dev/shm
    assert theirs.returncode != 0 and "No space left on device" in theirs.stderr


@needs_namespace
def test_without_memfds_slots_are_unlinked_files_on_disk_when_dev_shm_is_small(tmp_path):
    result = run_with_small_dev_shm("fastload", {"FASTLOAD_SLOT_BACKING": "file", "TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "fastload sum 496" in result.stdout
    assert f"slots are unlinked files in {tmp_path}" in result.stderr and "disk-backed" in result.stderr
    assert list(tmp_path.iterdir()) == []  # unlinked as soon as they were created


def test_without_memfds_slots_are_unlinked_files_in_dev_shm_when_it_has_room(no_leaks):
    result = subprocess.run([sys.executable, "-W", "always", "-c", SCRIPT, "fastload"], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "FASTLOAD_SLOT_BACKING": "file"})
    assert result.returncode == 0, result.stderr
    assert "fastload sum 496" in result.stdout
    assert "slots are unlinked files in /dev/shm" in result.stderr and "disk-backed" not in result.stderr


class BigSamples(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.full((256, 1024), float(i))  # 1 MB


@pytest.mark.parametrize("in_order", [True, False])
def test_a_small_memory_budget_shrinks_the_arena_and_says_so(in_order, monkeypatch, no_leaks):
    monkeypatch.setenv(BUDGET_ENV, str(24 << 20))  # 24 MB: 4 MB batches, 4 in flight + 2 being filled do not fit
    loader = fastload.DataLoader(BigSamples(), batch_size=4, num_workers=2, in_order=in_order)
    with pytest.warns(UserWarning, match=r"batches take 4.0 MB; 4 in flight would not fit .* so only 1 will be"):
        total = sum(int(b[:, 0, 0].sum()) for b in loader)
    assert total == sum(range(64))
