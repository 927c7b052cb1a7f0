"""The comparison table printed at the end of a bench run."""

from __future__ import annotations

import statistics

from .runner import Measurement


def ratio_stats(fast: Measurement, base: Measurement) -> tuple[float, float, float]:
    """(min, median, max) of per-repeat ratios fastload/torch (repeat i against repeat i)."""
    ratios = [f / b for f, b in zip(fast.batches_per_s, base.batches_per_s)]
    return min(ratios), statistics.median(ratios), max(ratios)


def format_table(results: dict[str, dict[str, Measurement]], *, workers: int, batch_size: int) -> str:
    header = f"{'scenario':<10} {'loader':<9} {'batches/s median':>17} {'min':>8} {'max':>8}   fastload/torch min / median / max"
    lines = [f"workers={workers} batch_size={batch_size}", header, "-" * len(header)]
    for scenario, by_loader in results.items():
        for name in ("torch", "fastload"):
            m = by_loader[name]
            row = f"{scenario:<10} {name:<9} {statistics.median(m.batches_per_s):>17.1f} "
            row += f"{min(m.batches_per_s):>8.1f} {max(m.batches_per_s):>8.1f}"
            if name == "fastload":
                lo, med, hi = ratio_stats(m, by_loader["torch"])
                row += f"   {lo:.2f}x / {med:.2f}x / {hi:.2f}x"
            lines.append(row)
    return "\n".join(lines)
