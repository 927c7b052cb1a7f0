"""The comparison table printed at the end of a bench run."""

from __future__ import annotations

import statistics
from typing import Any

from .runner import Measurement


def ratio_stats(contender: Measurement, baseline: Measurement) -> tuple[float, float, float]:
    """(min, median, max) of per-repeat ratios contender/baseline (repeat i against repeat i)."""
    ratios = [c / b for c, b in zip(contender.batches_per_s, baseline.batches_per_s)]
    return min(ratios), statistics.median(ratios), max(ratios)


def cpu_ratio(contender: Measurement, baseline: Measurement) -> float | None:
    """Median CPU time per sample of ``contender`` over ``baseline``'s (None if unmeasured)."""
    if not contender.cpu_ms_per_sample or not baseline.cpu_ms_per_sample:
        return None
    return statistics.median(contender.cpu_ms_per_sample) / statistics.median(baseline.cpu_ms_per_sample)


def format_table(results: dict[str, dict[str, Measurement]], *, workers: int, batch_sizes: dict[str, int]) -> str:
    header = (f"{'scenario':<9} {'loader':<32} {'batches/s median':>16} {'min':>8} {'max':>8}   "
              f"{'vs torch min / median / max':<28} {'CPU ms/sample':>13} {'vs torch':>8}  notes")
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
            cpu = cpu_ratio(m, baseline)
            row += f" {statistics.median(m.cpu_ms_per_sample):>13.3f}" if m.cpu_ms_per_sample else f" {'-':>13}"
            row += f" {'' if m is baseline else '-' if cpu is None else f'{cpu:.2f}x':>8}  "
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


def to_json(results: dict[str, dict[str, Measurement]], *, notes: list[str], workers: int,
            batch_sizes: dict[str, int], repeats: int, environment: dict[str, Any]) -> dict[str, Any]:
    """The run as a JSON-serialisable dict: environment, settings, every repeat, ratios."""
    scenarios: dict[str, Any] = {}
    for scenario, by_loader in results.items():
        baseline = next(iter(by_loader.values()))
        loaders = {}
        for name, m in by_loader.items():
            entry: dict[str, Any] = {
                "batches_per_s": m.batches_per_s,
                "median": statistics.median(m.batches_per_s),
                "min": min(m.batches_per_s),
                "max": max(m.batches_per_s),
                "notes": m.notes,
            }
            if m.cpu_ms_per_sample:
                entry["cpu_ms_per_sample"] = m.cpu_ms_per_sample
                entry["cpu_ms_per_sample_median"] = statistics.median(m.cpu_ms_per_sample)
            if m is not baseline:
                lo, med, hi = ratio_stats(m, baseline)
                entry["vs_baseline"] = {"min": lo, "median": med, "max": hi}
                cpu = cpu_ratio(m, baseline)
                if cpu is not None:
                    entry["cpu_vs_baseline"] = cpu
            if m.stages_ms:
                entry["stages_ms_per_batch"] = m.stages_ms
                entry["stall_fraction"] = m.stall_fraction
            loaders[name] = entry
        scenarios[scenario] = {"batch_size": batch_sizes[scenario], "baseline": baseline.loader, "loaders": loaders,
                               "notes": [n for n in notes if n.startswith(f"{scenario}:")]}
    # Lines of scenarios without a throughput table (startup).
    other = [n for n in notes if not any(n.startswith(f"{scenario}:") for scenario in results)]
    return {"environment": environment, "workers": workers, "repeats": repeats, "scenarios": scenarios, "notes": other}


#: stages drawn in the breakdown, in pipeline order (the rest, if any, after them)
STAGE_ORDER = ("fetch", "read", "decode", "augment", "voxelize", "collate", "transfer", "pin", "h2d", "wait")
#: the stages measured in the main process (the others happen in the workers, in parallel)
MAIN_STAGES = ("transfer", "pin", "h2d", "wait")


def plot(report: dict[str, Any], path: str) -> None:
    """A PNG: per scenario, each loader's batches/s (median, min–max bar), and for
    fastload's loaders the time per batch by stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = report["scenarios"]
    fig, axes = plt.subplots(2, len(scenarios), figsize=(max(8.0, 4.2 * len(scenarios)), 7.5), squeeze=False)
    for column, (scenario, data) in enumerate(scenarios.items()):
        names = list(data["loaders"])
        medians = [data["loaders"][n]["median"] for n in names]
        lows = [m - data["loaders"][n]["min"] for n, m in zip(names, medians)]
        highs = [data["loaders"][n]["max"] - m for n, m in zip(names, medians)]
        top = axes[0][column]
        colors = ["#888888" if n == data["baseline"] else "#1f77b4" if n.startswith("fastload") else "#ff7f0e"
                  for n in names]
        top.bar(range(len(names)), medians, yerr=[lows, highs], capsize=4, color=colors)
        top.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=7, rotation=20)
        top.set_title(f"{scenario} (batch {data['batch_size']})", fontsize=10)
        top.set_ylabel("batches/s (median, min–max)" if column == 0 else "")
        bottom = axes[1][column]
        staged = [n for n in names if data["loaders"][n].get("stages_ms_per_batch")]
        rows = [(n, side) for n in staged for side in ("worker", "main")]
        known = [s for s in STAGE_ORDER if any(s in data["loaders"][n]["stages_ms_per_batch"] for n in staged)]
        known += sorted({s for n in staged for s in data["loaders"][n]["stages_ms_per_batch"]} - set(known))
        left = [0.0] * len(rows)

        def width(name: str, stage: str) -> float:
            # Stages the dataset reports (read, decode...) happen within fetch: fetch is drawn
            # as what is left of it.
            stages = data["loaders"][name]["stages_ms_per_batch"]
            if stage != "fetch":
                return stages.get(stage, 0.0)
            nested = sum(v for k, v in stages.items() if k not in ("fetch", "collate", *MAIN_STAGES))
            return max(0.0, stages.get("fetch", 0.0) - nested)

        for stage in known:
            side_of_stage = "main" if stage in MAIN_STAGES else "worker"
            widths = [width(n, stage) if side == side_of_stage else 0.0 for n, side in rows]
            bottom.barh(range(len(rows)), widths, left=left, label=stage)
            left = [a + b for a, b in zip(left, widths)]
        bottom.set_yticks(range(len(rows)), [f"{n}\n{side}" for n, side in rows], fontsize=7)
        bottom.set_xlabel("ms per batch by stage: in a worker, and in the main process", fontsize=7)
        if staged:
            bottom.legend(fontsize=6, loc="lower right")
    env = report["environment"]
    fig.suptitle(f"fastload.bench — {env['cpu']}, {env['cores']} cores, {report['workers']} workers; "
                 f"torch {env['torch']}, {env['pillow']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
