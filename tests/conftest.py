import subprocess
import sys
from pathlib import Path

import pytest

from hcibench import plugins

# Settings that make a grid cell take seconds: a one-block ViT, two epochs, few images.
# Tiny backbones start from random weights (the quick preset's pretrained file fits its own only).
TINY_BACKBONE = [
    "backbone.depth=1",
    "backbone.embed_dim=32",
    "backbone.num_heads=2",
    "backbone.pretrained=null",
]
TINY = [*TINY_BACKBONE, "dataset.scale=0.34"]


def tiny_args(*overrides: str, supervised: bool = True) -> list[str]:
    """``--set`` options for a tiny run; ``supervised`` adds the supervised method's section,
    which only exists when that method is in the grid."""
    items = [*TINY, *(["supervised.epochs=2"] if supervised else []), *overrides]
    return [part for item in items for part in ("--set", item)]


@pytest.fixture(autouse=True)
def fresh_plugins():
    """Each test discovers plugins anew (some install or register their own)."""
    plugins.reset()
    yield
    plugins.reset()


def run_cli(*args: str, env=None, cwd=None) -> subprocess.CompletedProcess:
    """``hcibench ARGS`` in a subprocess, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "hcibench.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


@pytest.fixture
def cli():
    return run_cli


def run_in_process(capsys, *args: str) -> tuple[int, str, str]:
    """``hcibench ARGS`` in this process (no interpreter or torch start-up): (exit status,
    stdout, stderr)."""
    from hcibench.cli import main

    try:
        main(list(args))
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


REPO = Path(__file__).resolve().parents[1]
