"""``hcibench settings``: the resolved configuration of a run, each value with where it came
from (preset, a method's section, the dataset, --set) and what it may be."""

from __future__ import annotations

from typing import Any

from hcibench import plugins
from hcibench.run.runner import RunSpec, resolve_config
from hcibench.run.settings_check import describe


def _flat(config: dict, prefix: str = "") -> dict[str, Any]:
    items = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            items.update(_flat(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def resolved_settings(spec: RunSpec) -> list[dict]:
    """One row per setting: path, value, origin (the last layer that set or changed it) and
    what is allowed."""
    method_classes = {name: plugins.methods().get(name) for name in spec.grid.methods}
    dataset_class = plugins.datasets().get(spec.dataset)
    layers = [
        (origin, _flat(config)) for origin, config in resolve_config(spec, method_classes, dataset_class)
    ]
    defaults = layers[-2][1]
    rows = []
    for path, value in layers[-1][1].items():
        origin = layers[0][0]
        for (name, flat), (_, before) in zip(layers[1:], layers[:-1]):
            if path in flat and (path not in before or flat[path] != before[path]):
                origin = name
        rows.append(
            {"setting": path, "value": value, "origin": origin, "allowed": describe(path, defaults.get(path))}
        )
    return rows
