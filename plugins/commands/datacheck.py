"""``hcibench data check PATH``: read a dataset as a run would, without training, and say what is
in it and what is wrong with it.

It works for any dataset plugin. File datasets (``folder``, ``deepprofiler``, ``jump``) are read
with ``on_error=skip`` so that every problem is found, not only the first, and their files are
checked for completeness (``--decode`` decodes every image). The summary lists sources,
batches, plates, wells, compounds, classes, images per source, the classes shared between
sources, the cross-batch pair coverage (``hcibench.train.pairs.cross_batch_partners``) and every
problem; the exit status is 2 when there are errors (or warnings, with ``--strict``).
"""

from __future__ import annotations

import json
from collections import Counter

import click
import numpy as np

import hcibench
from hcibench import plugins
from hcibench.errors import UsageError
from hcibench.run import presets
from hcibench.train.pairs import cross_batch_partners

MIN_PLATES = 3  # train, validation and test plates of a training source


def check_dataset(dataset) -> dict:
    """Everything ``data check`` prints, as a JSON-able dict."""
    problems = []
    sources = {}
    labels_by_source = {}
    for source in dataset.sources():
        try:
            domain = dataset.domain(source)
        except UsageError as error:
            problems.append({"severity": "error", "kind": "source", "message": str(error), "source": source})
            continue
        sources[source], found = _source_summary(domain)
        problems.extend(found)
        labels_by_source[source] = set(sources[source].pop("class_names"))
    if hasattr(dataset, "problems"):
        problems = [*dataset.problems(), *problems]
    names = list(sources)
    shared = {a: {b: len(labels_by_source[a] & labels_by_source[b]) for b in names} for a in names}
    if len(names) > 1:
        for source in names:
            others = set().union(*(labels_by_source[s] for s in names if s != source))
            alone = sorted(labels_by_source[source] - others)
            if alone:
                problems.append(
                    {
                        "severity": "warning",
                        "kind": "label-in-one-source",
                        "source": source,
                        "message": f"source '{source}': {len(alone)} class(es) exist in no other source "
                        f"({', '.join(alone[:8])}{', …' if len(alone) > 8 else ''}): a "
                        f"model trained elsewhere is not scored on them",
                    }
                )
    classes = dataset.classes()
    return {
        "dataset": getattr(dataset, "name", type(dataset).__name__),
        "data": getattr(dataset, "data", None),
        "about": dataset.describe() if hasattr(dataset, "describe") else [],
        "classes": list(classes),
        "sources": sources,
        "shared_classes": shared,
        "label_counts": getattr(dataset, "label_counts", None),
        "skipped_images": int(sum(p.get("skipped", 0) for p in problems)),
        "problems": problems,
        "errors": sum(p["severity"] == "error" for p in problems),
        "warnings": sum(p["severity"] == "warning" for p in problems),
    }


def _source_summary(domain) -> tuple[dict, list[dict]]:
    meta = domain.meta
    source = domain.name
    labels = domain.labels
    known = labels[labels >= 0]
    class_names = sorted({domain.classes[i] for i in known.tolist()})
    summary = {
        "images": len(domain),
        "batches": int(meta["batch"].nunique()),
        "plates": int(meta["plate"].nunique()),
        "wells": int(meta[["plate", "well"]].astype(str).drop_duplicates().shape[0]),
        "compounds": int(meta["compound"].nunique()),
        "classes": len(class_names),
        "labelled": int(len(known)),
        "class_names": class_names,
    }
    problems = []

    def warn(kind, message):
        problems.append(
            {
                "severity": "warning",
                "kind": kind,
                "source": source,
                "message": f"source '{source}': {message}",
            }
        )

    if len(domain) == 0:
        problems.append(
            {
                "severity": "error",
                "kind": "empty-source",
                "source": source,
                "message": f"source '{source}' has no images",
            }
        )
        return summary, problems
    if summary["labelled"] == 0:
        warn("no-labels", "no labelled image: it can only be a target")
    if summary["plates"] < MIN_PLATES:
        warn(
            "few-plates",
            f"{summary['plates']} plate(s): a training source needs at least "
            f"{MIN_PLATES} (train, validation, test)",
        )
    if summary["batches"] < 2:
        warn("one-batch", "one batch only: no cross-batch pairs (CODA falls back to other plates)")
    _, stats = cross_batch_partners(meta, key="batch", generator=0)
    summary["pairs"] = stats
    try:
        image = domain.images[0]
        summary["image"] = {
            "shape": list(image.shape),
            "dtype": str(image.dtype).replace("torch.", ""),
            "min": float(image.min()),
            "max": float(image.max()),
        }
    except UsageError as error:
        problems.append({"severity": "error", "kind": "unreadable", "source": source, "message": str(error)})
    return summary, problems


def render(report: dict, max_problems: int = 50) -> str:
    lines = [f"dataset {report['dataset']}" + (f" ({report['data']})" if report["data"] else "")]
    lines += [f"  {line}" for line in report["about"]]
    sources = report["sources"]
    lines.append(f"sources: {len(sources)} ({', '.join(sources)})")
    header = ["source", "images", "labelled", "batches", "plates", "wells", "compounds", "classes", "size"]
    rows = [
        [
            name,
            s["images"],
            s["labelled"],
            s["batches"],
            s["plates"],
            s["wells"],
            s["compounds"],
            s["classes"],
            "×".join(map(str, s["image"]["shape"])) if "image" in s else "?",
        ]
        for name, s in sources.items()
    ]
    lines += _table(header, rows)
    total = sum(s["images"] for s in sources.values())
    lines.append(
        f"images: {total}; batches: {sum(s['batches'] for s in sources.values())}; "
        f"plates: {sum(s['plates'] for s in sources.values())}; classes: "
        f"{len(report['classes'])}; images left out: {report['skipped_images']}"
    )
    if report["label_counts"]:
        from hcibench_plugins.datasets.files.moa import describe

        lines.append("MoA labels: " + describe(report["label_counts"]))
    names = list(sources)
    if len(names) > 1:
        lines.append("classes shared between sources (row: source, column: target):")
        lines += _table(["", *names], [[a, *(report["shared_classes"][a][b] for b in names)] for a in names])
    if sources:
        lines.append("cross-batch pairs (same compound, another batch; else another plate; else itself):")
        pair_rows = []
        for name, s in sources.items():
            if "pairs" not in s:
                continue
            p = s["pairs"]
            share = p["cross"] / p["pairs"] if p["pairs"] else 0.0
            pair_rows.append(
                [
                    name,
                    f"{share:.0%}",
                    p["cross"],
                    p["fallback_plate"],
                    p["fallback_self"],
                    p["missing_compound"],
                ]
            )
        lines += _table(
            ["source", "coverage", "cross-batch", "other plate", "itself", "no compound"], pair_rows
        )
    problems = report["problems"]
    if not problems:
        lines.append("no problems found")
        return "\n".join(lines)
    lines.append(f"problems: {report['errors']} error(s), {report['warnings']} warning(s)")
    for problem in problems[:max_problems]:
        lines.append(f"  {problem['severity']:<7} {problem['message']}")
    if len(problems) > max_problems:
        rest = Counter(p["kind"] for p in problems[max_problems:])
        lines.append(
            f"  … {len(problems) - max_problems} more: "
            + ", ".join(f"{n} {kind}" for kind, n in rest.most_common())
            + " (--max-problems shows more; --json lists all)"
        )
    return "\n".join(lines)


def _table(header, rows) -> list[str]:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [
        "  "
        + "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
        ).rstrip()
        for row in cells
    ]


def build_dataset(name: str, path: str | None, overrides, preset: str = "quick", decode: bool = False):
    """The dataset as ``run`` would build it, reading every problem rather than stopping."""
    dataset_class = plugins.datasets().get(name)
    config = {"dataset": dataset_class.default_settings(preset)}
    for item in overrides:
        presets.apply_override(config, item if item.startswith("dataset.") else f"dataset.{item}")
    options = config["dataset"]
    if "on_error" in options:
        options["on_error"] = "skip"
    if "verify" in options:
        options["verify"] = (
            "decode"
            if decode
            else ("header" if options["verify"] in ("auto", "exists", "none") else options["verify"])
        )
    return dataset_class(data=path, **options)


@click.command("check")
@click.argument("path", required=False)
@click.option(
    "--dataset", "dataset_name", default="folder", show_default=True, help="Dataset plugin that reads PATH."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help='Dataset option, e.g. --set dataset.columns=\'{"label": "moa"}\' (repeatable).',
)
@click.option("--preset", type=click.Choice(["quick", "paper"]), default="quick", show_default=True)
@click.option("--decode", is_flag=True, help="Decode every image (slower; finds corrupt pixel data).")
@click.option("--strict", is_flag=True, help="Exit with status 2 on warnings too.")
@click.option(
    "--max-problems",
    default=50,
    show_default=True,
    type=int,
    help="Problems printed (the rest are counted by kind).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
def check_command(path, dataset_name, overrides, preset, decode, strict, max_problems, as_json):
    """Validate a dataset without training: summary, problems, exit status 2 if any."""
    dataset = build_dataset(dataset_name, path, overrides, preset, decode)
    report = check_dataset(dataset)
    click.echo(
        json.dumps(report, indent=2, default=_json_default) if as_json else render(report, max_problems)
    )
    if report["errors"] or (strict and report["warnings"]):
        counted = f"{report['errors']} error(s)" + (
            f" and {report['warnings']} warning(s)" if strict and report["warnings"] else ""
        )
        raise UsageError(f"data check found {counted} (listed above)")


def _json_default(value):
    if isinstance(value, np.integer | np.floating):
        return value.item()
    return str(value)


@hcibench.hookimpl
def register_commands(cli):
    cli.commands["data"].add_command(check_command)
