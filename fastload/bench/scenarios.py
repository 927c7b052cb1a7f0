"""Benchmark scenarios: a generated dataset and the loaders to compare on it.

The first contender of every scenario is the baseline (torch's DataLoader); the others
are built with the same arguments unless the difference is the point (bucketing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.utils.data as tud

import fastload
from fastload.text import TokenSequences, padding_fraction


class PreDecodedImages(tud.Dataset):
    """``length`` samples of (uint8 CHW image, int label) served from an in-memory array.

    Only ``distinct`` images are stored; sample ``i`` is image ``i % distinct``. The
    dataset itself costs almost nothing per sample, so a loader's own overhead
    (moving and batching data between processes) is what gets measured.
    """

    def __init__(self, length: int, distinct: int = 256, shape: tuple[int, ...] = (3, 224, 224), seed: int = 0):
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, size=(distinct, *shape), dtype=np.uint8)
        self.labels = rng.integers(0, 1000, size=distinct, dtype=np.int64)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        i = index % len(self.images)
        return torch.from_numpy(self.images[i]), int(self.labels[i])


def lognormal_corpus(sequences: int, median_length: int = 100, max_length: int = 2048, seed: int = 0) -> TokenSequences:
    """Token sequences with log-normal lengths (a long tail, like real text), random ids."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median_length), 0.9, sequences), 1, max_length).astype(np.int64)
    offsets = np.zeros(sequences + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return TokenSequences(rng.integers(1, 32000, size=int(offsets[-1]), dtype=np.int32), offsets)


@dataclass
class Contender:
    loader: Any
    #: extra columns for the table, e.g. {"padding": "3.1%"}
    notes: dict[str, str] = field(default_factory=dict)


@dataclass
class Scenario:
    name: str
    description: str
    #: (batches per timed run, batch size, workers) -> contenders, baseline first
    build: Callable[[int, int, int], dict[str, Contender]]


def _overhead(batches: int, batch_size: int, workers: int) -> dict[str, Contender]:
    dataset = PreDecodedImages(batches * batch_size)
    kwargs = dict(batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0)
    return {"torch": Contender(tud.DataLoader(dataset, **kwargs)), "fastload": Contender(fastload.DataLoader(dataset, **kwargs))}


TEXT_SEQUENCES = 100_000


def _text(batches: int, batch_size: int, workers: int) -> dict[str, Contender]:
    corpus = lognormal_corpus(TEXT_SEQUENCES)
    lengths = corpus.lengths
    kwargs = dict(num_workers=workers, persistent_workers=workers > 0, collate_fn=fastload.PadCollator())
    random_batches = np.array_split(np.random.default_rng(0).permutation(len(corpus)), len(corpus) // batch_size)
    random_note = {"padding": f"{padding_fraction(random_batches, lengths):.1%}"}
    bucket = fastload.BucketBatchSampler(lengths, batch_size, seed=0)
    bucket_note = {"padding": f"{padding_fraction(list(bucket), lengths):.1%}"}
    return {
        "torch": Contender(tud.DataLoader(corpus, batch_size=batch_size, shuffle=True, **kwargs), random_note),
        "fastload": Contender(fastload.DataLoader(corpus, batch_size=batch_size, shuffle=True, **kwargs), random_note),
        "fastload+bucket": Contender(fastload.DataLoader(corpus, batch_sampler=bucket, **kwargs), bucket_note),
    }


SCENARIOS: dict[str, Scenario] = {
    "overhead": Scenario(
        "overhead", "pre-decoded uint8 3x224x224 images from memory: the loader's own cost", _overhead
    ),
    "text": Scenario(
        "text",
        f"{TEXT_SEQUENCES} token sequences, log-normal lengths (median 100, up to 2048), padded: "
        "random batches vs length bucketing",
        _text,
    ),
}
