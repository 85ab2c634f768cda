"""``hcibench doctor OUT``: what in a run folder is damaged, stale or left over, and ``--fix``.

Checked: the manifest and stage index parse; every record parses and has its cell's keys; every
stage file loads; temporary files of atomic writes (``.<name>.<pid>.<random>.tmp``) whose writer
is gone; claims whose holder is gone. ``--fix`` removes leftovers and damaged files, which the
same ``hcibench run`` command then recomputes. Nothing is removed while its writer is alive.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from hcibench.errors import UsageError
from hcibench.run import storage
from hcibench.run.stage_store import StageStore, process_alive

RECORD_KEYS = ("method", "source", "target", "seed", "metrics")
TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[^.]+" + re.escape(storage.TEMP_SUFFIX) + "$")


@dataclass
class Finding:
    path: Path
    problem: str
    removable: bool  # --fix removes it (the run recomputes what it held)


def record_is_valid(path: Path) -> bool:
    """A record that parses as JSON and names its cell and metrics (a truncated write does not)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and all(key in record for key in RECORD_KEYS)
        and isinstance(record["metrics"], dict)
    )


def _temp_files(out: Path) -> list[Finding]:
    findings = []
    for path in out.rglob(f"*{storage.TEMP_SUFFIX}"):
        match = TEMP_NAME.match(path.name)
        alive = bool(match) and process_alive(int(match.group(1)))
        if not alive:
            findings.append(Finding(path, "temporary file of an interrupted write", True))
    for path in out.glob(".write-test-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and process_alive(int(pid))):
            findings.append(Finding(path, "write probe of an interrupted command", True))
    return findings


def _json_index(path: Path, what: str) -> list[Finding]:
    if not path.exists():
        return []
    try:
        json.loads(path.read_text())
        return []
    except (OSError, ValueError):
        return [
            Finding(
                path, f"{what} does not parse; `hcibench run` with the run's options writes it again", True
            )
        ]


def examine(out: Path, load_stages: bool = True) -> list[Finding]:
    """Every problem found in run folder ``out``."""
    out = Path(out)
    if not out.is_dir():
        raise UsageError(f"run folder {out} does not exist")
    findings = _temp_files(out)
    findings += _json_index(out / "manifest.json", "the manifest")
    findings += _json_index(out / "stages.json", "the stage index")
    for path in sorted((out / "records").rglob("*.json")) if (out / "records").is_dir() else []:
        if not path.name.startswith(".") and not record_is_valid(path):
            findings.append(Finding(path, "record is damaged; the run recomputes its cell", True))
    for folder in (out, out / "stages"):
        store = StageStore(folder)
        for claim in folder.glob(".*.claim") if folder.is_dir() else []:
            if store.claim_is_stale(claim):
                findings.append(Finding(claim, "claim of a process that is gone", True))
    stages = out / "stages"
    if stages.is_dir():
        if load_stages:
            for path in sorted(stages.glob("*.pt")):
                try:
                    storage.load_torch(path)
                except Exception:  # any unreadable file is damaged
                    findings.append(Finding(path, "stage file cannot be loaded; the run recomputes it", True))
    return findings


def fix(findings: list[Finding]) -> int:
    """Remove what can be removed; returns how many files were removed."""
    removed = 0
    for finding in findings:
        if finding.removable and finding.path.exists():
            finding.path.unlink()
            removed += 1
    return removed
