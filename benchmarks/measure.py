"""Measurement helpers shared by the benchmark suites."""

from __future__ import annotations

import resource
import sys


def peak_memory(fn) -> tuple[float, str]:
    """(MiB, method): the peak of the tensor memory ``fn()`` allocates above what it started with.

    Read from the allocation and free events of ``torch.profiler`` (``profile_memory=True``): the
    running sum of their sizes, in time order, peaks at the working memory (activations kept for
    the backward pass, gradients, temporaries). RSS-based figures do not work here: the C
    allocator keeps freed pages after the first steps, so the resident size of a warm process
    hardly moves. Falls back to the ``getrusage`` maxrss delta (a lower bound).
    """
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        live = peak = 0
        for event in events:
            live += event.nbytes()
            peak = max(peak, live)
        return peak / 2**20, "torch.profiler allocation events (tensor memory)"
    except (AttributeError, RuntimeError):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return (after - before) * _rss_unit() / 2**20, "getrusage maxrss delta (lower bound)"


def _rss_unit() -> int:
    return 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _rss_unit() / 2**20
