"""Timing contenders interleaved, run by run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .cpu_time import tree_cpu_seconds
from .scenarios import Contender


@dataclass
class Measurement:
    scenario: str
    loader: str
    notes: dict[str, str] = field(default_factory=dict)
    batches_per_s: list[float] = field(default_factory=list)
    #: CPU milliseconds per sample of each timed run: the main process and its workers
    #: (cpu_time.py); empty where the CPU time cannot be read
    cpu_ms_per_sample: list[float] = field(default_factory=list)
    #: fastload loaders with telemetry: mean ms per batch of each stage, and the data-stall
    #: fraction, over the last timed run
    stages_ms: dict[str, float] = field(default_factory=dict)
    stall_fraction: float | None = None


def run_scenario(
    contenders: dict[str, Contender],
    *,
    scenario: str,
    batches: int | None,
    repeats: int,
    progress: Callable[[int], None],
    samples: Callable[[int], int],
) -> dict[str, Measurement]:
    """``progress(1)`` is called after each repeat. Time ``repeats`` runs of ``batches`` batches per contender, rotating the order each
    repeat, after one warm-up run each (contenders use persistent workers, so worker
    start-up is excluded; each run includes its epoch's ramp-up). ``samples(n)``: how many
    samples ``n`` batches of a run hold, for the CPU time per sample."""
    results = {name: Measurement(scenario, name, c.notes) for name, c in contenders.items()}
    for contender in contenders.values():
        contender.run(batches)
    names = list(contenders)
    for repeat in range(repeats):
        # Rotate who goes first, so that no contender always runs on a warmer machine.
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            cpu_before = tree_cpu_seconds()
            count, seconds = contenders[name].run(batches)
            cpu_after = tree_cpu_seconds()
            results[name].batches_per_s.append(count / seconds)
            if cpu_before is not None and cpu_after is not None and count:
                results[name].cpu_ms_per_sample.append((cpu_after - cpu_before) * 1e3 / samples(count))
        progress(1)
    for name, contender in contenders.items():
        if getattr(contender.loader, "telemetry", False) is True:
            stats = contender.loader.stats()
            results[name].stages_ms = {stage: s.mean_ms for stage, s in stats.stages.items()}
            results[name].stall_fraction = stats.stall_fraction
    return results
