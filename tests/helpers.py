from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastload.device import cuda_usable

#: For a test that needs a GPU: skipped without one, and selected by `pytest -m cuda`
#: (what benchmarks/gpu_check.py runs).
def needs_cuda(test):
    return pytest.mark.cuda(pytest.mark.skipif(not cuda_usable(), reason="needs a CUDA device")(test))


def assert_same(a, b, path: str = "batch") -> None:
    """Deep equality that also checks types, dtypes and shapes."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{tuple(a.shape)} != {b.dtype}{tuple(b.shape)}"
        assert torch.equal(a, b), f"{path}: values differ"
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        assert np.array_equal(a, b), f"{path}: values differ"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_distributed(script: str, *args: str, processes: int = 2, launcher: str = "torchrun", timeout: float = 300,
                    env: dict[str, str] | None = None) -> None:
    """Run ``tests/distributed/<script>`` on ``processes`` real processes (``torchrun``), or
    with ``launcher="python"`` as one process that starts the others itself (Lightning);
    fails the test with the end of its output unless it exits 0."""
    if launcher == "torchrun":
        torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
        command = [torchrun, "--standalone", f"--nproc_per_node={processes}"]
    else:
        command = [sys.executable]
    result = subprocess.run([*command, os.path.join("tests", "distributed", script), *args], cwd=REPO,
                            capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", **(env or {})})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
