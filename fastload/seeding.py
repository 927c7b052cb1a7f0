"""Seeds: drawn as torch's DataLoader draws them, derived where fastload adds its own.

NOTE [ Seeds ]

The same generator, or the same global seed, gives the same data as torch's DataLoader:

* Each ``iter(loader)`` draws one base seed from the loader's ``generator`` (torch's
  global RNG if None), as torch's iterator does; with persistent workers only the first,
  since those workers keep the seeds they started with. Worker ``k`` seeds ``random`` and
  ``torch`` with ``base_seed + k`` and ``numpy`` from ``(base_seed, k)`` by torch's own
  function, and ``get_worker_info().seed`` is ``base_seed + k``.
* The sampler draws the order after that, at its first index: ``shuffle=True`` uses
  ``fastload.RandomSampler``, torch's index for index.
* fastload's own randomness derives from those: samples are seeded
  (``seed_per_sample``) and replacements chosen from ``sample_seed(root, epoch)``, the
  root being the base seed of the loader's first epoch. Persistent workers keep one base
  seed and other loaders draw one per epoch; the root is the same for both, so sample
  seeds do not depend on ``num_workers`` or ``persistent_workers``.

A loader's state records what its epoch drew: the base seed (and the root), where the
sampler's draw began (its generator's state, or the seed it drew from the global RNG),
and the state of the loader's own generator after its draw. A resumed epoch has the same order and seeds,
the generators go on as they would have, and nothing is drawn again from torch's global
RNG (training frameworks checkpoint that themselves).

NOTE [ Resumable sampling ]

fastload's other samplers (distributed, bucketing) compute an epoch's order from
``(seed, epoch)``, never from a generator's running state, so their state is a few
integers and a restored sampler recomputes the epoch's order and skips what was
delivered (NOTE [ Resume ] in ``resume.py``).

What is reproduced is the order and the seeds. A dataset's own draws from the RNGs a
worker was seeded with depend on everything that worker fetched before, so they are
reproduced after a resume (or a worker restart) only when they are seeded per sample
(``seed_per_sample=True``, NOTE [ Per-sample seeding ] in ``fetch.py``).
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import numpy as np
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
    """One base seed from ``generator`` (the global generator if None), drawn exactly as
    torch's DataLoader iterator draws its own."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


def sample_seed(root: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s samples (``seed_per_sample``) and replacements."""
    return mix_seed(root, epoch, "samples")


def epoch_generator(seed: int, epoch: int, stream: str) -> torch.Generator:
    """A fresh CPU generator for ``stream`` (e.g. ``"order"``) of ``epoch``."""
    return torch.Generator().manual_seed(mix_seed(seed, epoch, stream))


def encode_generator_state(state: torch.Tensor | None) -> str | None:
    """A generator's ``get_state()`` as JSON-safe text: about 4.2 KB for a CPU generator
    (compressed: half of its Mersenne Twister words are zero bytes)."""
    return None if state is None else base64.b64encode(zlib.compress(state.numpy().tobytes())).decode("ascii")


def decode_generator_state(text: Any, generator: torch.Generator, what: str) -> torch.Tensor:
    """The generator state ``text`` holds, checked by loading it into a scratch generator
    of ``generator``'s kind; ``ValueError`` naming ``what`` if it is not one."""
    try:
        raw = zlib.decompress(base64.b64decode(text, validate=True))
        state = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy())
        torch.Generator(device=generator.device).set_state(state)
    except (TypeError, ValueError, RuntimeError, zlib.error) as exc:
        raise ValueError(f"{what} is not the state of a {generator.device} torch.Generator: {exc}") from exc
    return state
