"""fastload's package (not the bench, a tool) type-checks clean with mypy, as configured in
pyproject.toml: a change that breaks a declared type fails here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytest.importorskip("mypy")


@pytest.mark.timeout(600)
def test_mypy_finds_no_issue_in_fastload():
    result = subprocess.run([sys.executable, "-m", "mypy", "fastload"], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert result.stdout.startswith("Success: no issues found")
