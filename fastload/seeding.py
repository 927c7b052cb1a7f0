"""Deriving seeds: every random stream fastload owns is a pure function of a root seed.

NOTE [ Resumable sampling ]

A sampler's order for an epoch and a worker's seeds for an epoch are computed from
``(root seed, epoch)`` (and, per sample, the sample index), never from a generator's
running state. That is what makes a loader's state a handful of integers — root seed,
epoch, positions already delivered — and a restored loader deliver exactly the samples an
uninterrupted one would: it recomputes the epoch's order and skips what was delivered
(NOTE [ Resume ] in ``resume.py``).

What is recomputed is fastload's: the order and the seeds. A dataset's own draws from
the RNGs a worker was seeded with depend on everything that worker fetched before, so
they are reproduced after a resume (or a worker restart) only when they are seeded per
sample (``seed_per_sample=True``, NOTE [ Per-sample seeding ] in ``fetch.py``).
"""

from __future__ import annotations

import zlib
from typing import Any

import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(seed: int, *keys: Any) -> int:
    """A well-mixed non-negative 63-bit seed from ``seed`` and ``keys`` (ints, or anything
    with a stable ``repr``), identical across processes and runs."""
    x = seed & _MASK64
    for key in keys:
        k = key if isinstance(key, int) else zlib.crc32(repr(key).encode())
        x = _splitmix64(x ^ _splitmix64(k & _MASK64))
    return x >> 1


def draw_seed(generator: torch.Generator | None) -> int:
    """One 63-bit seed from ``generator`` (the global generator if None), drawn the way
    torch's DataLoader draws its worker base seed."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item()) & ((1 << 63) - 1)


def epoch_generator(seed: int, epoch: int, stream: str) -> torch.Generator:
    """A fresh CPU generator for ``stream`` (e.g. ``"order"``) of ``epoch``."""
    return torch.Generator().manual_seed(mix_seed(seed, epoch, stream))
