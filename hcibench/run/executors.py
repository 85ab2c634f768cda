"""Where the jobs of a grid are computed: in this process (``local``, the default), on a Dask
cluster (``dask``) or as SLURM jobs through submitit (``slurm``).

The jobs are those of the grid's plan (:mod:`hcibench.run.plan`): a job per stage the methods
declare, after the stages it builds on, and a ``cells`` job per (method, source, seed) that
predicts and writes the records. A job runs wherever it is sent and may run twice or at the
same time in two places: every stage is computed once under its own claim in the run folder
(the others wait for its file), a group's cells under the group's claim, and finished records
are never recomputed. So a lost Dask worker's job is simply run again elsewhere, and a job
that starts before what it needs is there computes it or waits for it.

Both engines are optional: ``pip install hcibench[dask]`` or ``hcibench[slurm]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from hcibench.errors import UsageError
from hcibench.run.plan import Job, Plan, build_plan, run_job
from hcibench.run.runner import (
    DomainCache,
    RunSpec,
    prepare,
    start_run_folder,
)
from hcibench.run.stages import digest

EXECUTORS = ("local", "dask", "slurm")


@dataclass
class ExecutorOptions:
    name: str = "local"
    workers: int | None = None  # dask: worker processes [one per GPU, else one per 2 cores]
    scheduler: str | None = None  # dask: address of a running scheduler instead of a local one
    threads: int | None = None  # torch threads per worker [cores / workers]
    retries: int = 2  # dask: times a group is run again after its worker is lost
    slurm: dict = field(default_factory=dict)  # submitit parameters (--slurm KEY=VALUE)


# What a SLURM job asks for unless --slurm says otherwise (its time: the plan's hours).
SLURM_DEFAULTS = {"tasks_per_node": 1, "cpus_per_task": 8}


def parse_slurm_options(items) -> dict:
    """``KEY=VALUE`` items as submitit parameters; numbers become numbers."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(
                f"bad --slurm '{item}': expected KEY=VALUE, e.g. slurm_partition=gpu or timeout_min=600"
            )
        try:
            options[key.strip()] = int(value)
        except ValueError:
            options[key.strip()] = value
    return options


def default_workers() -> int:
    """One worker per GPU, else one per 2 cores."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return gpus or max(1, (os.cpu_count() or 2) // 2)


def _require(module: str, extra: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise UsageError(
            f"--executor {extra} needs the {extra} extra: pip install 'hcibench[{extra}]'"
        ) from None


def run_with_dask(
    spec: RunSpec, options: ExecutorOptions, on_job: Callable[[Job, str], None] | None = None
) -> int:
    """The plan's jobs (:mod:`hcibench.run.plan`) as Dask tasks with their dependencies, on a
    ``LocalCluster`` of ``options.workers`` processes or on the scheduler at
    ``options.scheduler``: the stages of a group run as soon as what they build on exists (the
    adaptations to several targets at once), each group's cells after its stages. GPUs are
    worker resources. Returns the cells computed."""
    distributed = _require("distributed", "dask")
    run = prepare(spec)
    start_run_folder(run)
    plan = build_plan(run, pending_only=True)
    if not plan.jobs:
        return 0
    workers = options.workers or default_workers()
    threads = options.threads or run.config.get("threads") or max(1, (os.cpu_count() or 1) // workers)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cluster = None
    if options.scheduler:
        client = distributed.Client(options.scheduler)
    else:
        cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            resources={"GPU": 1} if gpus else None,
        )
        client = distributed.Client(cluster)
    try:
        futures = submit_plan(client, spec, plan, threads, options.retries)
        jobs = {future: plan.jobs[job_id] for job_id, future in futures.items()}
        done = 0
        for future in distributed.as_completed(list(futures.values())):
            job, (said, cells) = jobs[future], future.result()
            done += cells
            if on_job:
                on_job(job, said)
        return done
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def submit_plan(client, spec: RunSpec, plan: Plan, threads: int | None, retries: int) -> dict:
    """Submit every job of ``plan`` to a Dask ``client``, each after the jobs it needs;
    returns the futures by job id."""
    futures = {}
    for job in plan.jobs.values():
        needs = [futures[need] for need in job.needs if need in futures]
        futures[job.id] = client.submit(
            run_plan_job,
            spec,
            job,
            threads,
            *needs,
            pure=False,
            retries=retries,
            key=f"{job.id}@{spec.out}",
            resources={"GPU": job.gpus} if job.gpus else None,
        )
    return futures


# Per worker process: the prepared run and its loaded domains, so that the many jobs of one
# grid that reach the same worker load the data once.
_PREPARED: dict[str, tuple] = {}


def prepared(spec: RunSpec):
    key = digest(asdict(spec))
    if key not in _PREPARED:
        run = prepare(spec)
        _PREPARED.clear()  # one grid at a time per worker
        _PREPARED[key] = (run, DomainCache(run))
    return _PREPARED[key]


def run_plan_job(spec: RunSpec, job: Job, threads: int | None = None, *needs) -> tuple[str, int]:
    """One job of the plan, in the calling process (a Dask worker, a SLURM job); ``needs`` are
    the results of the jobs it depends on (only their being finished matters). Returns what
    happened, in words, and the cells computed."""
    if threads:
        torch.set_num_threads(threads)
    _own_gpu()
    run, domains = prepared(spec)
    return run_job(run, job, domains=domains)


def _own_gpu() -> None:
    """On a machine with several GPUs, Dask worker k computes on GPU k (modulo their number):
    a LocalCluster's workers are numbered from 0, and the run's ``cuda`` device is the
    process's current one."""
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):  # not in a Dask worker
        return
    if isinstance(name, int):
        torch.cuda.set_device(name % torch.cuda.device_count())


def _slurm_job_class(submitit):
    class PlanJob(submitit.helpers.Checkpointable):
        """One job of the plan as a SLURM job. On a time-out or a pre-emption submitit calls
        ``checkpoint``, which requeues the same job: the stages and records already in the run
        folder stay, so the requeued job goes on from there. A job of several tasks
        (``--slurm tasks_per_node=N``) trains its stage over the N tasks, as torchrun does."""

        def __call__(self, spec, job, threads=None):
            if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
                submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            return run_plan_job(spec, job, threads)

    return PlanJob


def submit_to_slurm(spec: RunSpec, options: ExecutorOptions) -> list[str]:
    """One SLURM job per job of the plan, through submitit, each held until the jobs it needs
    have succeeded (``--dependency=afterok``); returns their job ids at once (the jobs write
    into the run folder as they finish). A job asks for the plan's GPUs and hours unless
    ``options.slurm`` (submitit's parameters) says otherwise; ``cluster=local`` runs the jobs as
    local processes instead (no SLURM, no dependencies: a job whose stages are missing computes
    them, or waits for the job computing them)."""
    submitit = _require("submitit", "slurm")
    run = prepare(spec)
    start_run_folder(run)
    plan = build_plan(run, pending_only=True)
    if not plan.jobs:
        return []
    parameters = {**SLURM_DEFAULTS, **options.slurm}
    cluster = parameters.pop("cluster", "slurm")
    executor = submitit.AutoExecutor(folder=run.out / "slurm" / "%j", cluster=cluster)
    local = cluster == "local"
    if local:  # the local executor knows no SLURM-only or CPU-count parameters
        parameters = {
            k: v
            for k, v in parameters.items()
            if k in ("timeout_min", "tasks_per_node", "gpus_per_node", "name")
        }
    job_class = _slurm_job_class(submitit)
    threads = run.config.get("threads") or parameters.get("cpus_per_task")
    extra = dict(parameters.pop("slurm_additional_parameters", None) or {})
    ids: dict[str, str] = {}
    for job in plan.jobs.values():
        asked = {"timeout_min": max(1, round(job.hours * 60)), **parameters, "name": f"hcibench-{job.id}"}
        if job.gpus and "gpus_per_node" not in parameters:
            asked["gpus_per_node"] = job.gpus
        needs = [ids[need] for need in job.needs if need in ids]
        if not local:
            dependency = {"dependency": "afterok:" + ":".join(needs)} if needs else {}
            asked["slurm_additional_parameters"] = {**extra, **dependency}
        try:
            executor.update_parameters(**asked)
        except (TypeError, ValueError) as error:
            raise UsageError(f"bad --slurm option: {error}") from None
        ids[job.id] = str(executor.submit(job_class(), spec, job, threads).job_id)
    return list(ids.values())
