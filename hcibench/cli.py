"""The ``hcibench`` command line. Commands stay thin: the work lives in the core modules."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import click
from rich.console import Console

from hcibench import __version__, plugins
from hcibench.analysis import analyze
from hcibench.errors import UsageError

console = Console(stderr=True)


def parse_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def parse_seeds(value: str) -> list[int]:
    """``0,1,2`` or a range ``0-2``; a single integer is that one seed."""
    seeds = []
    for item in parse_list(value):
        try:
            if "-" in item.lstrip("-"):
                low, high = item.split("-", 1)
                seeds.extend(range(int(low), int(high) + 1))
            else:
                seeds.append(int(item))
        except ValueError:
            raise UsageError(f"bad --seeds '{value}': expected integers like 0,1,2 or a range 0-2") from None
    return seeds


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hcibench")
def cli():
    """Benchmark domain adaptation for High Content Imaging across sources, batches and plates."""


GRID_OPTIONS = [
    click.option("--methods", help="Comma-separated method names (see `hcibench list methods`)."),
    click.option("--sources", help="Training sources, comma-separated [default: every source]."),
    click.option("--targets", help="Target sources [default: every source, the training one included]."),
    click.option("--seeds", help="Seeds: 0,1,2 or a range 0-2 [default: 0]."),
    click.option("--dataset", help="Dataset plugin [default: synthetic]."),
    click.option("--data", "data_path", help="Path to the dataset on disk, for datasets that read one."),
    click.option("--preset", type=click.Choice(["quick", "paper"]), help="Settings bundle [default: quick]."),
    click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="Override one setting, e.g. --set supervised.epochs=5 (repeatable).",
    ),
    click.option(
        "--evaluators", help="Comma-separated evaluators [default: the dataset's, else accuracy,f1]."
    ),
    click.option("--pretrained", type=click.Path(), help="Local weights file for the backbones."),
    click.option("--grid", "grid_file", type=click.Path(), help="TOML file with any of the options above."),
    click.option("--out", type=click.Path(), help="Run folder [default: runs/<dataset>-<preset>]."),
    click.option(
        "--cache",
        type=click.Path(),
        help="Stage folder shared between run folders: stages with equal settings are "
        "computed once [default: OUT/stages; OUT/cache for a sweep].",
    ),
    click.option(
        "--strict",
        is_flag=True,
        help="Refuse to reuse a stage computed with another thread count or torch version "
        "(by default a warning: results may differ in the last digits).",
    ),
]


def grid_options(command):
    """The options that describe a run (shared by `run` and `plan`)."""
    for option in reversed(GRID_OPTIONS):
        command = option(command)
    return command


@cli.command()
@grid_options
@click.option(
    "--executor",
    type=click.Choice(["local", "dask", "slurm"]),
    help="Where the (method, source, seed) groups are computed: in this process "
    "[local], on a Dask cluster, or as SLURM jobs through submitit.",
)
@click.option("--workers", help="dask: worker processes [one per GPU, else one per 2 cores].")
@click.option(
    "--scheduler", help="dask: address of a running scheduler (tcp://host:8786) instead of a local cluster."
)
@click.option(
    "--slurm",
    "slurm_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="slurm: a submitit parameter, e.g. --slurm slurm_partition=gpu "
    "--slurm timeout_min=600 --slurm gpus_per_node=1 (repeatable).",
)
def run(**options):
    """Run a methods × sources × targets × seeds grid; finished cells are never recomputed."""
    from hcibench.run.runner import prepare
    from hcibench.run.sweep import sweep_variants, write_sweep

    spec = spec_from_options(options)
    executor = executor_options(options)
    variants = sweep_variants(spec)
    if variants is None:
        dispatch(spec, executor)
        return
    for variant in variants:  # every variant checked before the first one runs
        prepare(variant)
    write_sweep(spec, variants)
    for variant in variants:
        console.print(f"[bold]sweep variant[/] {variant.out.name}")
        dispatch(variant, executor)


@cli.command()
@grid_options
@click.option("--json", "as_json", is_flag=True, help="The plan as JSON.")
def plan(as_json, **options):
    """The grid's jobs as a graph: each stage (its id is its file's name), the stages it needs,
    the methods whose cells use it, and what it asks a cluster for; one `cells` job per
    (method, source, seed) writes the records once its stages exist. Nothing is computed."""
    from dataclasses import asdict as as_dict

    from hcibench.run.plan import build_plan, render_plan
    from hcibench.run.runner import prepare

    built = build_plan(prepare(spec_from_options(options)))
    if as_json:
        click.echo(json.dumps([as_dict(job) for job in built.jobs.values()], indent=2))
    else:
        click.echo(render_plan(built))


@cli.group()
def stage():
    """Work on single jobs of a run folder's plan."""


@stage.command(name="run")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("job_id")
def stage_run(run_dir, job_id):
    """Compute one job of RUN_DIR's plan (a stage id or cells-METHOD-SOURCE-seedN) in this
    process; a stage whose file exists is not computed again."""
    from hcibench.run.plan import run_stage_in_folder

    click.echo(f"{job_id}: {run_stage_in_folder(run_dir, job_id)}")


def spec_from_options(options: dict):
    """The RunSpec of `run` / `plan` options (a --grid file fills what is not given)."""
    from hcibench.run.runner import Grid, RunSpec

    options = merge_grid_file(options)
    dataset = options["dataset"] or "synthetic"
    preset = options["preset"] or "quick"
    overrides = list(options["overrides"])
    if options["pretrained"]:
        overrides.append(f"backbone.pretrained={options['pretrained']}")
    if not options["methods"]:
        raise UsageError(
            "no methods given: use --methods, e.g. --methods supervised,coda (see `hcibench list methods`)"
        )
    spec = RunSpec(
        grid=Grid(
            parse_list(options["methods"]),
            parse_list(options["sources"]),
            parse_list(options["targets"]),
            parse_seeds(options["seeds"] or "0"),
        ),
        out=Path(options["out"] or f"runs/{dataset}-{preset}"),
        dataset=dataset,
        data=options["data_path"],
        preset=preset,
        overrides=overrides,
        evaluators=parse_list(options["evaluators"]),
        cache=Path(options["cache"]) if options["cache"] else None,
        strict=options["strict"],
    )
    return spec


def executor_options(options: dict):
    from hcibench.run.executors import ExecutorOptions, parse_slurm_options

    name = options.get("executor") or "local"
    workers = options.get("workers")
    if workers not in (None, ""):
        try:
            workers = int(workers)
        except ValueError:
            workers = 0
        if workers < 1:
            raise UsageError(f"bad --workers '{options['workers']}': expected a whole number >= 1")
    else:
        workers = None
    for flag in ("workers", "scheduler"):
        if options.get(flag) not in (None, "") and name != "dask":
            raise UsageError(f"--{flag} is an option of --executor dask")
    if options.get("slurm_options") and name != "slurm":
        raise UsageError("--slurm is an option of --executor slurm")
    return ExecutorOptions(
        name,
        workers=workers,
        scheduler=options.get("scheduler") or None,
        slurm=parse_slurm_options(options.get("slurm_options") or ()),
    )


def dispatch(spec, executor) -> None:
    """Run ``spec`` on the chosen executor, reporting on the console."""
    from hcibench.run.display import run_with_progress

    if executor.name == "local":
        run_with_progress(spec, console)
        return
    from hcibench.run import executors

    if executor.name == "dask":

        def on_job(job, said):
            console.print(f"{job.id:<40} {said}")

        cells = executors.run_with_dask(spec, executor, on_job)
        console.print(f"{cells} cell(s) computed on Dask. Report: hcibench report {spec.out}")
        return
    jobs = executors.submit_to_slurm(spec, executor)
    console.print(
        f"{len(jobs)} SLURM job(s) submitted ({', '.join(j for j in jobs[:5])}"
        f"{', ...' if len(jobs) > 5 else ''}); `hcibench status {spec.out}` shows "
        f"progress, `hcibench report {spec.out}` the results so far."
    )


def merge_grid_file(options: dict) -> dict:
    """Fill options not given on the command line from a ``--grid`` TOML file."""
    path = options.get("grid_file")
    if not path:
        return options
    try:
        grid = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"grid file not found: {path}") from None
    except OSError as error:  # a folder, unreadable, ...
        raise UsageError(f"cannot read grid file {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"grid file {path} is not valid TOML: {error}") from None
    merged = dict(options)
    sweep = grid.pop("sweep", {})
    if not isinstance(sweep, dict) or not all(isinstance(v, list) and v for v in sweep.values()):
        raise UsageError(
            f'grid file {path}: [sweep] maps settings to lists of values, e.g. "adapt.lr" = [1e-5, 1e-4]'
        )
    # A [sweep] table is the same as --set SETTING=a,b,c (see hcibench.run.sweep).
    merged["overrides"] = [
        *merged["overrides"],
        *(
            f"{setting}={','.join(v if isinstance(v, str) else json.dumps(v) for v in values)}"
            for setting, values in sweep.items()
        ),
    ]
    for key, value in grid.items():
        name = {"data": "data_path", "set": "overrides"}.get(key, key)
        if name not in merged:
            raise UsageError(f"grid file {path}: unknown key '{key}'")
        if isinstance(value, list) and name != "overrides":
            value = ",".join(str(v) for v in value)
        if name == "overrides":
            merged[name] = [*value, *merged[name]]
        elif merged[name] in (None, ""):
            merged[name] = str(value)
    return merged


@cli.command()
@click.argument("run_dir", required=False, type=click.Path())
@click.option(
    "--format",
    "fmt",
    default="table",
    type=click.Choice(["table", "markdown", "latex", "csv", "json", "html"]),
    help="html: one self-contained file with tables, statistics and figures.",
)
@click.option("--metric", default="accuracy", help="accuracy, f1, or any recorded metric.")
@click.option(
    "--stats", is_flag=True, help="Paired tests (Holm-corrected) and relative improvement against --baseline."
)
@click.option(
    "--baseline",
    help="Method the others are compared with (--stats, html); default: "
    "the run's baseline method (e.g. supervised), else its first.",
)
@click.option(
    "--compare",
    type=click.Choice(["paper"]),
    help="Our numbers beside the CODA paper's (accuracy: Table 2, f1: Table 4).",
)
@click.option(
    "--plots", "plots_dir", type=click.Path(), help="Also write the figures (PNG and SVG) into this folder."
)
@click.option("--output", "-o", type=click.Path(), help="Write the report to a file, not stdout.")
@click.option(
    "--digest",
    help="Report the records of this settings digest only (a folder whose "
    "records were made with several settings needs it).",
)
def report(run_dir, fmt, metric, stats, baseline, compare, plots_dir, output, digest):
    """Print the source × target table of a run (mean ± std over seeds)."""
    from hcibench.report.tables import RunSelection

    run_dir = RunSelection.of(run_dir or latest_run(), digest)
    if stats and compare:
        raise UsageError("--stats and --compare print different tables: give one of them")
    if fmt == "html":
        from hcibench.paper.comparison import html_section
        from hcibench.report.html import render_html

        text = render_html(run_dir, metric=metric, baseline=baseline, extra_sections=[html_section])
    elif stats:
        from hcibench.report.statistics import render_stats

        text = render_stats(run_dir, fmt=fmt, metric=metric, baseline=baseline)
    elif compare:
        from hcibench.paper.comparison import render_comparison

        text = render_comparison(run_dir, fmt=fmt, metric=metric)
    else:
        from hcibench.report.tables import render

        text = render(run_dir, fmt=fmt, metric=metric)
    if plots_dir:
        from hcibench.report.plots import write_plots

        paths = write_plots(run_dir, plots_dir, metric=metric)
        click.echo(f"wrote {len(paths)} figure files to {plots_dir}", err=True)
    if output:
        try:
            Path(output).write_text(text if text.endswith("\n") else text + "\n")
        except OSError as error:
            raise UsageError(f"cannot write {output}: {error.strerror or error}") from None
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text)


@cli.command()
@click.option(
    "--methods", help="Comma-separated methods whose settings to include [default: every registered method]."
)
@click.option("--dataset", default="synthetic", show_default=True, help="Dataset plugin.")
@click.option("--data", "data_path", help="Path to the dataset on disk, for datasets that read one.")
@click.option("--preset", default="quick", show_default=True, type=click.Choice(["quick", "paper"]))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override one setting (repeatable), as for `hcibench run`.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def settings(methods, dataset, data_path, preset, overrides, as_json):
    """The resolved settings of a run: each value, where it came from and what it may be."""
    from hcibench.run.runner import Grid, RunSpec
    from hcibench.run.settings_view import resolved_settings

    names = parse_list(methods) if methods else plugins.methods().names()
    spec = RunSpec(
        Grid(names, []), Path("."), dataset=dataset, data=data_path, preset=preset, overrides=list(overrides)
    )
    rows = resolved_settings(spec)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    width = max(len(row["setting"]) for row in rows)
    for row in rows:
        value = json.dumps(row["value"], default=str)
        click.echo(f"{row['setting']:<{width}}  {value:<24} {row['origin']:<22} {row['allowed']}")


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option(
    "--fix",
    is_flag=True,
    help="Remove leftovers and damaged files (the same `hcibench run` then recomputes what they held).",
)
def doctor(run_dir, fix):
    """List what in a run folder is damaged, stale or left over by an interrupted process."""
    from hcibench.run import doctor as checks

    findings = checks.examine(Path(run_dir))
    for finding in findings:
        click.echo(f"{finding.path}: {finding.problem}")
    if fix:
        click.echo(f"removed {checks.fix(findings)} file(s)")
    elif findings:
        click.echo(f"{len(findings)} problem(s); `hcibench doctor {run_dir} --fix` removes them")
    else:
        click.echo(f"{run_dir}: nothing damaged or left over")


def latest_run() -> Path:
    manifests = sorted(Path("runs").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not manifests:
        raise UsageError(
            "no run folder given and none found under runs/: "
            "give one, e.g. `hcibench report runs/synthetic-quick`"
        )
    return manifests[-1].parent


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def status(run_dir):
    """How far a run folder is: cells finished per method and what is being computed now."""
    from hcibench.run.status import render_status

    click.echo(render_status(run_dir))


@cli.command(name="plugins")
def plugins_command():
    """Installed plugins, their versions and the hooks they implement."""
    for info in plugins.installed_plugins():
        click.echo(f"{info.name:<20} {info.version:<28} {', '.join(info.hooks)}")


@cli.command(name="list")
@click.argument("kind", type=click.Choice(["methods", "datasets", "evaluators"]))
def list_command(kind):
    """Registered names of one kind with a one-line description."""
    registry = plugins.registry(kind)
    for name in registry.names():
        cls = registry.items[name]
        click.echo(f"{name:<14} {cls.description}  [{registry.owners[name]}]")


@cli.group()
def data():
    """Dataset utilities."""


cli.add_command(analyze)


def build_cli() -> click.Group:
    """The root group with every plugin's commands added (hook ``register_commands``)."""
    plugins.manager().hook.register_commands(cli=cli)
    return cli


def main(argv=None) -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    try:
        root = build_cli()
        root.main(args=argv, prog_name="hcibench", standalone_mode=False)
    except UsageError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted: finished cells are saved; the same command resumes the run", err=True)
        sys.exit(130)
    except click.ClickException as error:
        click.echo(f"error: {error.format_message()}", err=True)
        sys.exit(2 if isinstance(error, click.UsageError) else error.exit_code)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except OSError as error:  # the environment: a full disk, a name too long, permissions
        where = f": {error.filename}" if error.filename else ""
        click.echo(f"error: {error.strerror or error}{where}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
