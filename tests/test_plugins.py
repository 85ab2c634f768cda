"""The plugin system: discovery through entry points, clear errors on name clashes and typos."""

import pytest

import hcibench
from hcibench import plugins
from hcibench.errors import UsageError


def test_builtin_plugins_are_found_through_entry_points():
    names = {info.name for info in plugins.installed_plugins()}
    assert {"supervised", "synthetic", "metrics"} <= names
    assert "supervised" in plugins.methods().names()
    assert {"accuracy", "f1"} <= set(plugins.evaluators().names())
    assert "synthetic" in plugins.datasets().names()


def test_unknown_name_lists_available_with_closest_match():
    with pytest.raises(UsageError) as error:
        plugins.methods().get("supervisd")
    message = str(error.value)
    assert "Did you mean 'supervised'" in message and "Available:" in message


class _Clash(hcibench.Method):
    name = "supervised"
    description = "a second method with a taken name"


class ClashingPlugin:
    @hcibench.hookimpl
    def register_methods(self, register):
        register(_Clash)


def test_two_plugins_registering_one_name_is_an_error_naming_both():
    plugins.manager().register(ClashingPlugin(), name="clashing-plugin")
    with pytest.raises(UsageError) as error:
        plugins.methods()
    assert "'supervised'" in str(error.value)
    assert "clashing-plugin" in str(error.value) and "plugin 'supervised'" in str(error.value)


def test_plugins_command_shows_versions_and_hooks(cli):
    result = cli("plugins")
    assert result.returncode == 0
    line = next(row for row in result.stdout.splitlines() if row.startswith("supervised"))
    assert "hcibench 0.1.0" in line and "register_methods" in line


def test_list_command_describes_each_name(cli):
    result = cli("list", "methods")
    assert result.returncode == 0
    assert "supervised" in result.stdout and "cross-entropy" in result.stdout
