"""Command line: ``python -m fastload.bench [scenario ...] [options]``."""

from __future__ import annotations

import argparse
import os
import sys

from tqdm import tqdm

from .report import format_table
from .runner import run_scenario
from .scenarios import SCENARIOS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fastload.bench",
        description="Throughput of fastload.DataLoader against torch.utils.data.DataLoader, "
        "measured interleaved in the same run on generated data.",
    )
    parser.add_argument(
        "scenarios", nargs="*", metavar="SCENARIO",
        help=f"what to run: {', '.join(SCENARIOS)} or all (default: all)",
    )
    parser.add_argument("--workers", type=int, default=2, help="num_workers for both loaders (default: 2)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    parser.add_argument("--batches", type=int, default=200, help="batches per timed run (default: 200)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per loader (default: 7)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in (*SCENARIOS, "all")]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)} or all")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = args.scenarios or ["all"]
    names = list(SCENARIOS) if "all" in chosen else list(dict.fromkeys(chosen))
    print(f"fastload.bench on {os.cpu_count()} CPU cores: {', '.join(names)}", file=sys.stderr)
    results = {}
    with tqdm(total=len(names) * args.repeats, desc="runs", unit="repeat", file=sys.stderr) as bar:
        for name in names:
            bar.set_postfix_str(name)
            results[name] = run_scenario(
                SCENARIOS[name],
                batches=args.batches,
                batch_size=args.batch_size,
                workers=args.workers,
                repeats=args.repeats,
                progress=bar.update,
            )
    print(format_table(results, workers=args.workers, batch_size=args.batch_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
