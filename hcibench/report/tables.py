"""Reports over a finished grid run: the records folder summarised as tables, CSV or JSON.

Every output is built from one summary (mean, sample std and count per cell over seeds) and one
rounding step (``round4``), so the Table-2 style layouts, the CSV and the JSON agree number for
number: a percent shown in a table is the CSV fraction times 100, rounded to one decimal.

This module deliberately imports neither torch nor the storage helpers: reporting must work on a
machine that only holds the results.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pandas as pd

from hcibench.errors import UsageError, unknown_name
from hcibench.report.formats import markdown_cell, markdown_table
from hcibench.run.sweep import read_sweep

FORMATS = ("table", "markdown", "latex", "csv", "json")
LONG_COLUMNS = ["method", "source", "target", "seed", "metric", "value"]
SUMMARY_COLUMNS = ["method", "source", "target", "metric", "mean", "std", "n"]
# Names a record must carry; the grid cell and seed identify it, so without them it is unusable.
_RECORD_KEYS = ("method", "source", "target", "seed", "metrics")
MISSING = "–"
PLUS_MINUS = "±"


# --------------------------------------------------------------------------- loading


def _natural_key(name: str) -> list:
    """Sort key that puts S3 before S11: domain and variant names embed numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(name))]


def _read_manifest(run_dir: Path) -> dict:
    """The run's manifest, or {} when absent: a bare records folder is still reportable."""
    path = run_dir / "manifest.json"
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    return manifest if isinstance(manifest, dict) else {}


def _names(items: Any) -> list[str]:
    """Grid entries as names; a method may be given as {"name": ..., options} in the manifest."""
    if not isinstance(items, (list, tuple)):
        return []
    names = [str(item.get("name")) if isinstance(item, dict) else str(item) for item in items]
    return list(dict.fromkeys(names))  # keep the first occurrence, drop repeats


def _grid_order(manifest: dict) -> dict[str, list[str]]:
    """Preferred order of methods and domains, taken from the manifest's grid.

    Sources and targets share one order (sources first, then targets not among them) so that
    the two columns can be compared with ``==`` even though they are ordered categoricals.
    """
    grid = manifest.get("grid") or {}
    domains = list(dict.fromkeys(_names(grid.get("sources")) + _names(grid.get("targets"))))
    return {"method": _names(grid.get("methods")), "domain": domains}


def dataset_names(manifest: dict, records: list[dict]) -> list[str]:
    """Dataset name for captions: the manifest's, else whatever the records say."""
    dataset = manifest.get("dataset")
    name = dataset.get("name") if isinstance(dataset, dict) else dataset
    if name:
        return [str(name)]
    return sorted({str(r["dataset"]) for r in records if r.get("dataset")}, key=_natural_key)


def _record_files(records_dir: Path) -> list[Path]:
    """JSON record files at any depth, skipping dot-files and dot-folders (writes in progress)."""
    if not records_dir.is_dir():
        return []
    files = [
        path
        for path in records_dir.rglob("*.json")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(records_dir).parts)
    ]
    return sorted(files)


def _read_record(path: Path) -> dict:
    """One record, checked for the keys every cell needs; errors name the file."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read record {path}: {exc}") from None
    if not isinstance(record, dict):
        raise UsageError(f"record {path} is not a JSON object")
    missing = [key for key in _RECORD_KEYS if key not in record]
    if missing:
        raise UsageError(f"record {path} lacks {', '.join(missing)}")
    if not isinstance(record["metrics"], dict):
        raise UsageError(f"record {path}: 'metrics' is not an object")
    return record


def _metric_value(value: Any, name: str, path: Path) -> float | None:
    """A metric as float; None/NaN mean 'not computed' and are left out rather than counted."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"record {path}: metric '{name}' is not a number: {value!r}")
    value = float(value)
    return None if math.isnan(value) else value


def _long_rows(record: dict, path: Path) -> list[dict]:
    """One row per metric of a record: the long format every summary starts from."""
    cell = {
        "method": str(record["method"]),
        "source": str(record["source"]),
        "target": str(record["target"]),
        "seed": record["seed"],
    }
    rows = []
    for name, raw in record["metrics"].items():
        value = _metric_value(raw, name, path)
        if value is not None:
            rows.append({**cell, "metric": str(name), "value": value, "_path": str(path)})
    return rows


def _reject_duplicates(long_df: pd.DataFrame) -> None:
    """Two files for the same cell and seed would silently inflate n, so refuse them."""
    key = ["method", "source", "target", "seed", "metric"]
    dup = long_df[long_df.duplicated(key, keep=False)]
    if dup.empty:
        return
    first = dup.iloc[0]
    same = dup[(dup[key] == first[key]).all(axis=1)]["_path"].tolist()
    raise UsageError(
        f"duplicate records for {first['method']} {first['source']}->{first['target']} "
        f"seed {first['seed']}: {', '.join(same)}"
    )


def _categorical(values: pd.Series, preferred: list[str]) -> pd.Categorical:
    """Ordered categorical: preferred names first (grid order), then the rest naturally sorted."""
    present = set(values.astype(str))
    extra = sorted(present - set(preferred), key=_natural_key)
    return pd.Categorical(values.astype(str), categories=preferred + extra, ordered=True)


def _apply_order(long_df: pd.DataFrame, order: dict[str, list[str]]) -> pd.DataFrame:
    """Make method/source/target/metric ordered categoricals so every sort follows grid order."""
    df = long_df.copy()
    df["method"] = _categorical(df["method"], order.get("method", []))
    domains = list(order.get("domain", []))
    # One shared category list keeps source == target comparisons legal for categoricals.
    shared = pd.concat([df["source"].astype(str), df["target"].astype(str)])
    categories = _categorical(shared, domains).categories
    for column in ("source", "target"):
        df[column] = pd.Categorical(df[column].astype(str), categories=categories, ordered=True)
    # Natural sort keeps a metric next to its variants: accuracy, accuracy@steps=1, f1, ...
    df["metric"] = _categorical(df["metric"], [])
    return df


class RunSelection(type(Path())):
    """A run folder path that also names which settings digest to report (``--digest``); every
    report entry point takes it where it takes a folder."""

    digest: str | None = None

    @classmethod
    def of(cls, folder, digest: str | None) -> RunSelection:
        selection = cls(folder)
        selection.digest = digest
        return selection


def _one_settings(
    folder: Path, files: list[Path], records: list[dict], digest: str | None
) -> tuple[list[Path], list[dict]]:
    """The records of ``digest`` (a run's digest or one method's) when given; else all of them,
    provided each method's records were made with one set of settings. Averaging records made
    with different settings would be meaningless, so it is refused."""
    if digest is not None:
        kept = [
            (f, r)
            for f, r in zip(files, records)
            if digest in (str(r.get("settings_digest")), str(r.get("run_digest")))
        ]
        if not kept:
            known = sorted({str(r.get("run_digest") or r.get("settings_digest")) for r in records})
            raise UsageError(
                f"no record in {folder} has settings digest {digest}; it has {', '.join(known) or 'none'}"
            )
        return [f for f, _ in kept], [r for _, r in kept]
    by_method: dict[str, set[str]] = {}
    for record in records:
        by_method.setdefault(str(record["method"]), set()).add(str(record.get("settings_digest")))
    for method, digests in by_method.items():
        if len(digests) > 1:
            raise UsageError(
                f"{folder} holds records of {method} made with {len(digests)} "
                f"different settings ({', '.join(sorted(digests))}); choose one "
                f"with --digest"
            )
    return files, records


def load_run(run_dir, digest: str | None = None) -> tuple[pd.DataFrame, dict, list[dict]]:
    """Records of a run as (long frame in grid order, manifest, raw records). A sweep folder
    (``hcibench.run.sweep``) gives the records of all its variants, each method named
    ``<method> [<variant>]``. Records of one settings digest only (see ``_one_settings``)."""
    digest = digest or getattr(run_dir, "digest", None)
    run_dir = Path(run_dir)
    hint = f"run `hcibench run --out {run_dir}` first"
    if not run_dir.is_dir():
        raise UsageError(f"run folder {run_dir} does not exist: {hint}")
    variants = read_sweep(run_dir)
    folders = [(run_dir / v, f" [{v}]") for v in variants] if variants else [(run_dir, "")]
    files, records, manifest, methods = [], [], {}, []
    for folder, suffix in folders:
        folder_files = _record_files(folder / "records")
        folder_records = [_read_record(path) for path in folder_files]
        folder_files, folder_records = _one_settings(folder, folder_files, folder_records, digest)
        records += [{**record, "method": f"{record['method']}{suffix}"} for record in folder_records]
        files += folder_files
        folder_manifest = _read_manifest(folder)
        manifest = manifest or folder_manifest
        methods += [f"{m}{suffix}" for m in _names((folder_manifest.get("grid") or {}).get("methods"))]
    rows = [row for record, path in zip(records, files) for row in _long_rows(record, path)]
    if not rows:
        raise UsageError(f"no records in {run_dir}: {hint}")
    if variants and manifest:
        manifest = {**manifest, "grid": {**manifest.get("grid", {}), "methods": methods}}
    long_df = pd.DataFrame(rows)
    _reject_duplicates(long_df)
    long_df = _apply_order(long_df[LONG_COLUMNS], _grid_order(manifest))
    return long_df.reset_index(drop=True), manifest, records


def load_records(run_dir) -> pd.DataFrame:
    """Long frame, one row per record and metric: method, source, target, seed, metric, value.

    method/source/target/metric are ordered categoricals in the manifest's grid order (else
    naturally sorted); source and target share categories, so ``source == target`` works.
    Raises UsageError when the folder does not exist or holds no records.
    """
    return load_run(run_dir)[0]


# --------------------------------------------------------------------------- summarising


def summarise(long_df: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (ddof=1, NaN when n == 1) and n over seeds per cell and metric.

    Columns exactly method, source, target, metric, mean, std, n; rows in grid order when the
    frame came from ``load_records``, otherwise naturally sorted.
    """
    df = long_df
    if not isinstance(df["method"].dtype, pd.CategoricalDtype):
        df = _apply_order(df, {})  # a hand-built frame: fall back to sorted order
    grouped = df.groupby(["method", "source", "target", "metric"], observed=True, sort=True)
    summary = grouped["value"].agg(mean="mean", std=lambda v: v.std(ddof=1), n="count")
    summary = summary.reset_index()
    summary["n"] = summary["n"].astype(int)
    return summary[SUMMARY_COLUMNS]


def _is_in_domain(summary: pd.DataFrame) -> pd.Series:
    """In-domain means trained and tested on the same source, as on Table 2's diagonal."""
    return summary["source"].astype(str) == summary["target"].astype(str)


def _method_means(summary: pd.DataFrame, metric: str, in_domain: bool) -> dict[str, float]:
    """Per method, the unweighted mean over cells of the per-cell means (each cell counts once)."""
    rows = summary[(summary["metric"].astype(str) == metric)]
    rows = rows[_is_in_domain(rows) == in_domain]
    means = rows.groupby("method", observed=True, sort=True)["mean"].mean()
    return {str(method): float(value) for method, value in means.items()}


def off_diagonal_means(summary: pd.DataFrame, metric: str) -> dict[str, float]:
    """Per method, mean over cells with source != target of the cell means (fractions).

    The figure methods are compared by; methods without such cells are left out.
    """
    return _method_means(summary, metric, in_domain=False)


def in_domain_means(summary: pd.DataFrame, metric: str) -> dict[str, float]:
    """Per method, mean over cells with source == target of the cell means (fractions)."""
    return _method_means(summary, metric, in_domain=True)


# --------------------------------------------------------------------------- rounding


def round4(value: float) -> Decimal | None:
    """The one rounding step: a fraction to 4 decimals, half up on its shortest repr.

    Every format derives its numbers from this, which is what makes them agree.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return Decimal(repr(float(value))).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


def percent(value: float) -> str:
    """A fraction as percent with one decimal, computed from the rounded CSV fraction."""
    fraction = round4(value)
    if fraction is None:
        return MISSING
    return f"{(fraction * 100).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP):f}"


def _cell_text(mean: float, std: float) -> str:
    """'39.0 ± 0.4'; just the mean when one seed leaves no spread to report."""
    if round4(std) is None:
        return percent(mean)
    return f"{percent(mean)} {PLUS_MINUS} {percent(std)}"


def fraction_text(value: float) -> str:
    """CSV text for a fraction: 4 decimals, empty when undefined (std of a single seed)."""
    rounded = round4(value)
    return "" if rounded is None else f"{rounded:f}"


def _fraction_json(value: float) -> float | None:
    """JSON number for a fraction: the CSV's rounded value, null when undefined."""
    rounded = round4(value)
    return None if rounded is None else float(rounded)


# --------------------------------------------------------------------------- layout


class Layout:
    """What the three Table-2 layouts share: rows, columns, cell texts, caption, summary."""

    def __init__(self, summary: pd.DataFrame, metric: str, datasets: list[str]):
        rows = summary[summary["metric"].astype(str) == metric]
        self.metric = metric
        self.targets = [str(t) for t in rows["target"].unique().sort_values()]
        self.cells = {
            (str(r.source), str(r.method), str(r.target)): _cell_text(r.mean, r.std)
            for r in rows.itertuples(index=False)
        }
        # Rows grouped by source then method, as in the paper; only pairs with some result.
        pairs = rows[["source", "method"]].drop_duplicates().sort_values(["source", "method"])
        self.groups: dict[str, list[str]] = {}
        for source, method in pairs.itertuples(index=False):
            self.groups.setdefault(str(source), []).append(str(method))
        self.caption = _caption(metric, rows["n"], datasets)
        self.methods = [str(m) for m in rows["method"].unique().sort_values()]
        self.off = off_diagonal_means(summary, metric)
        self.diag = in_domain_means(summary, metric)

    def row(self, source: str, method: str) -> list[tuple[str, bool]]:
        """Cell texts of one row with their in-domain flag; missing cells show a dash."""
        return [
            (self.cells.get((source, method, target), MISSING), source == target) for target in self.targets
        ]

    def summary_rows(self) -> list[tuple[str, str, str]]:
        """Per method: off-diagonal and in-domain mean in percent, with the same rounding."""
        return [
            (m, percent(self.off.get(m, math.nan)), percent(self.diag.get(m, math.nan))) for m in self.methods
        ]


def _caption(metric: str, ns: pd.Series, datasets: list[str]) -> str:
    """States metric, statistic, seed count (or its range) and dataset, so a table stands alone."""
    low, high = int(ns.min()), int(ns.max())
    if low == high:
        seeds = f"over {low} seed{'s' if low != 1 else ''}"
    else:
        seeds = f"over seeds (n per cell varies: {low}{MISSING}{high})"
    dataset = ", ".join(datasets) or "unknown"
    return (
        f"{metric} (%) by source (rows) and target (columns): mean {PLUS_MINUS} sample std "
        f"{seeds}; dataset: {dataset}."
    )


def scoring_note(records: list[dict]) -> str:
    """Says so when targets had labelled samples of classes that the source never trained on,
    which the runner leaves out of per-sample metrics (records' ``info.scoring``)."""
    scorings = [(r.get("info") or {}).get("scoring") or {} for r in records]
    labelled = sum(int(s.get("labelled", 0)) for s in scorings)
    scored = sum(int(s.get("scored", s.get("labelled", 0))) for s in scorings)
    if not any(s.get("unscored_classes") for s in scorings):
        return ""
    return (
        f" Accuracy and F1 score only target samples of classes present in the source's "
        f"training labels ({scored} of {labelled} labelled samples over all cells)."
    )


def data_note(manifest: dict) -> str:
    """Says how many images the dataset left out as unreadable (``on_error=skip``)."""
    skipped = int((manifest.get("data_problems") or {}).get("skipped_images", 0))
    if not skipped:
        return ""
    return (
        f" {skipped} image(s) were left out as unreadable or incomplete (dataset.on_error="
        f"skip; manifest.json 'data_problems' lists them)."
    )


SUMMARY_TITLE = "Per method: mean over cells of the cell means (%)"
SUMMARY_HEADER = ("Method", "Off-diagonal (source ≠ target)", "In-domain (source = target)")


def _render_table(layout: Layout, console) -> str:
    """A rich table; in-domain cells bold with a trailing '*', since plain text loses bold."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("Source")
    table.add_column("Method")
    for target in layout.targets:
        table.add_column(target, justify="right")
    for source, methods in layout.groups.items():
        for i, method in enumerate(methods):
            cells = [
                Text(f"{text}*", style="bold") if diag and text != MISSING else Text(text)
                for text, diag in layout.row(source, method)
            ]
            # Text (not str) so names with brackets are never read as rich markup.
            table.add_row(
                Text(source if i == 0 else ""), Text(method), *cells, end_section=i == len(methods) - 1
            )
    means = Table(box=box.SIMPLE_HEAD, show_edge=False, title=SUMMARY_TITLE, title_justify="left")
    means.add_column(SUMMARY_HEADER[0])
    for header in SUMMARY_HEADER[1:]:
        means.add_column(header, justify="right")
    for row in layout.summary_rows():
        means.add_row(*(Text(cell) for cell in row))
    return render_text(
        [Text(layout.caption + " * in-domain (source = target)."), table, Text(""), means], console
    )


def render_text(renderables, console=None) -> str:
    """Rich renderables printed one after another, returned as the text they make. Without a
    console, a plain, wide and colourless one: stable text for files, pipes and tests."""
    from rich.console import Console

    if console is None:
        console = Console(file=io.StringIO(), width=200, color_system=None, force_terminal=False)
    with console.capture() as capture:
        for renderable in renderables:
            console.print(renderable)
    return capture.get()


def _render_markdown(layout: Layout) -> str:
    """GitHub-flavoured markdown: caption line, Table-2 grid, then the per-method summary."""
    rows = []
    for source, methods in layout.groups.items():
        for i, method in enumerate(methods):
            cells = [
                f"**{text}**" if diag and text != MISSING else text
                for text, diag in layout.row(source, method)
            ]
            rows.append([source if i == 0 else "", method, *cells])
    lines = [f"**Table.** {markdown_cell(layout.caption)} In-domain cells (source = target) in bold.", ""]
    lines += markdown_table(["Source", "Method", *layout.targets], rows, right_from=2)
    lines += ["", f"**{SUMMARY_TITLE}.**", ""]
    summary = [[m, off, diag] for m, off, diag in layout.summary_rows()]
    lines += markdown_table(list(SUMMARY_HEADER), summary, right_from=1)
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_LATEX_SYMBOLS = {PLUS_MINUS: r"$\pm$", MISSING: "--", "≠": r"$\neq$"}


def _tex(text: str) -> str:
    """Escape LaTeX specials (method names have underscores), then spell out ±, – and ≠."""
    escaped = "".join(_LATEX_SPECIAL.get(char, char) for char in text)
    for symbol, command in _LATEX_SYMBOLS.items():
        escaped = escaped.replace(symbol, command)
    return escaped


def _tex_tabular(header: list[str], groups: list[list[list[str]]], left: int) -> list[str]:
    """A booktabs tabular; a \\midrule between groups of rows."""
    spec = "l" * left + "r" * (len(header) - left)
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    for i, group in enumerate(groups):
        if i:
            lines.append(r"\midrule")
        lines += [" & ".join(row) + r" \\" for row in group]
    return lines + [r"\bottomrule", r"\end{tabular}"]


def _render_latex(layout: Layout) -> str:
    """Two LaTeX table floats (needs booktabs): the Table-2 grid and the per-method summary."""
    groups = []
    for source, methods in layout.groups.items():
        group = []
        for i, method in enumerate(methods):
            cells = [
                rf"\textbf{{{_tex(text)}}}" if diag and text != MISSING else _tex(text)
                for text, diag in layout.row(source, method)
            ]
            group.append([_tex(source) if i == 0 else "", _tex(method), *cells])
        groups.append(group)
    caption = _tex(layout.caption + " In-domain cells (source = target) in bold.")
    header = ["Source", "Method", *map(_tex, layout.targets)]
    lines = ["% requires \\usepackage{booktabs}", r"\begin{table}", r"\centering", rf"\caption{{{caption}}}"]
    lines += _tex_tabular(header, groups, left=2) + [r"\end{table}", ""]
    summary = [[[_tex(cell) for cell in row] for row in layout.summary_rows()]]
    lines += [r"\begin{table}", r"\centering", rf"\caption{{{_tex(SUMMARY_TITLE)}.}}"]
    lines += _tex_tabular([_tex(h) for h in SUMMARY_HEADER], summary, left=1)
    lines += [r"\end{table}"]
    return "\n".join(lines) + "\n"


def _render_csv(summary: pd.DataFrame) -> str:
    """The long summary, every metric and variant, fractions to 4 decimals; empty std if n == 1."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    for r in summary.itertuples(index=False):
        writer.writerow(
            [r.method, r.source, r.target, r.metric, fraction_text(r.mean), fraction_text(r.std), r.n]
        )
    return out.getvalue()


def _render_json(summary: pd.DataFrame, metric: str, long_df: pd.DataFrame) -> str:
    """The CSV's numbers as JSON; 'seeds' counts the distinct seeds the run used."""
    rows = [
        {
            "method": str(r.method),
            "source": str(r.source),
            "target": str(r.target),
            "metric": str(r.metric),
            "mean": _fraction_json(r.mean),
            "std": _fraction_json(r.std),
            "n": int(r.n),
        }
        for r in summary.itertuples(index=False)
    ]
    payload = {"metric": metric, "seeds": int(long_df["seed"].nunique()), "rows": rows}
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


def check_metric(summary: pd.DataFrame, metric: str) -> None:
    """A metric the run never recorded is a typo or the wrong run: list what exists."""
    known = [str(m) for m in summary["metric"].unique()]
    if metric not in known:
        raise unknown_name("metric", metric, known)


def render(run_dir, fmt: str = "table", metric: str = "accuracy", console=None) -> str:
    """The run's results as text in ``fmt`` (table, markdown, latex, csv or json).

    table/markdown/latex show ``metric`` in the paper's Table 2 layout plus a per-method summary;
    csv and json hold every metric. ``console`` (rich) sets width and colours of ``table``;
    by default a plain 200-column console is used. Raises UsageError for an unknown format,
    a metric the run lacks (csv ignores ``metric``) or a folder without records.
    """
    if fmt not in FORMATS:
        raise unknown_name("format", fmt, list(FORMATS))
    long_df, manifest, records = load_run(run_dir)
    summary = summarise(long_df)
    if fmt == "csv":
        return _render_csv(summary)
    check_metric(summary, metric)
    if fmt == "json":
        return _render_json(summary, metric, long_df)
    layout = Layout(summary, metric, dataset_names(manifest, records))
    layout.caption += data_note(manifest)
    layout.caption += scoring_note(records)
    if fmt == "markdown":
        return _render_markdown(layout)
    if fmt == "latex":
        return _render_latex(layout)
    return _render_table(layout, console)
