"""What a bench result was measured on: the machine and the versions that matter."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from typing import Any


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_environment() -> dict[str, Any]:
    from fastload import __version__
    from fastload.image import pillow_flavour

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "fastload": __version__,
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "pillow": pillow_flavour(),
        "dali": _version("nvidia-dali-cuda130"),
        "spconv": _version("spconv"),
        "ffcv": _version("ffcv"),
        "spdl": _version("spdl"),
    }
