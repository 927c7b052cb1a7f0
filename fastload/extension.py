"""The compiled extension ``fastload._ext`` (C++ in fastload_ext/: region JPEG decoding
with libjpeg-turbo, voxelization).

An install builds it where it can and skips it where it cannot (no C++17 compiler, or no
libjpeg-turbo headers): the loader, the samplers, the collators, the point-cloud readers
and every other image decoder work without it. What needs it asks for it here and, when
it is missing, raises :class:`ExtensionMissingError` saying what needs it and how to get it.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

__all__ = ["ExtensionMissingError", "available", "extension"]

HOW_TO_GET_IT = (
    "It is built when fastload is installed, and skipped where it cannot be: it needs a C++17 compiler and the "
    "libjpeg-turbo headers (Debian/Ubuntu: apt-get install g++ libjpeg62-turbo-dev; Fedora: dnf install gcc-c++ "
    "libjpeg-turbo-devel). Install them, then reinstall fastload (pip install --force-reinstall --no-deps fastload, "
    "or pip install . from a checkout)."
)


class ExtensionMissingError(ImportError):
    """``fastload._ext`` is not installed; the message names what needs it and how to get it."""


def available() -> bool:
    """Whether ``fastload._ext`` is installed."""
    return importlib.util.find_spec("fastload._ext") is not None


def extension(needed_by: str) -> ModuleType:
    """``fastload._ext``, for ``needed_by`` (what the message names if it is missing)."""
    try:
        from fastload import _ext  # type: ignore[attr-defined]  # compiled, without stubs
    except ImportError as exc:
        raise ExtensionMissingError(
            f"{needed_by} needs fastload's compiled extension fastload._ext, which is not installed ({exc}). "
            + HOW_TO_GET_IT) from exc
    return _ext
