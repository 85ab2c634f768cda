"""Discover plugins through the ``hcibench`` entry-point group and collect what they register.

Built-in plugins (``plugins/`` in the source tree) are declared in hcibench's own
``pyproject.toml`` and found exactly like a third party's: the core never imports them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

from hcibench import hookspecs
from hcibench.errors import UsageError, unknown_name

GROUP = "hcibench"


@dataclass
class Registry:
    """Names of one kind (methods, datasets or evaluators) mapped to the class registered for them."""

    kind: str
    items: dict[str, type] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)

    def add(self, cls: type, owner: str) -> None:
        name = getattr(cls, "name", None)
        if not name:
            raise UsageError(f"plugin '{owner}' registered a {self.kind} without a 'name' attribute")
        if name in self.items:
            raise UsageError(
                f"{self.kind} '{name}' is registered twice: by plugin '{self.owners[name]}' and "
                f"by plugin '{owner}'. Uninstall one of them."
            )
        self.items[name] = cls
        self.owners[name] = owner

    def get(self, name: str) -> type:
        if name not in self.items:
            raise unknown_name(self.kind, name, list(self.items))
        return self.items[name]

    def names(self) -> list[str]:
        return sorted(self.items)


# Plugins whose entry point failed to import: name -> error. A broken third-party plugin must not
# take the whole tool down; ``hcibench plugins`` shows it with its error instead.
FAILED: dict[str, str] = {}


def _plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    FAILED.clear()
    for ep in entry_points(group=GROUP):
        if pm.has_plugin(ep.name):
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as error:  # noqa: BLE001 - any import error of a third party's code
            FAILED[ep.name] = f"{type(error).__name__}: {error}"
    return pm


@functools.lru_cache(maxsize=1)
def manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with every installed plugin loaded."""
    return _plugin_manager()


def _collect(hook_name: str, kind: str) -> Registry:
    registry = Registry(kind)
    pm = manager()
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        impl.function(functools.partial(_register, registry, impl.plugin_name))
    return registry


def _register(registry: Registry, owner: str, cls: type) -> None:
    registry.add(cls, owner)


@functools.lru_cache(maxsize=1)
def methods() -> Registry:
    return _collect("register_methods", "method")


@functools.lru_cache(maxsize=1)
def datasets() -> Registry:
    return _collect("register_datasets", "dataset")


@functools.lru_cache(maxsize=1)
def evaluators() -> Registry:
    return _collect("register_evaluators", "evaluator")


def registry(kind: str) -> Registry:
    """The registry for ``methods``, ``datasets`` or ``evaluators``."""
    return {"methods": methods, "datasets": datasets, "evaluators": evaluators}[kind]()


@dataclass
class PluginInfo:
    name: str
    version: str
    hooks: list[str]


def installed_plugins() -> list[PluginInfo]:
    """Every loaded plugin with the distribution version that provides it and its hooks."""
    pm = manager()
    versions = {}
    for ep in entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        versions[ep.name] = f"{dist.name} {dist.version}" if dist else "unknown"
    infos = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        infos.append(PluginInfo(name, versions.get(name, "unknown"), hooks))
    for name, error in FAILED.items():
        infos.append(PluginInfo(name, versions.get(name, "unknown"), [f"FAILED TO LOAD ({error})"]))
    return sorted(infos, key=lambda info: info.name)


def reset() -> None:
    """Forget loaded plugins (tests install packages at run time and need a fresh discovery)."""
    for cached in (manager, methods, datasets, evaluators):
        cached.cache_clear()
