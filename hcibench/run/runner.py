"""The grid runner: methods × sources × targets × seeds, one record per cell.

Each (method, source, seed) is fitted once and reused for every target. A record is written
atomically as soon as its cell is scored, so a run that is killed and started again with the same
command skips every finished cell, and a group whose cells are all finished is not even fitted.
Expensive stages are shared and cached through ``hcibench.run.stages``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from hcibench import plugins
from hcibench.data import Dataset, Domain
from hcibench.errors import UsageError, unknown_name
from hcibench.run import accelerator, distributed, presets, storage
from hcibench.run.doctor import record_is_valid
from hcibench.run.progress import Progress
from hcibench.run.provenance import git_revision, package_versions
from hcibench.run.settings_check import check_config, normalise_numbers
from hcibench.run.splits import split_source
from hcibench.run.stage_store import StageStore
from hcibench.run.stages import Context, StageCache, conditions, digest, seed_everything

DEFAULT_EVALUATORS = ["accuracy", "f1"]


@dataclass
class Grid:
    methods: list[str]
    sources: list[str]
    targets: list[str] = field(default_factory=list)  # empty: every source of the dataset
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class RunSpec:
    grid: Grid
    out: Path
    dataset: str = "synthetic"
    data: str | None = None
    preset: str = "quick"
    overrides: list[str] = field(default_factory=list)
    # Empty: the dataset's ``default_evaluators``, else DEFAULT_EVALUATORS.
    evaluators: list[str] = field(default_factory=list)
    # A stage folder shared with other run folders (content-addressed); None: OUT/stages.
    cache: Path | None = None
    # Refuse to reuse a stage computed under other numeric conditions (thread count, torch).
    strict: bool = False


@dataclass
class Run:
    """A validated run: everything resolved, nothing written yet."""

    spec: RunSpec
    grid: Grid
    config: dict
    dataset: Dataset
    method_classes: dict[str, type]
    evaluators: dict[str, object]
    settings_digest: str  # of the settings every method shares (see prepare)
    method_digests: dict[str, str]  # per method: the shared settings and its own section

    @property
    def out(self) -> Path:
        return Path(self.spec.out)


def _check_unique(kind: str, names: list) -> None:
    duplicates = sorted({str(n) for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"{kind} listed more than once: {', '.join(duplicates)}")


def prepare(spec: RunSpec) -> Run:
    """Resolve every name and option; raise UsageError before anything touches the disk."""
    grid = spec.grid
    if not grid.methods or not grid.seeds:
        raise UsageError("empty grid: give at least one method and one seed")
    for kind, names in (
        ("methods", grid.methods),
        ("sources", grid.sources),
        ("targets", grid.targets),
        ("seeds", grid.seeds),
    ):
        _check_unique(kind, list(names))
    if any(not 0 <= seed < 2**31 for seed in grid.seeds):
        raise UsageError(
            f"seeds must be integers from 0 to {2**31 - 1}, got {', '.join(str(s) for s in grid.seeds)}"
        )
    method_classes = {name: plugins.methods().get(name) for name in grid.methods}
    dataset_class = plugins.datasets().get(spec.dataset)
    evaluator_names = (
        list(spec.evaluators) or list(dataset_class.default_evaluators or []) or list(DEFAULT_EVALUATORS)
    )
    _check_unique("evaluators", evaluator_names)
    evaluators = {name: plugins.evaluators().get(name)() for name in evaluator_names}
    config = resolve_config(spec, method_classes, dataset_class)[-1][1]
    for cls in method_classes.values():
        cls.check_settings(config)
    dataset = dataset_class(data=spec.data, **config["dataset"])
    known = dataset.sources()
    for source in [*grid.sources, *grid.targets]:
        if source not in known:
            raise unknown_name("source", source, known)
    grid = Grid(
        list(grid.methods),
        list(grid.sources) or list(known),
        list(grid.targets) or list(known),
        [int(s) for s in grid.seeds],
    )
    # A method's own section (e.g. ``supervised``) and the sections it declares (e.g. ``dino``)
    # concern its cells only, so a later command may add or drop methods in the same folder;
    # everything else must stay equal. Where a run computes (``device``) and what its jobs ask
    # a cluster for (``resources``) do not change what it computes, so workers on a CPU and on a
    # GPU may share a folder; the conditions stored with each stage tell them apart.
    declared = {name: sorted(cls.settings_sections(spec.preset)) for name, cls in method_classes.items()}
    owned = set(method_classes).union(*declared.values())
    shared = {key: value for key, value in config.items() if key not in owned and key not in RUNTIME_ONLY}
    if isinstance(shared.get("backbone"), dict):
        shared = {**shared, "backbone": storage.weights_by_content(shared["backbone"])}
    settings = {"config": shared, "dataset": spec.dataset, "data": spec.data, "evaluators": evaluator_names}
    if dataset.revision:
        settings["dataset_revision"] = dataset.revision
    run_digest = digest(settings)
    method_digests = {
        name: digest(
            {
                "run": run_digest,
                "method": config.get(name),
                "sections": {s: config[s] for s in declared[name]},
            }
        )
        for name in method_classes
    }
    return Run(spec, grid, config, dataset, method_classes, evaluators, run_digest, method_digests)


RUNTIME_ONLY = ("device", "resources")


def resolve_config(
    spec: RunSpec, method_classes: dict[str, type], dataset_class: type
) -> list[tuple[str, dict]]:
    """The run's settings, layer by layer: ``[(origin, config after that layer), ...]`` from the
    preset to the ``--set`` options; the last one is the run's. Every value is checked
    (:mod:`hcibench.run.settings_check`), so a bad one stops the run before anything is written."""
    config = presets.build(spec.preset)
    config["modality"] = dataset_class.modality
    config.setdefault("threads", None)  # torch threads for the run; None: torch's default
    layers = [(f"preset {spec.preset}", copy.deepcopy(config))]
    declared_by: dict[str, str] = {}
    for name, cls in method_classes.items():
        added = False
        for section, values in cls.settings_sections(spec.preset).items():
            if section not in config:
                config[section], declared_by[section], added = copy.deepcopy(values), name, True
            elif declared_by.get(section) and config[section] != values:
                raise ValueError(
                    f"methods {declared_by[section]} and {name} declare settings "
                    f"section '{section}' with different defaults"
                )
        own = cls.default_settings(spec.preset)
        if own and name not in config:
            config[name], added = copy.deepcopy(own), True
        if added:
            layers.append((f"method {name}", copy.deepcopy(config)))
    config.setdefault("dataset", dataset_class.default_settings(spec.preset))
    if dataset_class.modality == "profile":
        config.setdefault("profile", presets.profile_settings(spec.preset))
    _merge_existing(config, dataset_class.preset_settings(spec.preset))
    layers.append((f"dataset {spec.dataset}", copy.deepcopy(config)))
    defaults = copy.deepcopy(config)
    for item in spec.overrides:
        presets.apply_override(config, item)
    check_config(config, defaults)
    normalise_numbers(config, defaults)
    layers.append(("--set", config))
    return layers


def _merge_existing(config: dict, changes: dict) -> None:
    """Merge a dataset's ``preset_settings`` into ``config``: top-level settings and sections
    that the config has (a section of a method not in the run is skipped), nested dicts merged."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            _merge_into(config[key], value)
        elif key in config and not isinstance(value, dict):
            config[key] = value


def _merge_into(section: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(section.get(key), dict):
            _merge_into(section[key], value)
        else:
            section[key] = copy.deepcopy(value)


def record_path(out: Path, method: str, source: str, target: str, seed: int) -> Path:
    return out / "records" / method / source / target / f"seed{seed}.json"


def read_manifest(out: Path) -> dict | None:
    """The folder's ``manifest.json``, or None when it is absent or damaged."""
    try:
        manifest = storage.read_json(out / "manifest.json")
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def settings_conflict(run: Run, manifest: dict | None) -> str | None:
    """Why the folder's existing work was made with other settings than ``run``, or None.

    The manifest holds the digest of the shared settings; each record the digest of its
    method's settings. Records of methods that ``run`` does not name are left alone."""
    try:
        if manifest is not None:
            if manifest["settings_digest"] != run.settings_digest:
                return "shared settings (preset, --set, dataset or evaluators)"
            for method, known in (manifest.get("method_digests") or {}).items():
                if run.method_digests.get(method, known) != known:
                    return f"settings of method {method}"
    except (KeyError, TypeError, AttributeError):
        pass  # damaged: the records still say how they were made
    for method, expected in run.method_digests.items():
        folder = run.out / "records" / method
        for path in folder.rglob("seed*.json") if folder.is_dir() else []:
            try:
                record = storage.read_json(path)
            except (OSError, ValueError):
                continue  # a damaged record is recomputed
            if isinstance(record, dict) and record.get("settings_digest") != expected:
                return f"settings of method {method}"
    return None


def reader_revision_conflict(run: Run, manifest: dict | None) -> str | None:
    """The dataset reader's revision that made the folder's work ("" before revisions were
    recorded) where it is not ``run``'s, else None (also for a new or unreadable folder)."""
    if manifest is None:
        return None
    dataset = manifest.get("dataset") or {}
    if not isinstance(dataset, dict):
        return None  # damaged: nothing says which reader made the work
    made_by = dataset.get("revision", "")
    return made_by if made_by != run.dataset.revision else None


def open_run_folder(run: Run) -> None:
    """Create the run folder, or check that an existing one was made with the same settings."""
    out = run.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"cannot write to output folder {out}: {error.strerror or error}") from None
    manifest = read_manifest(out)
    earlier = reader_revision_conflict(run, manifest)
    if earlier is not None:
        made_by = f"of revision {earlier}" if earlier else "that recorded no revision"
        raise UsageError(
            f"{out} holds a run whose images the {run.spec.dataset!r} reader {made_by} read (now "
            f"{run.dataset.revision or 'none'}), which may not be what the same files "
            "give now; use a new --out folder"
        )
    conflict = settings_conflict(run, manifest)
    if conflict:
        raise UsageError(
            f"{out} holds a run made with other {conflict}; use a new --out folder or the same "
            f"options as before (methods, sources, targets and seeds may change)"
        )


def write_manifest(run: Run, stages: StageCache, started: str | None = None) -> None:
    """Write ``manifest.json``; ``started`` None keeps the start time already recorded."""
    manifest_path = run.out / "manifest.json"
    grid = asdict(run.grid)
    # A later command may extend the grid of the same run; an absent or damaged one is written anew.
    previous = read_manifest(run.out) or {}
    old, old_digests = previous.get("grid", {}), previous.get("method_digests") or {}
    started = started or previous.get("started") or datetime.now(UTC).isoformat(timespec="seconds")
    for key, values in old.items():
        grid[key] = list(dict.fromkeys([*values, *grid[key]]))
    storage.write_json(
        manifest_path,
        {
            "settings_digest": run.settings_digest,
            "method_digests": {**old_digests, **run.method_digests},
            "grid": grid,
            "dataset": dataset_identity(run),
            "preset": run.spec.preset,
            "overrides": run.spec.overrides,
            "config": run.config,
            "evaluators": list(run.evaluators),
            "versions": package_versions(),
            "git_revision": git_revision(),
            "hostname": os.uname().nodename,
            "torch_threads": torch.get_num_threads(),
            "started": started,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
            "stages": stages.recorded_counts(),
            "stage_folder": str(stages.store.folder) if stages.store else None,
            "data_problems": data_problems(run.dataset),
        },
    )


def _problems(dataset: Dataset) -> list[dict]:
    return dataset.problems() if hasattr(dataset, "problems") else []


def _skipped(problems: list[dict], source: str | None = None) -> int:
    """Images left out (``on_error=skip``), in all sources or in ``source``."""
    return int(sum(p.get("skipped", 0) for p in problems if source is None or p.get("source") == source))


def data_problems(dataset: Dataset, limit: int = 50) -> dict:
    """What went wrong reading the data so far: counts, images left out (``on_error=skip``) and
    the first ``limit`` problems (``hcibench data check`` lists them all)."""
    problems = _problems(dataset)
    return {
        "skipped_images": _skipped(problems),
        "errors": sum(p.get("severity") == "error" for p in problems),
        "warnings": sum(p.get("severity") == "warning" for p in problems),
        "problems": problems[:limit],
    }


def skipped_images(dataset: Dataset, source: str, target: str) -> dict[str, int]:
    """Images the dataset left out as unreadable (``on_error=skip``) in the training source and
    in the target, so that each record says on how much of the data it stands."""
    problems = _problems(dataset)
    return {"source": _skipped(problems, source), "target": _skipped(problems, target)}


def score(
    run: Run,
    logits: torch.Tensor,
    domain: Domain,
    variant: str = "",
    labels: torch.Tensor | None = None,
    embeddings: torch.Tensor | None = None,
) -> dict[str, float]:
    """Every evaluator on one prediction; ``labels`` default to the domain's. Evaluators that
    list ``embeddings`` or ``domain`` in their ``uses`` get them, for the main prediction only."""
    labels = domain.labels if labels is None else labels
    metrics = {}
    for evaluator in run.evaluators.values():
        uses = () if variant else getattr(evaluator, "uses", ())
        extras = {
            key: value for key, value in (("embeddings", embeddings), ("domain", domain)) if key in uses
        }
        for name, value in evaluator(logits, labels, domain.meta, len(domain.classes), **extras).items():
            metrics[f"{name}@{variant}" if variant else name] = value
    return metrics


def scored_labels(domain: Domain, seen: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The target's labels with the classes never seen in the source's training labels set to
    unlabelled (a classifier cannot predict a class it was never shown), and what was left out.

    Where sources and targets share every class (the synthetic data) this changes nothing."""
    labels = domain.labels
    known = labels >= 0
    keep = known & torch.isin(labels, seen)
    unseen = sorted({domain.classes[i] for i in labels[known & ~keep].tolist()})
    scoring = {
        "rule": "target samples whose class is absent from the source training labels are not scored",
        "labelled": int(known.sum()),
        "scored": int(keep.sum()),
        "unscored_classes": unseen,
    }
    return torch.where(keep, labels, torch.full_like(labels, -1)), scoring


def pending_cells(run: Run) -> list[tuple[str, str, int, list[str]]]:
    """(method, source, seed, unfinished targets) for every group with work left."""
    groups = []
    for seed in run.grid.seeds:
        for source in run.grid.sources:
            for method in run.grid.methods:
                targets = [
                    t
                    for t in run.grid.targets
                    if not record_is_valid(record_path(run.out, method, source, t, seed))
                ]
                if targets:
                    groups.append((method, source, seed, targets))
    return groups


class DomainCache:
    """Loads each source once per run and splits training sources once."""

    def __init__(self, run: Run):
        self.run = run
        self.domains: dict[str, Domain] = {}
        self.splits = {}

    def domain(self, source: str) -> Domain:
        if source not in self.domains:
            self.domains[source] = self.run.dataset.domain(source)
        return self.domains[source]

    def split(self, source: str):
        if source not in self.splits:
            self.splits[source] = split_source(self.domain(source), **self.run.config["split"])
        return self.splits[source]

    def target(self, source: str, target: str) -> Domain:
        """What a target is scored on: held-out plates in-domain, every image otherwise."""
        return self.split(source).test if source == target else self.domain(target)


def execute(run: Run, progress: Progress | None = None, on_cell=None) -> dict:
    """Run every unfinished cell. ``on_cell(record)`` is called after each record is written.

    The setting ``threads`` (when set, e.g. ``--set threads=1``) is torch's thread count for the
    run; tiny models (profile MLPs) run fastest on one thread. It is restored afterwards."""
    previous = torch.get_num_threads()
    if run.config.get("threads"):
        torch.set_num_threads(int(run.config["threads"]))
    try:
        return _execute(run, progress, on_cell)
    finally:
        torch.set_num_threads(previous)
        if distributed.active():  # under torchrun: leave together, then close the group
            distributed.barrier()
            distributed.shutdown()


def _execute(run: Run, progress: Progress | None, on_cell) -> dict:
    progress = progress or Progress()
    device = accelerator.resolve_device(run.config.get("device"))  # before anything is written
    device = distributed.init_from_environment(device)  # under torchrun: this rank's GPU
    main = distributed.is_main()  # under torchrun, rank 0 alone writes to the folder
    if main:
        open_run_folder(run)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    stages = StageCache(
        run.out, store=run.spec.cache, log=progress.log, strict=run.spec.strict, device=device
    )
    claims = StageStore(run.out, log=progress.log)
    # Checking the folder's settings and writing the manifest are one step for concurrent
    # commands on the same folder: of two with different settings, one is always refused.
    if main:
        with claims.exclusive("run"):
            open_run_folder(run)
            write_manifest(run, stages, started)
    distributed.barrier()
    domains = DomainCache(run)
    if distributed.active():
        done = _execute_together(run, domains, stages, claims, progress, on_cell, started)
    else:
        done = _execute_alone(run, domains, stages, claims, progress, on_cell, started)
    if main:
        with claims.exclusive("run"):
            write_manifest(run, stages, started)
    return {"computed_cells": done}


def start_run_folder(run: Run, stages: StageCache | None = None) -> str:
    """Create or check the run folder and write its manifest, under the folder's claim (of two
    commands with different settings, one is refused). Returns the start time it recorded."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    stages = stages or StageCache(run.out, store=run.spec.cache)
    open_run_folder(run)
    with StageStore(run.out).exclusive("run"):
        open_run_folder(run)
        write_manifest(run, stages, started)
    return started


def execute_group(
    run: Run,
    method: str,
    source: str,
    seed: int,
    progress: Progress | None = None,
    domains: DomainCache | None = None,
) -> int:
    """Compute one (method, source, seed) group of a started run folder in this process, under
    the group's claim (waiting while another process holds it), and update the manifest.
    Returns the cells computed (0 when another process finished them)."""
    progress = progress or Progress()
    device = accelerator.resolve_device(run.config.get("device"))
    device = distributed.init_from_environment(device)  # a job of several tasks
    main = distributed.is_main()
    stages = StageCache(
        run.out, store=run.spec.cache, log=progress.log, strict=run.spec.strict, device=device
    )
    claims = StageStore(run.out, log=progress.log)
    held = claims.exclusive(_group_claim(method, source, seed)) if main else contextlib.nullcontext()
    with held:
        group = next((g for g in pending_cells(run) if g[:3] == (method, source, seed)), None)
        group = distributed.broadcast_object(group)
        done = (
            0
            if group is None
            else _run_group(run, group, domains or DomainCache(run), stages, progress, None)
        )
    if main:
        with claims.exclusive("run"):
            write_manifest(run, stages)
    return done


def _execute_alone(run, domains, stages, claims, progress, on_cell, started) -> int:
    """Each (method, source, seed) group is computed under its claim, so that commands sharing
    the folder split the groups between them; a group another process holds is left for last,
    then waited for (and found finished)."""
    done, deferred = 0, []
    for group in pending_cells(run):
        claim = claims.try_claim(_group_claim(*group[:3]))
        if claim is None:
            deferred.append(group)
            continue
        with claim:
            done += _run_group(run, group, domains, stages, progress, on_cell)
        with claims.exclusive("run"):
            write_manifest(run, stages, started)
    for group in deferred:
        with claims.exclusive(_group_claim(*group[:3])):
            done += _run_group(run, group, domains, stages, progress, on_cell)
    return done


def _execute_together(run, domains, stages, claims, progress, on_cell, started) -> int:
    """Under torchrun: every rank works on the same group at the same time (each stage's
    training is spread over the ranks); rank 0 holds the group's claim against other commands
    sharing the folder and writes what the group produces."""
    main = distributed.is_main()
    done = 0
    for group in distributed.broadcast_object(pending_cells(run) if main else None):
        held = claims.exclusive(_group_claim(*group[:3])) if main else contextlib.nullcontext()
        with held:
            done += _run_group(run, group, domains, stages, progress, on_cell)
        if main:
            with claims.exclusive("run"):
                write_manifest(run, stages, started)
    return done


def dataset_identity(run: Run) -> dict:
    """What names the data a run reads, in its manifest and in every stage's key."""
    identity = {"name": run.spec.dataset, "data": run.spec.data, "options": run.config["dataset"]}
    if run.dataset.revision:
        identity["revision"] = run.dataset.revision
    return identity


def _group_claim(method: str, source: str, seed: int) -> str:
    return f"cells-{method}-{source}-seed{seed}"


def group_context(
    run: Run, source: str, seed: int, stages: StageCache, progress: Progress | None = None
) -> Context:
    """What a method of ``run`` sees when trained on ``source`` with ``seed``."""
    device = stages.device or torch.device("cpu")
    return Context(
        run.config,
        seed=seed,
        source=source,
        dataset=dataset_identity(run),
        stages=stages,
        progress=progress or Progress(),
        device=device,
        precision=accelerator.resolve_precision(run.config.get("precision"), device),
    )


def _run_group(run: Run, group, domains: DomainCache, stages: StageCache, progress: Progress, on_cell) -> int:
    """Fit one (method, source, seed) and score its unfinished targets; returns how many."""
    method_name, source, seed, _ = group
    targets = [
        t for t in run.grid.targets if not record_is_valid(record_path(run.out, method_name, source, t, seed))
    ]
    targets = distributed.broadcast_object(targets)  # under torchrun: rank 0's view
    if not targets:  # finished by another process meanwhile
        return 0
    split = domains.split(source)
    method = run.method_classes[method_name](group_context(run, source, seed, stages, progress))
    seed_everything(int(digest([method_name, source, seed, "fit"]), 16) % 2**31)
    fit_started = time.perf_counter()
    method.fit(split.train, split.val)
    fit_seconds = time.perf_counter() - fit_started
    train_labels = split.train.labels
    seen = torch.unique(train_labels[train_labels >= 0])
    for target in targets:
        domain = domains.target(source, target)
        seed_everything(int(digest([method_name, source, target, seed]), 16) % 2**31)
        cell_started = time.perf_counter()
        prediction = method.predict(domain)
        labels, scoring = scored_labels(domain, seen)
        metrics = score(run, prediction.logits, domain, labels=labels, embeddings=prediction.embeddings)
        for variant, logits in prediction.variants.items():
            metrics.update(score(run, logits, domain, variant, labels=labels))
        record = {
            "method": method_name,
            "source": source,
            "target": target,
            "seed": seed,
            "dataset": run.spec.dataset,
            "in_domain": source == target,
            "metrics": metrics,
            "n_images": len(domain),
            "fit_seconds": round(fit_seconds, 3),
            "seconds": round(time.perf_counter() - cell_started, 3),
            "info": {
                **prediction.info,
                "scoring": scoring,
                "skipped_images": skipped_images(run.dataset, source, target),
            },
            "computed_with": conditions(stages.device),
            "settings_digest": run.method_digests[method_name],
            "run_digest": run.settings_digest,
        }
        fit_seconds = 0.0  # the fit is charged to the first target only
        if not distributed.is_main():
            continue
        storage.write_json(record_path(run.out, method_name, source, target, seed), record)
        if on_cell:
            on_cell(record)
    return len(targets)


def count_cells(run: Run) -> tuple[int, int]:
    """(total cells, cells already finished)."""
    total = len(run.grid.methods) * len(run.grid.sources) * len(run.grid.targets) * len(run.grid.seeds)
    pending = sum(len(targets) for *_, targets in pending_cells(run))
    return total, total - pending
