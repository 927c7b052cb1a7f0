"""Command line: ``python -m fastload.bench [scenario ...] [options]``."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

from tqdm import tqdm

from .environment import describe_environment
from .report import format_table, plot, ratio_stats, to_json
from .runner import run_scenario
from .scenarios import SCENARIOS, BenchConfig
from .startup import IMAGENET_TRAIN_ITEMS, STARTUP_DESCRIPTION, STARTUP_REPEATS, startup_lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fastload.bench",
        description="Throughput of fastload against torch.utils.data.DataLoader (and DALI), measured "
        "interleaved in the same run, on generated data or your own images (--data) and lidar scans (--scans). "
        "Writes no files unless asked (--json, --plot).",
    )
    parser.add_argument(
        "scenarios", nargs="*", metavar="SCENARIO",
        help="; ".join(f"{s.name}: {s.description}" for s in SCENARIOS.values())
        + f"; startup: {STARTUP_DESCRIPTION}; all (default): every one",
    )
    parser.add_argument("--workers", type=int, default=None,
                        help="num_workers (DALI: threads) for every loader (default: 2; startup: 4)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="batch size (default: per scenario: "
                        + ", ".join(f"{s.name} {s.default_batch_size}" for s in SCENARIOS.values()) + ")")
    parser.add_argument("--batches", type=int, default=None,
                        help="batches per timed run (default: per scenario: "
                        + ", ".join(f"{s.name} {s.default_batches or 'one epoch'}" for s in SCENARIOS.values()) + ")")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per loader (default: 5)")
    parser.add_argument("--data", metavar="DIR", help="an ImageFolder (class subfolders of images) for the image scenario; where FFCV "
                        "is installed, it is first converted to an FFCV file about as large, in the temporary directory")
    parser.add_argument("--scans", metavar="DIR", help="a folder of lidar scans (.bin, .pcd, .ply) for the lidar scenario")
    parser.add_argument("--index-items", type=int, default=IMAGENET_TRAIN_ITEMS, metavar="N",
                        help=f"startup: paths in the dataset's index (default: {IMAGENET_TRAIN_ITEMS:,}, ImageNet's)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON: environment (CPU, cores, torch, "
                        "Pillow flavour, DALI...), settings, every repeat, ratios, fastload's per-stage times")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw a chart: batches/s per loader per scenario "
                        "(min–max bars) and fastload's time per batch by stage (needs matplotlib)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in (*SCENARIOS, "startup", "all")]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}, startup or all")
    for option in ("data", "scans"):
        folder = getattr(args, option)
        if folder is not None and not os.path.isdir(folder):
            parser.error(f"--{option} {folder}: not a directory")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = args.scenarios or ["all"]
    names = [*SCENARIOS, "startup"] if "all" in chosen else list(dict.fromkeys(chosen))
    print(f"fastload.bench on {os.cpu_count()} CPU cores: {', '.join(names)}", file=sys.stderr)
    results, notes, batch_sizes = {}, [], {}
    # Each startup repeat is six fresh processes, some of them slow: one repeat within "all"
    # (its ratios are far from noise), up to STARTUP_REPEATS when asked for by name.
    startup_repeats = min(args.repeats, STARTUP_REPEATS if "startup" in chosen else 1)
    workers = args.workers if args.workers is not None else 2
    total = sum(startup_repeats if name == "startup" else args.repeats for name in names)
    with tempfile.TemporaryDirectory(prefix="fastload-bench-") as scratch, \
            tqdm(total=total, desc="runs", unit="repeat", file=sys.stderr) as bar:
        for name in names:
            if name == "startup":  # not a throughput scenario: its own table, under the main one
                bar.set_postfix_str(name)
                notes += startup_lines(args.workers if args.workers is not None else 4, startup_repeats,
                                       args.index_items, progress=bar.update)
                continue
            bar.set_postfix_str(name)
            scenario = SCENARIOS[name]
            batch_sizes[name] = args.batch_size or scenario.default_batch_size
            config = BenchConfig(batch_size=batch_sizes[name], workers=workers, data=args.data, scans=args.scans,
                                 scratch=scratch, repeats=args.repeats)
            batches = args.batches or scenario.default_batches
            setup = scenario.build(config, batches)
            epoch_samples = setup.epoch_samples if batches is None else None

            def samples(count: int, size: int = batch_sizes[name], epoch: int | None = epoch_samples) -> int:
                return epoch if epoch is not None else count * size

            try:
                results[name] = run_scenario(setup.contenders, batches=batches, scenario=name, repeats=args.repeats,
                                             progress=bar.update, samples=samples)
            finally:
                setup.close()
            notes += setup.report({n: statistics.median(m.batches_per_s) for n, m in results[name].items()})
            for a, b, what in setup.compare:
                lo, med, hi = ratio_stats(results[name][a], results[name][b])
                notes.append(f"{name}: {what} ({a} / {b}, repeat by repeat): {lo:.3f} / {med:.3f} / {hi:.3f} "
                             "(min / median / max)")
    if results:
        print(format_table(results, workers=workers, batch_sizes=batch_sizes))
    for line in notes:
        print(line)
    if args.json or args.plot:
        report = to_json(results, notes=notes, workers=workers, batch_sizes=batch_sizes, repeats=args.repeats,
                         environment=describe_environment())
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
            print(f"wrote {args.json}", file=sys.stderr)
        if args.plot:
            plot(report, args.plot)
            print(f"wrote {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
