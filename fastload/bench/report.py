"""The comparison table printed at the end of a bench run."""

from __future__ import annotations

import statistics

from .runner import Measurement


def ratio_stats(contender: Measurement, baseline: Measurement) -> tuple[float, float, float]:
    """(min, median, max) of per-repeat ratios contender/baseline (repeat i against repeat i)."""
    ratios = [c / b for c, b in zip(contender.batches_per_s, baseline.batches_per_s)]
    return min(ratios), statistics.median(ratios), max(ratios)


def format_table(results: dict[str, dict[str, Measurement]], *, workers: int, batch_sizes: dict[str, int]) -> str:
    header = (f"{'scenario':<9} {'loader':<32} {'batches/s median':>16} {'min':>8} {'max':>8}   "
              f"{'vs torch min / median / max':<28} notes")
    sizes = ", ".join(f"{scenario} {size}" for scenario, size in batch_sizes.items())
    lines = [f"workers={workers}; batch size: {sizes}", header, "-" * len(header)]
    for scenario, by_loader in results.items():
        baseline = next(iter(by_loader.values()))
        for name, m in by_loader.items():
            row = (f"{scenario:<9} {name:<32} {statistics.median(m.batches_per_s):>16.1f} "
                   f"{min(m.batches_per_s):>8.1f} {max(m.batches_per_s):>8.1f}   ")
            if m is baseline:
                row += f"{'(baseline)':<28}"
            else:
                lo, med, hi = ratio_stats(m, baseline)
                row += f"{f'{lo:.2f}x / {med:.2f}x / {hi:.2f}x':<28}"
            row += " ".join(f"{k} {v}" for k, v in m.notes.items())
            lines.append(row.rstrip())
    # Where a scenario has several torch baselines (stock Pillow, Pillow-SIMD), the ratio
    # to each one, repeat by repeat.
    for scenario, by_loader in results.items():
        torch_rows = [m for name, m in by_loader.items() if name.startswith("torch")]
        for baseline in torch_rows[1:]:
            for name, m in by_loader.items():
                if not name.startswith("torch"):
                    lo, med, hi = ratio_stats(m, baseline)
                    lines.append(f"{scenario}: {name} vs {baseline.loader}: {lo:.2f}x / {med:.2f}x / {hi:.2f}x")
    return "\n".join(lines)
