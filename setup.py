"""Package discovery: every package under hcibench/, and every package under plugins/ under the
import name hcibench_plugins (the folder's name is the project's, the import name the plugins').
Everything else is declared in pyproject.toml."""

from setuptools import find_packages, setup

PLUGINS = "hcibench_plugins"
plugin_packages = [
    PLUGINS + name[len("plugins") :] for name in find_packages(include=["plugins", "plugins.*"])
]

setup(
    packages=find_packages(include=["hcibench", "hcibench.*"]) + plugin_packages,
    package_dir={PLUGINS: "plugins"},
)
