"""The ``startup`` scenario: time to the first batch of a first and a second loader in a
fresh process, for each start method, torch against fastload.

Under ``spawn`` and ``forkserver`` every worker is a new interpreter: it imports torch and
receives the pickled dataset before its first batch, and a second loader in the same
process (a validation loader, or each epoch without ``persistent_workers``) pays again.
The dataset here is an ImageNet-sized index: 1,281,167 relative paths as a numpy string
array (what a file-list dataset holds), whose pickle is ~225 MB. Each measurement runs in
a new interpreter (``python -m fastload.bench.startup``), so the first loader starts
from nothing, as in a training script; the contenders alternate, run by run.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch.utils.data as tud

#: ImageNet-1k's training set
IMAGENET_TRAIN_ITEMS = 1_281_167
#: at most this many repeats when the scenario is asked for by name (one within "all")
STARTUP_REPEATS = 3
STARTUP_DESCRIPTION = ("seconds to the first batch of a first and a second loader in a fresh process, fork / "
                       "forkserver / spawn, torch vs fastload, 4 workers (or --workers), an ImageNet-sized index of "
                       "paths (--index-items); up to 3 repeats by name, 1 within all")
METHODS = ("fork", "forkserver", "spawn")
LOADERS = ("torch", "fastload")


class PathIndex(tud.Dataset):
    """``items`` image paths like ImageNet's (``train/n01440764/n01440764_10026.JPEG``);
    a sample is ``(index, path length)``: reading nothing, so startup is what is timed."""

    def __init__(self, items: int) -> None:
        ids = np.arange(items)
        classes = np.char.add("n0", (1440764 + ids % 1000 * 7919).astype(str))
        self.paths = np.char.add(np.char.add(np.char.add(np.char.add("train/", classes), "/"), classes),
                                 np.char.add(np.char.add("_", ids.astype(str)), ".JPEG"))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, int]:
        return index, len(self.paths[index])


def _first_batches(method: str, loader: str, workers: int, items: int) -> dict[str, float]:
    """In this (fresh) process: seconds to the first batch of two loaders, one after the other."""
    import fastload

    dataset = PathIndex(items)
    factory: Any = tud.DataLoader if loader == "torch" else fastload.DataLoader
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        batches = factory(dataset, batch_size=64, shuffle=True, num_workers=workers, multiprocessing_context=method)
        next(iter(batches))
        seconds.append(time.perf_counter() - started)
        del batches
    return {"first": seconds[0], "second": seconds[1]}


def measure(method: str, loader: str, workers: int, items: int) -> dict[str, float]:
    """:func:`_first_batches` in a new interpreter."""
    result = subprocess.run([sys.executable, "-W", "ignore", "-m", "fastload.bench.startup", method, loader,
                             str(workers), str(items)], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"startup {method} {loader} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def startup_lines(workers: int, repeats: int, items: int = IMAGENET_TRAIN_ITEMS,
                  progress: Any = None) -> list[str]:
    """The scenario's table, as lines: per start method, the median seconds to the first
    batch of the first and second loader for torch and fastload, and fastload / torch."""
    times: dict[tuple[str, str], list[dict[str, float]]] = {(m, ld): [] for m in METHODS for ld in LOADERS}
    for repeat in range(repeats):
        for method in METHODS:
            order = LOADERS if repeat % 2 == 0 else LOADERS[::-1]
            for loader in order:
                times[method, loader].append(measure(method, loader, workers, items))
        if progress is not None:
            progress(1)
    lines = [f"startup: seconds to the first batch, a fresh process, {workers} workers, an index of {items:,} paths "
             f"(numpy strings), median of {repeats}; the second loader starts after the first in the same process",
             f"startup: {'method':<11} {'torch 1st':>9} {'torch 2nd':>9} {'fastload 1st':>12} {'fastload 2nd':>12} "
             f"{'1st ratio':>9} {'2nd ratio':>9}"]
    for method in METHODS:
        med = {(ld, k): statistics.median(t[k] for t in times[method, ld]) for ld in LOADERS for k in ("first", "second")}
        lines.append(f"startup: {method:<11} {med['torch', 'first']:>9.2f} {med['torch', 'second']:>9.2f} "
                     f"{med['fastload', 'first']:>12.2f} {med['fastload', 'second']:>12.2f} "
                     f"{med['fastload', 'first'] / med['torch', 'first']:>8.2f}x "
                     f"{med['fastload', 'second'] / med['torch', 'second']:>8.2f}x")
    return lines


if __name__ == "__main__":
    # The dataset's class must pickle as fastload.bench.startup.PathIndex, not __main__'s.
    from fastload.bench import startup

    method, loader, workers, items = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(startup._first_batches(method, loader, workers, items)))
