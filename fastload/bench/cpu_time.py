"""CPU time of a loader: this process and every process under it, workers included.

A loader's cost is not only its wall time: workers that burn more CPU per sample leave
less of the machine to everything else (the training step's own data work, other jobs).
The bench samples the CPU time of the whole process tree around each timed run: the main
process (all its threads: pinning, DALI's), its live descendants (worker processes, a
remote contender and its workers) and the children they reaped (``cutime``/``cstime``).
Each contender runs alone, so the idle workers of the others add next to nothing.
Linux only (``/proc``); elsewhere :func:`tree_cpu_seconds` returns None.
"""

from __future__ import annotations

import os
import resource

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command: state, ppid, ... utime (14th field of the line), stime, cutime, cstime.
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return ppid, (utime + stime + cutime + cstime) / _TICKS


def tree_cpu_seconds() -> float | None:
    """CPU seconds (user + system) used so far by this process and all its descendants."""
    if not os.path.isdir("/proc/self"):
        return None
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                stats[int(name)] = stat
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    # This process from getrusage (microseconds; /proc counts in ticks of 10 ms, too coarse
    # for a short run), its descendants from /proc.
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    todo = list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
        todo += children.get(pid, [])
    return total
