"""A contender timed in another interpreter, e.g. torch's pipeline on stock Pillow while
this interpreter has Pillow-SIMD: same machine, same run, interleaved with the others.

Protocol (one JSON object per line): the parent writes the loader spec, the child answers
``{"ready": ..., "pillow": ...}``; then each ``{"run": N}`` is answered with
``{"count": n, "seconds": s}``; EOF ends the child. This module is the parent's side, and
``remote_child.py`` the child's (it builds the loader from ``scenarios``, which uses this).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


class RemoteContender:
    """Runs ``scenarios.LOADERS[factory](**kwargs)`` in a child with ``pythonpath`` first."""

    def __init__(self, factory: str, kwargs: dict[str, Any], pythonpath: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH", "")) if p)
        self._child = subprocess.Popen(
            [sys.executable, "-m", "fastload.bench.remote_child"], env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self._send({"factory": factory, "kwargs": kwargs})
        self.pillow = self._receive()["pillow"]

    def _send(self, message: dict[str, Any]) -> None:
        assert self._child.stdin is not None
        self._child.stdin.write(json.dumps(message) + "\n")
        self._child.stdin.flush()

    def _receive(self) -> dict[str, Any]:
        assert self._child.stdout is not None
        line = self._child.stdout.readline()
        if not line:
            raise RuntimeError(f"remote contender exited with code {self._child.wait()}")
        return json.loads(line)

    def run(self, batches: int | None) -> tuple[int, float]:
        self._send({"run": batches})
        answer = self._receive()
        return answer["count"], answer["seconds"]

    def close(self) -> None:
        if self._child.stdin is not None:
            self._child.stdin.close()
        try:
            self._child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
