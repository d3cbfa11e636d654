"""Machine description printed by every benchmark, and the interleaved timing loop they share."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def interleaved_times(calls: dict, x, rounds: int, settle_s: float = 0.2, warm: int = 1) -> dict[str, list[float]]:
    """Time each ``calls[name](x)`` once per round, rounds alternating forward and reversed order
    (so no engine always runs right after the same one), with a ``settle_s`` sleep before each
    call; ``warm`` untimed calls each first. -> {name: [seconds per round]}."""
    for fn in calls.values():
        for _ in range(warm):
            fn(x)
    times: dict[str, list[float]] = {n: [] for n in calls}
    for r in range(rounds):
        for n in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
            time.sleep(settle_s)
            t0 = time.perf_counter()
            calls[n](x)
            times[n].append(time.perf_counter() - t0)
    return times


def paired_ratio(times: list[float], base: list[float]) -> float:
    """Median over rounds of time / the same round's base time."""
    return statistics.median(t / b for t, b in zip(times, base, strict=True))
