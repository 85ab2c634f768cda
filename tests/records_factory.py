"""Hand-made run folders for the report, statistics, plot and HTML tests."""

from __future__ import annotations

import json
from pathlib import Path


def write_record(run: Path, method, source, target, seed, metrics, info=None):
    path = run / "records" / method / source / target / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "method": method,
        "source": source,
        "target": target,
        "seed": seed,
        "dataset": "synthetic",
        "in_domain": source == target,
        "metrics": metrics,
        "n_images": 100,
        "seconds": 1.0,
        "info": info or {},
    }
    path.write_text(json.dumps(record))
    return path


def write_manifest(run: Path, methods, domains, seeds, config=None):
    grid = {"methods": methods, "sources": domains, "targets": domains, "seeds": seeds}
    manifest = {"grid": grid, "dataset": {"name": "synthetic"}, "config": config or {}}
    (run / "manifest.json").write_text(json.dumps(manifest))


def make_grid(run: Path, values: dict, seeds=(0, 1, 2), offsets=(0.003, -0.012, 0.021), extra=None):
    """``values[(method, source, target)]`` = base accuracy; seed k adds ``offsets[k]``.

    ``extra(method, source, target, seed, accuracy)`` may return more metrics for a record.
    """
    methods = list(dict.fromkeys(m for m, _, _ in values))
    domains = list(dict.fromkeys([s for _, s, _ in values] + [t for _, _, t in values]))
    for (method, source, target), base in values.items():
        for seed in seeds:
            acc = base + offsets[seed]
            metrics = {"accuracy": acc, "f1": acc / 2}
            if extra:
                metrics.update(extra(method, source, target, seed, acc))
            write_record(run, method, source, target, seed, metrics)
    write_manifest(run, methods, domains, list(seeds))
    return run
