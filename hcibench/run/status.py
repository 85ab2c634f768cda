"""``hcibench status OUT``: how far a run folder is, from its manifest and records alone, so it
can be asked while workers (Dask, SLURM jobs, other commands) are still writing into it."""

from __future__ import annotations

import json
from pathlib import Path

from hcibench.errors import UsageError
from hcibench.run import storage
from hcibench.run.doctor import record_is_valid
from hcibench.run.runner import record_path
from hcibench.run.stage_store import StageStore


def folder_status(out: Path) -> dict:
    """Cells finished and pending per method, and the claims held (who computes what now)."""
    try:
        manifest = storage.read_json(out / "manifest.json")
    except FileNotFoundError:
        raise UsageError(
            f"{out} is not a run folder (no manifest.json); start one with hcibench run --out {out}"
        ) from None
    except ValueError:
        raise UsageError(
            f"{out}/manifest.json does not parse; `hcibench run` with the same options rewrites it"
        ) from None
    grid = manifest["grid"]
    methods = {}
    for method in grid["methods"]:
        cells = [(s, t, seed) for seed in grid["seeds"] for s in grid["sources"] for t in grid["targets"]]
        done = sum(record_is_valid(record_path(out, method, *cell)) for cell in cells)
        methods[method] = {"done": done, "total": len(cells)}
    claims = []
    for folder in (out, Path(manifest.get("stage_folder") or out / "stages")):
        store = StageStore(folder)
        for path in sorted(folder.glob(".*.claim")):
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            # A killed process leaves its claim behind; the next process to ask takes it over.
            claims.append(
                {"claim": path.name[1 : -len(".claim")], **holder, "gone": store.claim_is_stale(path)}
            )
    return {"methods": methods, "claims": claims}


def render_status(out: Path) -> str:
    status = folder_status(out)
    lines = [f"{out}:"]
    done = sum(m["done"] for m in status["methods"].values())
    total = sum(m["total"] for m in status["methods"].values())
    for method, counts in status["methods"].items():
        lines.append(f"  {method:<14} {counts['done']:>5} of {counts['total']} cells")
    lines.append(f"  {'all':<14} {done:>5} of {total} cells")
    for claim in status["claims"]:
        if claim["claim"] in ("run", "stage-counts"):
            continue
        holder = f"pid {claim.get('pid', '?')} on {claim.get('host', '?')} since {claim.get('started', '?')}"
        if claim["gone"]:
            lines.append(
                f"  not computing {claim['claim']}: its process is gone ({holder}); a run takes it over"
            )
        else:
            lines.append(f"  computing {claim['claim']} ({holder})")
    return "\n".join(lines)
