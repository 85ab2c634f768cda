"""A grid's work as a graph of jobs: every stage its methods declare (``Method.stages``), each
after the stages it builds on, and one ``cells`` job per (method, source, seed) that predicts and
writes the group's records once its stages exist. A method that declares no stages is one
``cells`` job that computes everything itself.

Stage ids are the stage files' names (``<name>-<hash of its key>``), so a job is the same
whoever plans it, and a stage two methods share (step 1 of Dual-model-DINO and ODA) is one job.
``hcibench plan`` prints the graph; ``hcibench stage run OUT ID`` computes one job in the calling
process; the executors send the jobs to workers in dependency order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hcibench.errors import UsageError
from hcibench.run import accelerator, distributed, storage
from hcibench.run.progress import Progress
from hcibench.run.runner import (
    DomainCache,
    Grid,
    Run,
    RunSpec,
    execute_group,
    group_context,
    pending_cells,
    prepare,
)
from hcibench.run.stages import StageCache, StageSpec


@dataclass
class Job:
    """One node of the plan: a stage, or the ``cells`` of one (method, source, seed)."""

    id: str
    kind: str  # "stage" or "cells"
    name: str  # the stage's name, or the method's
    group: tuple[str, str, int]  # (method, source, seed) of the first group that declared it
    needs: list[str] = field(default_factory=list)
    used_by: list[str] = field(default_factory=list)  # methods whose cells need it
    gpus: int = 0
    hours: float = 1.0


@dataclass
class Plan:
    jobs: dict[str, Job]  # in an order where every job comes after those it needs

    def stages(self) -> list[Job]:
        return [job for job in self.jobs.values() if job.kind == "stage"]


def cells_id(method: str, source: str, seed: int) -> str:
    return f"cells-{method}-{source}-seed{seed}"


def _resources(run: Run) -> tuple[int, float]:
    resources = run.config.get("resources") or {}
    gpus = resources.get("gpus")
    if gpus is None:  # a GPU where the run would compute on one
        wants = run.config.get("device", "auto")
        gpus = (
            1
            if (
                str(wants).startswith("cuda")
                or (wants == "auto" and accelerator.resolve_device("auto").type == "cuda")
            )
            else 0
        )
    return int(gpus), float(resources.get("hours") or 1.0)


def build_plan(
    run: Run, stages: StageCache | None = None, pending_only: bool = False, domains: DomainCache | None = None
) -> Plan:
    """The jobs of ``run``'s grid (with ``pending_only``, of the groups with cells left)."""
    stages = stages or StageCache()
    domains = domains or DomainCache(run)
    gpus, hours = _resources(run)
    jobs: dict[str, Job] = {}
    groups = (
        [g[:3] for g in pending_cells(run)]
        if pending_only
        else [(m, s, seed) for seed in run.grid.seeds for s in run.grid.sources for m in run.grid.methods]
    )
    for method_name, source, seed in groups:
        specs = stage_specs(run, (method_name, source, seed), stages, domains=domains)
        ids = {id(spec): stage_id for stage_id, spec in specs.items()}
        for stage_id, spec in specs.items():
            job = jobs.setdefault(
                stage_id,
                Job(
                    stage_id,
                    "stage",
                    spec.name,
                    (method_name, source, seed),
                    needs=[ids[id(need)] for need in spec.needs],
                    gpus=gpus,
                    hours=hours,
                ),
            )
            if method_name not in job.used_by:
                job.used_by.append(method_name)
        cells = cells_id(method_name, source, seed)
        jobs[cells] = Job(
            cells,
            "cells",
            method_name,
            (method_name, source, seed),
            needs=list(dict.fromkeys(ids.values())),
            used_by=[method_name],
            gpus=gpus,
            hours=hours,
        )
    return Plan(jobs)


def stage_specs(
    run: Run,
    group: tuple[str, str, int],
    stages: StageCache,
    progress: Progress | None = None,
    domains: DomainCache | None = None,
) -> dict[str, StageSpec]:
    """The stage specs of one group by id, with contexts that compute into ``stages``."""
    method_name, source, seed = group
    context = group_context(run, source, seed, stages, progress)
    method = run.method_classes[method_name](context)
    domains = domains or DomainCache(run)
    split = domains.split(source)
    targets = [domains.target(source, t) for t in run.grid.targets]
    specs = method.stages(split.train, split.val, targets) or []
    return {context.stage_id(spec.name, spec.settings): spec for spec in specs}


def run_job(
    run: Run, job: Job, progress: Progress | None = None, domains: DomainCache | None = None
) -> tuple[str, int]:
    """Compute one job of ``run``'s plan in this process: a stage (loaded, not recomputed, when
    its file is there) or a group's cells. Returns what happened, in words, and the number of
    cells computed."""
    if job.kind == "cells":
        cells = execute_group(run, *job.group, progress=progress, domains=domains)
        return f"{cells} cell(s) computed", cells
    progress = progress or Progress()
    # A job of several tasks (SLURM, torchrun) trains the stage over all of them.
    device = distributed.init_from_environment(accelerator.resolve_device(run.config.get("device")))
    stages = StageCache(
        run.out, store=run.spec.cache, log=progress.log, strict=run.spec.strict, device=device
    )
    spec = stage_specs(run, job.group, stages, progress, domains).get(job.id)
    if spec is None:
        raise UsageError(f"stage {job.id} is not in the plan of its group {job.group}")
    there = distributed.broadcast_object(stages.store.path(job.id).exists())
    spec.compute()
    return ("already there" if there else "computed"), 0


def spec_from_folder(out: Path) -> RunSpec:
    """The run options a folder was made with, from its manifest."""
    try:
        manifest = storage.read_json(out / "manifest.json")
    except FileNotFoundError:
        raise UsageError(f"{out} is not a run folder (no manifest.json)") from None
    except ValueError:
        raise UsageError(
            f"{out}/manifest.json does not parse; `hcibench run` with the same options rewrites it"
        ) from None
    grid = manifest["grid"]
    folder = manifest.get("stage_folder")
    cache = Path(folder) if folder and Path(folder) != out / "stages" else None
    return RunSpec(
        Grid(grid["methods"], grid["sources"], grid["targets"], grid["seeds"]),
        out,
        dataset=manifest["dataset"]["name"],
        data=manifest["dataset"]["data"],
        preset=manifest["preset"],
        overrides=list(manifest.get("overrides") or []),
        evaluators=list(manifest.get("evaluators") or []),
        cache=cache,
    )


def run_stage_in_folder(out: Path, job_id: str, progress: Progress | None = None) -> str:
    """``hcibench stage run OUT ID``: what happened, in words."""
    run = prepare(spec_from_folder(out))
    plan = build_plan(run)
    job = plan.jobs.get(job_id)
    if job is None:
        known = ", ".join(list(plan.jobs)[:6])
        raise UsageError(
            f"no job '{job_id}' in the plan of {out} (`hcibench plan` lists them; e.g. {known}, ...)"
        )
    return run_job(run, job, progress)[0]


def render_plan(plan: Plan) -> str:
    lines = [
        f"{len(plan.stages())} stage(s), "
        f"{sum(job.kind == 'cells' for job in plan.jobs.values())} cells job(s)"
    ]
    lines.append(f"{'job':<40} {'needs':<40} {'used by':<22} gpus  hours")
    for job in plan.jobs.values():
        needs = ", ".join(job.needs) if job.kind == "stage" else f"{len(job.needs)} stage(s)"
        lines.append(
            f"{job.id:<40} {needs or '-':<40} {','.join(job.used_by):<22} {job.gpus:>4}  {job.hours:g}"
        )
    return "\n".join(lines)
