"""The layout shows the architecture, and the imports keep to it: the core never imports the
shipped plugins nor names a shipped method; packages import only from the layers below them;
no two modules import each other, even through others."""

import ast
from pathlib import Path

import hcibench
from hcibench import plugins

CORE = Path(hcibench.__file__).parent

# Lowest first. A module may import modules of its own layer and of the layers below.
LAYERS = [
    (
        "contracts",
        [
            "hcibench.errors",
            "hcibench.compat",
            "hcibench.data",
            "hcibench.evaluator",
            "hcibench.hookspecs",
            "hcibench.plugins",
        ],
    ),
    ("run", ["hcibench.run"]),
    ("method contract", ["hcibench.method", "hcibench"]),
    ("train", ["hcibench.train"]),
    ("analysis", ["hcibench.analysis"]),
    ("report", ["hcibench.report"]),
    ("paper", ["hcibench.paper"]),
    ("command line", ["hcibench.cli"]),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in CORE.rglob("*.py"):
        parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """Every hcibench or hcibench_plugins module ``name`` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                out.add(candidate if candidate in modules else base)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m.split(".")[0] in ("hcibench", "hcibench_plugins") and m != name}


def _layer(name: str) -> int:
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank is not None, f"{name} is in no layer: add it to LAYERS"
    return rank


GRAPH = {name: _imports(name, path, _modules()) for name, path in _modules().items()}


def test_the_core_imports_no_plugin():
    wrong = {
        name: sorted(d for d in deps if d.startswith("hcibench_plugins")) for name, deps in GRAPH.items()
    }
    assert not {k: v for k, v in wrong.items() if v}


def test_the_top_level_holds_at_most_a_dozen_modules():
    assert len(list(CORE.glob("*.py"))) <= 12


def test_packages_import_only_downward():
    upward = [
        f"{name} ({LAYERS[_layer(name)][0]}) imports {dep} ({LAYERS[_layer(dep)][0]})"
        for name, deps in GRAPH.items()
        for dep in deps
        if _layer(dep) > _layer(name)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    state: dict[str, int] = {}

    def visit(name, trail):
        if state.get(name) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*trail, name]))
        if state.get(name) == 2:
            return
        state[name] = 1
        for dep in GRAPH.get(name, ()):
            if dep != "hcibench":  # every module's package: importing it runs no module twice
                visit(dep, [*trail, name])
        state[name] = 2

    for name in GRAPH:
        visit(name, [])


def test_no_core_module_names_a_shipped_method():
    shipped = [
        name
        for name, owner in plugins.methods().owners.items()
        if plugins.manager().get_plugin(owner).__name__.startswith("hcibench_plugins")
    ]
    assert {"supervised", "coda"} <= set(shipped)
    named = [
        f"{path.relative_to(CORE.parent)} names {method}"
        for path in CORE.rglob("*.py")
        for method in shipped
        if f'"{method}"' in path.read_text() or f"'{method}'" in path.read_text()
    ]
    assert not named, "\n".join(named)
