"""Cross-batch partner drawing (the pairs of Dual-CB and CODA) as the target grows: a table ten
times larger should take about ten times longer, not a hundred (no per-row scan of the table).

Run: ``pytest benchmarks/bench_pairs.py --benchmark-only -s``. Prints the median time at 10k and
100k rows and their ratio, and stores them in ``benchmark.extra_info``; on a shared machine the
times move, so the check is on the ratio of one run.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from hcibench.train.pairs import cross_batch_partners

ROWS = (10_000, 100_000)
# Ten times the rows within this factor of the time: linear growth with room for noise and
# cache effects, far below the hundred of a quadratic scan.
MAX_RATIO = 25.0


def metadata(n: int, seed: int = 0) -> pd.DataFrame:
    """A target of ``n`` images: 300 compounds over 5 batches of 8 plates each."""
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, 5, n)
    return pd.DataFrame(
        {
            "compound": [f"c{i}" for i in rng.integers(0, 300, n)],
            "batch": [f"b{b}" for b in batch],
            "plate": [f"b{b}p{p}" for b, p in zip(batch, rng.integers(0, 8, n))],
        }
    )


def median_seconds(meta: pd.DataFrame, rounds: int = 5) -> float:
    times = []
    for round_ in range(rounds):
        started = time.perf_counter()
        cross_batch_partners(meta, generator=round_)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def test_partner_time_grows_linearly_with_the_rows(benchmark):
    small, large = (metadata(n) for n in ROWS)
    median_seconds(small, rounds=1)  # warm up pandas and numpy
    benchmark.pedantic(cross_batch_partners, args=(large,), kwargs={"generator": 0}, rounds=5)
    seconds = [median_seconds(small), benchmark.stats.stats.median]
    ratio = seconds[1] / seconds[0]
    benchmark.extra_info.update({"seconds_10k": seconds[0], "seconds_100k": seconds[1], "ratio": ratio})
    small_ms, large_ms = (s * 1e3 for s in seconds)
    print(f"\npartners: {small_ms:.1f} ms at 10k rows, {large_ms:.1f} ms at 100k; ratio {ratio:.1f}")
    assert ratio < MAX_RATIO, f"10x the rows took {ratio:.1f}x the time (quadratic growth?)"
