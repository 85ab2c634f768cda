"""Sweeps: ``--set section.key=a,b,c`` runs one variant of the grid per value.

Each variant is an ordinary run folder, ``OUT/<section.key>=<value>`` (one folder per
combination when several settings are swept), and all of them share one stage folder (``--cache``,
by default ``OUT/cache``), so that stages whose settings do not change between variants (steps 1
and 2 in a sweep over ``adapt.*``) are computed once. ``OUT/sweep.json`` lists the variants;
``hcibench report OUT`` reports them side by side, each method named with its variant.

A value is swept when it is not valid JSON and holds commas: ``adapt.lr=1e-5,1e-4`` sweeps,
``backbone.img_size=[32,32]`` (a JSON list) does not.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING

from hcibench.errors import UsageError

if TYPE_CHECKING:  # reports read sweeps without importing torch
    from hcibench.run.runner import RunSpec

SWEEP_FILE = "sweep.json"


def _swept_values(item: str) -> tuple[str, list[str]] | None:
    """(setting, values) for a ``--set`` that sweeps, None for an ordinary one."""
    if "=" not in item:
        return None
    path, raw = item.split("=", 1)
    if "," not in raw:
        return None
    try:
        json.loads(raw)
        return None
    except json.JSONDecodeError:
        pass
    values = [value.strip() for value in raw.split(",")]
    if any(not value for value in values):
        raise UsageError(
            f"bad --set '{item}': a sweep lists values separated by commas, e.g. adapt.lr=1e-5,1e-4,5e-4"
        )
    if len(set(values)) != len(values):
        raise UsageError(f"bad --set '{item}': a value is listed twice")
    return path.strip(), values


def sweep_variants(spec: RunSpec) -> list[RunSpec] | None:
    """One RunSpec per combination of swept values, or None when nothing is swept."""
    fixed, swept = [], []
    for item in spec.overrides:
        values = _swept_values(item)
        if values is None:
            fixed.append(item)
        else:
            swept.append(values)
    if not swept:
        return None
    cache = spec.cache or Path(spec.out) / "cache"
    variants = []
    for combination in itertools.product(*[values for _, values in swept]):
        settings = [f"{path}={value}" for (path, _), value in zip(swept, combination)]
        label = " ".join(settings)
        folder = Path(spec.out) / label.replace(" ", ",").replace("/", "_")
        variants.append(dataclasses.replace(spec, out=folder, overrides=[*fixed, *settings], cache=cache))
    return variants


def variant_label(variant: RunSpec, sweep_out: Path) -> str:
    return Path(variant.out).relative_to(sweep_out).as_posix()


def write_sweep(spec: RunSpec, variants: list[RunSpec]) -> None:
    """``OUT/sweep.json``: the variants' folders (relative), in order. A later sweep into the
    same folder adds its variants to the list."""
    from hcibench.run import storage

    out = Path(spec.out)
    path = out / SWEEP_FILE
    known = read_sweep(out) if path.exists() else []
    names = list(dict.fromkeys([*known, *(variant_label(v, out) for v in variants)]))
    storage.write_json(path, {"variants": names})


def read_sweep(folder: Path) -> list[str]:
    """The variant folders (relative to ``folder``) of a sweep, [] when it is none."""
    path = Path(folder) / SWEEP_FILE
    if not path.is_file():
        return []
    try:
        variants = json.loads(path.read_text())["variants"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(f"cannot read {path}: {error}; remove it and run the sweep again") from None
    return [str(v) for v in variants]
