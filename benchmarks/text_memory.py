"""Resident memory of a 2-worker text loader: Python list of lists vs fastload.text.TokenSequences.

    python benchmarks/text_memory.py --sequences 1000000

Each variant runs in a fresh interpreter: build the corpus, iterate one epoch with 2
workers, and at 90% of the epoch sum the PSS (proportional set size, from
/proc/PID/smaps_rollup: shared pages are split between the processes sharing them) of
the main process and its workers. Variants:

* ``list``: the tokens held as a Python list of lists, a plain Dataset, torch's DataLoader;
* ``fastload``: the same tokens in ``TokenSequences`` (two numpy arrays), fastload.DataLoader.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import torch
import torch.utils.data as tud

import fastload
from fastload.text import TokenSequences


def corpus(sequences: int, median_length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median_length), 0.8, sequences), 1, 2048).astype(np.int64)
    offsets = np.zeros(sequences + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = rng.integers(1000, 32000, size=int(offsets[-1]), dtype=np.int32)  # beyond Python's small-int cache
    return tokens, offsets


class ListOfLists(tud.Dataset):
    def __init__(self, sequences: list[list[int]]) -> None:
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(self.sequences[index])


def pss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss line for pid {pid}")


def run_variant(variant: str, sequences: int, median_length: int) -> dict[str, float]:
    tokens, offsets = corpus(sequences, median_length)
    kwargs = dict(batch_size=256, num_workers=2, collate_fn=fastload.PadCollator())
    if variant == "list":
        data = [tokens[offsets[i] : offsets[i + 1]].tolist() for i in range(sequences)]
        del tokens, offsets
        loader = tud.DataLoader(ListOfLists(data), **kwargs)
    else:
        loader = fastload.DataLoader(TokenSequences(tokens, offsets), **kwargs)
    sample_at = int(len(loader) * 0.9)
    for i, _batch in enumerate(loader):
        if i == sample_at:
            workers = [p.pid for p in multiprocessing.active_children()]
            main, per_worker = pss_mb(os.getpid()), [pss_mb(pid) for pid in workers]
    return {"main_mb": main, "workers_mb": per_worker, "total_mb": main + sum(per_worker)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=1_000_000)
    parser.add_argument("--median-length", type=int, default=20)
    parser.add_argument("--variant", choices=["list", "fastload"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.sequences, args.median_length)))
        return
    results = {}
    for variant in ("list", "fastload"):
        out = subprocess.run(
            [sys.executable, __file__, "--variant", variant, "--sequences", str(args.sequences),
             "--median-length", str(args.median_length)],
            check=True, capture_output=True, text=True,
        ).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    print(f"{args.sequences} sequences (median length {args.median_length}), 2 workers, PSS at 90% of an epoch:")
    for variant, label in (("list", "list of lists, torch DataLoader"), ("fastload", "TokenSequences, fastload")):
        r = results[variant]
        workers = " + ".join(f"{w:.0f}" for w in r["workers_mb"])
        print(f"  {label:<34} total {r['total_mb']:7.0f} MB  (main {r['main_mb']:.0f} + workers {workers})")
    print(f"  ratio list / fastload: {results['list']['total_mb'] / results['fastload']['total_mb']:.1f}x")
    print("JSON " + json.dumps(results))


if __name__ == "__main__":
    main()
