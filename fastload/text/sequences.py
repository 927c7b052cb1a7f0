"""``TokenSequences``: variable-length token sequences as one token array plus offsets.

Why not a list of lists: a forked worker that reads a Python object writes to it (its
reference count), so the page holding it is copied into the worker. A dataset of a
million small lists ends up copied once per worker ("copy-on-read"). Two numpy arrays
hold no per-item objects: workers share their pages, and with ``load(mmap=True)`` the
data is not even read into memory until used.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
from numpy.typing import DTypeLike
import torch
from torch.utils.data import Dataset


class TokenSequences(Dataset):
    """Sequence ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``, returned as a 1-D tensor
    sharing the array's memory.

    Args:
        tokens: 1-D integer array of all tokens, concatenated.
        offsets: ``(n + 1,)`` non-decreasing integers, ``offsets[0] == 0`` and
            ``offsets[-1] == len(tokens)``.

    Raises:
        ValueError: arrays of the wrong rank, dtype or consistency.
    """

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray) -> None:
        if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
            raise ValueError(f"tokens must be a 1-D integer array, got {tokens.dtype} of shape {tokens.shape}")
        if offsets.ndim != 1 or offsets.dtype.kind not in "iu" or len(offsets) < 1:
            raise ValueError(f"offsets must be a non-empty 1-D integer array, got {offsets.dtype} {offsets.shape}")
        if offsets[0] != 0 or offsets[-1] != len(tokens):
            raise ValueError(
                f"offsets must start at 0 and end at len(tokens)={len(tokens)}, got {offsets[0]} and {offsets[-1]}"
            )
        steps = np.diff(offsets)
        if len(steps) and steps.min() < 0:
            raise ValueError(f"offsets must be non-decreasing; offsets[{int(steps.argmin()) + 1}] goes back")
        self.tokens = tokens
        self.offsets = offsets

    @classmethod
    def from_sequences(cls, sequences: Iterable[Sequence[int] | np.ndarray],
                       dtype: DTypeLike = np.int32) -> TokenSequences:
        """Pack an iterable of token sequences (lists, arrays, tensors)."""
        arrays = [np.asarray(s, dtype=dtype).reshape(-1) for s in sequences]
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)
        return cls(tokens, offsets)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``tokens.npy`` and ``offsets.npy`` into ``directory`` (created if needed)."""
        os.makedirs(directory, exist_ok=True)
        np.save(os.path.join(directory, "tokens.npy"), self.tokens)
        np.save(os.path.join(directory, "offsets.npy"), self.offsets)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, mmap: bool = True) -> TokenSequences:
        """Read what :meth:`save` wrote; with ``mmap`` the arrays are mapped, not read.

        The mapping is copy-on-write, so returned tensors are writable without touching
        the file (and a write copies only that page, in that process).
        """
        mode: Literal["c"] | None = "c" if mmap else None
        paths = [os.path.join(directory, name) for name in ("tokens.npy", "offsets.npy")]
        for path in paths:
            if not os.path.exists(path):
                raise FileNotFoundError(f"TokenSequences.load: {path} does not exist")
        return cls(np.load(paths[0], mmap_mode=mode), np.load(paths[1], mmap_mode=mode))

    @property
    def lengths(self) -> np.ndarray:
        """``(n,)`` int64 length of every sequence: what ``BucketBatchSampler`` takes."""
        return np.diff(self.offsets).astype(np.int64, copy=False)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> torch.Tensor:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"TokenSequences index {index} out of range for {n} sequences")
        index %= n
        return torch.from_numpy(self.tokens[self.offsets[index] : self.offsets[index + 1]])


def padding_fraction(batches: Iterable[Sequence[int]], lengths: Sequence[int] | np.ndarray) -> float:
    """Share of padding tokens when each batch is padded to its longest sequence."""
    lengths = np.asarray(lengths)
    padded = real = 0
    for batch in batches:
        batch_lengths = lengths[np.asarray(batch, dtype=np.int64)]
        padded += int(batch_lengths.max(initial=0)) * len(batch_lengths)
        real += int(batch_lengths.sum())
    return 0.0 if padded == 0 else 1.0 - real / padded
