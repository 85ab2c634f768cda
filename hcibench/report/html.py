"""One self-contained HTML report of a run: ``hcibench report RUN --format html``.

Tables (the Table-2 layout, the per-method summary, the paired comparisons with the baseline,
the paper side by side, every metric as in the CSV) and the figures of ``hcibench.report.plots``
embedded as base64 PNG. Styles are inline; nothing is fetched: no external CSS, fonts,
scripts or images, so the file opens offline and can be mailed or archived as it is.

The numbers come from the same summary and rounding as ``report.render``: a percent shown here
is the CSV fraction times 100, rounded half up to one decimal.
"""

from __future__ import annotations

import base64
import html
from datetime import UTC, datetime
from pathlib import Path

from hcibench import __version__

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #1b1b1b; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #e2e2e2; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.diag { font-weight: bold; background: #f7f7e8; }
tr.group td { border-top: 2px solid #bbb; }
caption { caption-side: top; text-align: left; font-size: 0.9em; color: #444; padding-bottom: 0.4em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #444; }
.meta { color: #555; font-size: 0.9em; } .note { color: #555; font-size: 0.85em; }
details summary { cursor: pointer; margin: 0.5em 0; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def table(
    header: list[str],
    rows: list[list[str]],
    caption: str = "",
    numeric_from: int = 0,
    numeric_to: int | None = None,
    classes: list[list[str]] | None = None,
    row_classes: list[str] | None = None,
) -> str:
    """An HTML table; cells with index in [numeric_from, numeric_to) are right-aligned."""
    numeric_to = len(header) if numeric_to is None else numeric_to
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{_e(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead>")
    out.append("<tbody>")
    for i, row in enumerate(rows):
        row_class = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = []
        for j, cell in enumerate(row):
            names = ["num"] if numeric_from <= j < numeric_to else []
            if classes and classes[i][j]:
                names.append(classes[i][j])
            attr = f' class="{" ".join(names)}"' if names else ""
            cells.append(f"<td{attr}>{_e(cell)}</td>")
        out.append(f"<tr{row_class}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _table2(layout) -> str:
    """The Table-2 layout: rows grouped by source, in-domain cells bold."""
    from hcibench.report.tables import MISSING, SUMMARY_HEADER, SUMMARY_TITLE

    rows, classes, groups = [], [], []
    for source, methods in layout.groups.items():
        for i, method in enumerate(methods):
            cells = layout.row(source, method)
            rows.append([source if i == 0 else "", method, *[text for text, _ in cells]])
            classes.append(["", "", *["diag" if diag and text != MISSING else "" for text, diag in cells]])
            groups.append("group" if i == 0 else "")
    main = table(
        ["Source", "Method", *layout.targets],
        rows,
        layout.caption + " In-domain cells (source = target) in bold.",
        numeric_from=2,
        classes=classes,
        row_classes=groups,
    )
    summary = table(
        list(SUMMARY_HEADER), [list(r) for r in layout.summary_rows()], SUMMARY_TITLE + ".", numeric_from=1
    )
    return main + "\n" + summary


def _all_metrics(summary) -> str:
    """Every metric and variant as in ``report --format csv`` (fractions, 4 decimals)."""
    from hcibench.report.tables import SUMMARY_COLUMNS, fraction_text

    rows = [
        [
            str(r.method),
            str(r.source),
            str(r.target),
            str(r.metric),
            fraction_text(r.mean),
            fraction_text(r.std),
            str(r.n),
        ]
        for r in summary.itertuples(index=False)
    ]
    metrics_table = table(
        SUMMARY_COLUMNS,
        rows,
        "Every recorded metric: mean, sample std and n over "
        "seeds, as fractions (the numbers of report --format csv).",
        numeric_from=4,
    )
    return f"<details><summary>All metrics ({len(rows)} rows)</summary>\n{metrics_table}\n</details>"


def _stats_section(long_df, metric: str, baseline: str | None) -> str:
    from hcibench.report.statistics import (
        COMPARISON_HEADER,
        IMPROVEMENT_HEADER,
        compare,
        comparison_rows,
        default_baseline,
        holm_families,
        improvement_rows,
        improvement_summary,
        relative_improvements,
        stats_caption,
    )
    from hcibench.report.tables import summarise

    methods = [str(m) for m in long_df["method"].unique()]
    baseline = baseline or default_baseline(methods)
    if baseline not in methods:
        return (
            f'<h2>Statistics</h2><p class="note">No paired comparisons: the baseline '
            f"method '{_e(baseline)}' is not in this run.</p>"
        )
    if len(methods) < 2:
        return ""
    rows = long_df[long_df["metric"].astype(str) == metric]
    comparisons = compare(long_df, metric, baseline)
    totals = improvement_summary(relative_improvements(summarise(rows), metric, baseline))
    ns = summarise(rows)["n"]
    seeds = f"n = {int(ns.min())}" if ns.min() == ns.max() else f"n = {int(ns.min())}–{int(ns.max())}"
    caption = stats_caption(metric, baseline, seeds, holm_families(comparisons))
    improvement = table(
        IMPROVEMENT_HEADER,
        improvement_rows(totals),
        f"Relative improvement over '{baseline}' on the off-diagonal cells: "
        f"mean ± sample std over cells (%). The ratio column is 100 + the "
        f"improvement, the form of the paper's '232.6 % ± 63.6'.",
        numeric_from=1,
    )
    comparisons_table = table(
        COMPARISON_HEADER, comparison_rows(comparisons), caption, numeric_from=3, numeric_to=9
    )
    return f"<h2>Statistics against {_e(baseline)}</h2>\n{improvement}\n{comparisons_table}"


def _figures(run_dir, metric: str) -> str:
    from hcibench.report.plots import build_plots

    parts = []
    for plot in build_plots(run_dir, metric):
        data = base64.b64encode(plot.png()).decode("ascii")
        parts.append(
            f'<figure id="fig-{_e(plot.name)}"><img alt="{_e(plot.caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{_e(plot.caption)}'
            f"</figcaption></figure>"
        )
    return "<h2>Figures</h2>\n" + "\n".join(parts) if parts else ""


def _caption_notes(manifest: dict, records: list[dict]) -> str:
    """The notes ``report.render`` appends to the Table-2 caption (left-out images, classes
    not scored), so the HTML caption says what the text formats say."""
    from hcibench.report import tables as report

    notes = ""
    if hasattr(report, "data_note"):
        notes += report.data_note(manifest)
    if hasattr(report, "scoring_note"):
        notes += report.scoring_note(records)
    return notes


def render_html(
    run_dir, metric: str = "accuracy", baseline: str | None = None, figures: bool = True, extra_sections=()
) -> str:
    """The whole report as one HTML document (a string). ``extra_sections``: functions
    ``(run_dir, metric) -> HTML`` whose sections follow the statistics (the command adds the
    comparison with the CODA paper, ``hcibench.paper.comparison.html_section``)."""
    from hcibench.report.tables import Layout, check_metric, dataset_names, load_run, summarise

    run_dir = Path(run_dir)
    long_df, manifest, records = load_run(run_dir)
    summary = summarise(long_df)
    check_metric(summary, metric)
    datasets = dataset_names(manifest, records)
    layout = Layout(summary, metric, datasets)
    layout.caption += _caption_notes(manifest, records)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    seeds = sorted({str(s) for s in long_df["seed"].unique()})
    meta = (
        f"Run folder <code>{_e(run_dir)}</code>; dataset {_e(', '.join(datasets) or 'unknown')}; "
        f"preset {_e(manifest.get('preset', 'unknown'))}; seeds {_e(', '.join(seeds))}; "
        f"{len(records)} records. Made by hcibench {_e(__version__)} on {_e(stamp)}."
    )
    sections = [
        f"<h2>{_e(metric)} by source and target</h2>\n{_table2(layout)}",
        _stats_section(long_df, metric, baseline),
        *(section(run_dir, metric) for section in extra_sections),
        _figures(run_dir, metric) if figures else "",
        f"<h2>All metrics</h2>\n{_all_metrics(summary)}",
    ]
    body = "\n".join(section for section in sections if section)
    title = f"hcibench report: {run_dir.name}"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f'<h1>{_e(title)}</h1>\n<p class="meta">{meta}</p>\n{body}\n</body>\n</html>\n'
    )
