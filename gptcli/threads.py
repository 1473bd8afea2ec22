"""How many CPU threads a command computes with, and how its idle threads wait.

Decided before torch is imported: OpenMP reads its wait policy once, when torch loads it.
Its default, spinning at every barrier, is fastest alone, but on a shared CPU a thread
spins while the sibling it waits for sits descheduled behind another process: beside one
busy loop on 2 cores, decoding ran 4x to 5x slower and training 2.6x, and two at once
ran at a fifth of their speed alone (docs/benchmarks.md, "A shared CPU"). Waiting
passively (sleeping in the kernel) costs a wake-up per barrier instead, which alone
halved greedy decoding (tens of parallel regions a token) and cost training about 6%:
so a command waits passively when another task is running as it starts, and spins
otherwise. The thread count stays the same whatever the load, since it changes the
arithmetic's rounding and the same inputs must give the same outputs. Imports nothing
heavy; device.py keeps the other rules that depend on the CPU."""

from __future__ import annotations

import os
import sys
import time

from gptcli.errors import UsageError


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which taskset, cgroups'
    cpusets and containers narrow), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def others_running(samples: int = 5, interval: float = 0.002) -> int:
    """How many other tasks are running or waiting for a CPU right now: the fewest of a
    few readings of /proc/stat's procs_running, less this process (0 where unreadable)."""
    seen = []
    for i in range(samples):
        try:
            with open("/proc/stat", encoding="ascii") as f:
                seen.append(next(int(line.split()[1]) for line in f if line.startswith("procs_running")))
        except (OSError, StopIteration, ValueError, IndexError):
            return 0
        if i + 1 < samples:
            time.sleep(interval)
    return max(min(seen) - 1, 0)


def check(threads: int) -> int:
    """--threads N: between 1 and the CPUs this process may use."""
    cpus = usable_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cpus:
        raise UsageError(f"--threads must be between 1 and {cpus} (the CPUs this process may use), got {threads!r}")
    return threads


def use(threads: int | None) -> int:
    """Set up this process's threads, before torch is imported where possible: the count
    (--threads; else torch's own, one per physical core, but never more than the usable
    CPUs), and, when another task is running at the start, a passive wait, unless
    OMP_WAIT_POLICY is already set (the user's choice wins). Returns the count."""
    tokenizer_threads(threads)  # checks the count; train may train a tokenizer first
    if "torch" not in sys.modules and "OMP_WAIT_POLICY" not in os.environ and others_running() > 0:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    import torch

    count = min(torch.get_num_threads(), usable_cpus()) if threads is None else threads
    torch.set_num_threads(count)
    return count


def tokenizer_threads(threads: int | None) -> None:
    """--threads for the tokenizers library's thread pool (read when it starts)."""
    if threads is not None:
        os.environ["RAYON_NUM_THREADS"] = str(check(threads))
