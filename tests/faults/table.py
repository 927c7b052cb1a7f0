"""Prints the fault-injection table (every fault kind × policy, fully accounted):

    .venv/bin/python -m tests.faults.table
"""

from __future__ import annotations

import logging
import tempfile

from .scenarios import is_faulty, run

SAMPLES = 8000
CASES = [
    ("raise", "raise", 0), ("raise", "skip", 0), ("raise", "replace", 0),
    ("malformed", "raise", 0), ("malformed", "skip", 0), ("malformed", "replace", 0),
    ("kill", "raise", 0), ("kill", "skip", 0), ("kill", "raise", 100),
    ("sleep", "raise", 0), ("sleep", "skip", 0), ("sleep", "replace", 0),
]


def main() -> None:
    logging.getLogger("fastload").setLevel(logging.ERROR)  # the table says it all
    print(f"{SAMPLES} samples, batches of 4, 2 workers, {sum(map(is_faulty, range(SAMPLES)))} faulty indices (1%)")
    print("| fault | policy | batches | delivered once | failed | replaced | duplicated | lost | ended by | "
          "next epoch | leftover shm | leftover processes |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |")
    for fault, on_error, restarts in CASES:
        with tempfile.TemporaryDirectory() as markers:
            o = run(fault, on_error, markers, restarts=restarts, samples=SAMPLES)
        print(f"| {o.fault} | {o.policy} | {o.batches} | {o.delivered_once} | {o.failed} | {o.replaced} | "
              f"{o.duplicated} | {o.lost} | {o.error or 'epoch complete'} | {o.next_epoch} | {o.leftover_shm} | "
              f"{o.leftover_processes} |")


if __name__ == "__main__":
    main()
