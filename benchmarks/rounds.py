"""Timing that holds on a busy machine: the compared variants alternate in rounds in one process,
and every ratio is taken within a round, then summarised over rounds by its median with a
distribution-free interval.

Why: on a shared machine the load changes over seconds. Timing variant A for a minute and then B
for a minute compares A on a quiet machine with B on a busy one (main's own code once measured
`cheap` faster than `none` that way). Here each round runs every variant once, back to back (the
order reversed every other round, so neither always runs first), and the figure of a round is the
ratio of its two times: a slow spell of the machine slows both sides of one ratio. The median of
the per-round ratios, with its order-statistic confidence interval (the interval between two
order statistics whose ranks come from the Binomial(n, 1/2) distribution; no assumption about the
distribution of the ratios), is what the benchmarks print.

Two clocks per block: wall time (``time.perf_counter``) and this process's CPU time
(``time.process_time``: user + system of all its threads). With one torch thread
(``OMP_NUM_THREADS=1``) CPU time counts the work done, not the time waited for a core, so it is
far less disturbed by other jobs; wall time is what a user waits for. Both are reported, with the
load average at each round (``os.getloadavg``) and the share of the wall time the process was on a
core (CPU / wall; 1.0 = it never waited).

Rounds needed for a resolution: the half-width of the median's interval shrinks like 1/sqrt(n).
With s the robust spread of the per-round log ratios (1.4826 x their median absolute deviation),
the median's standard error is about sqrt(pi/2) s / sqrt(n), so a 95% interval of half-width
log(1 + d) needs n ~ (1.96 sqrt(pi/2) s / log(1 + d))^2 rounds (``rounds_for``).
"""
from __future__ import annotations

import math
import os
import statistics
import time
from typing import Callable

from scipy.stats import binom


def median_ci(values, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(median, low, high, coverage): the sample median and the order-statistic interval
    [x_(j), x_(n+1-j)] (1-based, sorted) with the largest j whose exact coverage
    1 - 2 P(Binomial(n, 1/2) <= j - 1) is at least ``confidence``. With too few values for that
    coverage (n < 6 at 95%) the interval is [min, max] and ``coverage`` says what it is (n = 5: 0.9375)."""
    xs = sorted(float(v) for v in values)
    n = len(xs)
    if n == 0:
        raise ValueError("no values")
    med = statistics.median(xs)
    j, cover = 1, 1.0 - 2.0 * 0.5 ** n  # [min, max]
    for k in range(1, n // 2 + 1):
        c = 1.0 - 2.0 * float(binom.cdf(k - 1, n, 0.5))
        if c >= confidence:
            j, cover = k, c
        else:
            break
    if n == 1:
        cover = 0.0
    return med, xs[j - 1], xs[n - j], cover


def robust_spread(log_ratios) -> float:
    """1.4826 x the median absolute deviation (the standard deviation for normal data)."""
    xs = list(log_ratios)
    if len(xs) < 2:
        return float("nan")
    m = statistics.median(xs)
    return 1.4826 * statistics.median(abs(x - m) for x in xs)


def rounds_for(ratios, difference: float = 0.02, confidence: float = 0.95) -> int | None:
    """Rounds whose median interval would be about +-``difference`` (relative) wide, from the spread
    of these per-round ratios (None when it cannot be estimated)."""
    logs = [math.log(r) for r in ratios if r > 0]
    s = robust_spread(logs)
    if not s == s:  # nan
        return None
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    if s == 0:
        return len(logs)
    return max(1, math.ceil((z * math.sqrt(math.pi / 2) * s / math.log(1 + difference)) ** 2))


def run_rounds(variants: dict[str, Callable[[], object]], rounds: int, sync: Callable[[], None] = lambda: None,
               on_round: Callable[[int], None] | None = None) -> dict:
    """Run every variant once per round, in the given order on even rounds and reversed on odd ones.
    Each callable runs one block of work (the same amount every call). Returns
    {"wall": {name: [s per round]}, "cpu": {...}, "load": [1-min load average per round]}."""
    names = list(variants)
    out = {"wall": {n: [] for n in names}, "cpu": {n: [] for n in names}, "load": []}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            sync()
            w, c = time.perf_counter(), time.process_time()
            variants[name]()
            sync()
            out["cpu"][name].append(time.process_time() - c)
            out["wall"][name].append(time.perf_counter() - w)
        out["load"].append(os.getloadavg()[0])
        if on_round is not None:
            on_round(r)
    return out


def ratio_summary(numerator: list[float], denominator: list[float], confidence: float = 0.95,
                  difference: float = 0.02) -> dict:
    """Per-round ratios numerator[i] / denominator[i], their median with its interval, and the rounds a
    +-``difference`` interval would need."""
    ratios = [a / b for a, b in zip(numerator, denominator) if b > 0]
    med, lo, hi, cover = median_ci(ratios, confidence)
    return {"median": med, "low": lo, "high": hi, "coverage": cover, "rounds": len(ratios),
            "difference": difference, "rounds_needed": rounds_for(ratios, difference, confidence), "ratios": ratios}


def load_summary(timings: dict, name: str | None = None) -> dict:
    """Load average over the rounds (min, median, max) and the process's share of the wall time on a core."""
    load = timings["load"]
    names = [name] if name else list(timings["wall"])
    cpu = sum(sum(timings["cpu"][n]) for n in names)
    wall = sum(sum(timings["wall"][n]) for n in names)
    return {"load_min": min(load), "load_median": statistics.median(load), "load_max": max(load),
            "cpu_share": cpu / wall if wall > 0 else float("nan"), "cores": os.cpu_count()}


def fmt_ratio(s: dict) -> str:
    return f"{s['median']:.3f} [{s['low']:.3f}, {s['high']:.3f}]"


def fmt_load(s: dict) -> str:
    return (f"load {s['load_min']:.1f}-{s['load_max']:.1f} (median {s['load_median']:.1f}) on {s['cores']} cores, "
            f"process on a core {100 * s['cpu_share']:.0f}% of the wall time")
