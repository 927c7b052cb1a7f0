"""The cost of ``telemetry=True`` where it would show most: the overhead scenario's
loader (pre-decoded images from memory, batches of 64, 2 workers), in pairs of fresh
loaders, on then off or off then on, each timed over one epoch after a warm-up epoch.

    .venv/bin/python benchmarks/telemetry_overhead.py [--pairs 16]

Prints the on/off throughput ratio per pair, its median and mean. (The bench's
``overhead`` scenario shows the same comparison, repeat by repeat, within one run.)
"""

from __future__ import annotations

import argparse
import statistics
import time

import fastload
from fastload.bench.scenarios import PreDecodedImages


def batches_per_s(dataset: PreDecodedImages, telemetry: bool) -> float:
    loader = fastload.DataLoader(dataset, batch_size=64, num_workers=2, persistent_workers=True, telemetry=telemetry)
    for _batch in loader:  # warm-up: workers started, slots created and mapped
        pass
    start = time.perf_counter()
    count = sum(1 for _batch in loader)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    args = parser.parse_args()
    dataset = PreDecodedImages(300 * 64)
    ratios = []
    for pair in range(args.pairs):
        if pair % 2:
            on = batches_per_s(dataset, True)
            off = batches_per_s(dataset, False)
        else:
            off = batches_per_s(dataset, False)
            on = batches_per_s(dataset, True)
        ratios.append(on / off)
    print("telemetry on / off, per pair: " + " ".join(f"{r:.3f}" for r in ratios))
    print(f"median {statistics.median(ratios):.3f}, mean {statistics.fmean(ratios):.3f} over {len(ratios)} pairs")


if __name__ == "__main__":
    main()
