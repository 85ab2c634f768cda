"""Statistics for reports people can trust: spread, relative improvement and paired tests.

Everything starts from the long record frame of ``hcibench.report.tables.load_records`` (one row per
method, source, target, seed and metric) and its per-cell summary (``report.summarise``: mean,
sample std and n over seeds).

* Relative improvement of a method over a baseline (by default the run's method whose plugin
  declares ``baseline``, else its first method), per cell on the seed
  means: ``(method_mean - base_mean) / base_mean * 100``. Over the off-diagonal cells (source !=
  target) it is summarised as mean ± sample std over cells. The CODA paper's "232.6 % ± 63.6"
  is the same average written as a *ratio* to the baseline, ``100 + improvement``: on the
  paper's own Table 2 the improvement of CODA is +132.6 % ± 63.6 over 20 cells.
* Paired tests of a method against the baseline: within a cell across seeds paired by seed
  (paired t-test, effect size Cohen's d_z = mean difference / sd of differences); across the
  off-diagonal cells paired by cell on the seed means (Wilcoxon signed-rank and paired t).
* Holm's step-down correction within each family of tests, a family being one question asked
  of every method against the baseline: the per-cell t-tests ("does the method differ in this
  cell?"), the off-diagonal Wilcoxon tests and the off-diagonal t-tests ("does the method
  differ across cells?"). The across-cell families are the k - 1 comparisons with a control
  that Demšar (JMLR 2006) corrects with Holm. Pooling all of them would make a method-level
  claim harder the more cells a grid has, however strong its evidence, and would count the
  Wilcoxon and the t-test of one hypothesis as two.

Edge cases are decided here rather than left to scipy: identical samples (all differences
zero) give p = 1 (scipy returns NaN), fewer than two pairs or equal non-zero differences
give p = NaN with a note.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from hcibench.errors import UsageError, unknown_name
from hcibench.report.formats import json_default, markdown_table, rich_table

ARROW = "→"
OFF_DIAGONAL = "off-diagonal"
CELL_FAMILY = "cell"
# Differences this close to zero count as zero: exact copies of a run differ by nothing.
_ZERO = 1e-12

COMPARISON_COLUMNS = [
    "method",
    "baseline",
    "scope",
    "source",
    "target",
    "test",
    "n",
    "mean_diff",
    "sd_diff",
    "d_z",
    "statistic",
    "p",
    "p_holm",
    "family",
    "rel_improvement",
    "rel_improvement_std",
    "note",
]
IMPROVEMENT_COLUMNS = ["method", "baseline", "n_cells", "mean", "std", "ratio_mean"]


# --------------------------------------------------------------------------- tests


@dataclass
class PairedResult:
    """One paired comparison: ``mean_diff`` is a - b; ``d_z`` = mean_diff / sd_diff."""

    test: str
    n: int
    mean_diff: float
    sd_diff: float
    d_z: float
    statistic: float
    p: float
    note: str = ""


def _differences(a, b) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples need two 1-d arrays of equal length, got {a.shape} and {b.shape}")
    return a - b


def _describe(diff: np.ndarray) -> tuple[float, float, float]:
    """Mean and sample sd of the differences, and d_z (0 when all are zero)."""
    n = len(diff)
    mean = float(diff.mean()) if n else math.nan
    sd = float(diff.std(ddof=1)) if n >= 2 else math.nan
    if n < 2:
        return mean, sd, math.nan
    if sd <= _ZERO:
        d_z = 0.0 if abs(mean) <= _ZERO else math.copysign(math.inf, mean)
    else:
        d_z = mean / sd
    return mean, sd, d_z


def paired_t(a, b) -> PairedResult:
    """Two-sided paired t-test of a against b (scipy.stats.ttest_rel), with d_z.

    All differences zero: p = 1. Equal non-zero differences (sd 0; common with accuracies
    of small test sets): p = NaN with a note, where scipy would claim p = 0 for t = inf.
    Fewer than 2 pairs: p = NaN.
    """
    diff = _differences(a, b)
    n = len(diff)
    mean, sd, d_z = _describe(diff)
    if n < 2:
        return PairedResult("paired t", n, mean, sd, d_z, math.nan, math.nan, "n < 2: no test")
    if np.all(np.abs(diff) <= _ZERO):
        return PairedResult("paired t", n, 0.0, 0.0, 0.0, 0.0, 1.0, "identical: all differences are zero")
    if sd <= _ZERO:
        # scipy says t = inf, p = 0; from a handful of seeds that is no evidence worth a star.
        return PairedResult(
            "paired t",
            n,
            mean,
            sd,
            d_z,
            math.copysign(math.inf, mean),
            math.nan,
            "all differences equal (sd 0): t-test undefined",
        )
    result = stats.ttest_rel(np.asarray(a, float), np.asarray(b, float))
    return PairedResult("paired t", n, mean, sd, d_z, float(result.statistic), float(result.pvalue))


def wilcoxon(a, b) -> PairedResult:
    """Two-sided Wilcoxon signed-rank test of a against b (zero differences dropped), with d_z.

    With few non-zero differences the test cannot reach small p-values (n = 5: p >= 0.0625);
    the note says so.
    """
    diff = _differences(a, b)
    n = len(diff)
    mean, sd, d_z = _describe(diff)
    if n < 2:
        return PairedResult("Wilcoxon", n, mean, sd, d_z, math.nan, math.nan, "n < 2: no test")
    nonzero = int(np.sum(np.abs(diff) > _ZERO))
    if nonzero == 0:
        return PairedResult("Wilcoxon", n, 0.0, 0.0, 0.0, 0.0, 1.0, "identical: all differences are zero")
    notes = []
    if nonzero < n:
        notes.append(f"{n - nonzero} zero difference{'s' if n - nonzero > 1 else ''} dropped")
    floor = 2.0 / 2**nonzero
    if floor > 0.01:
        notes.append(f"{nonzero} non-zero pairs: p cannot go below {floor:.3g}")
    diff = np.where(np.abs(diff) <= _ZERO, 0.0, diff)
    result = stats.wilcoxon(diff, zero_method="wilcox")
    return PairedResult(
        "Wilcoxon", n, mean, sd, d_z, float(result.statistic), float(result.pvalue), "; ".join(notes)
    )


def holm(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN entries stay NaN and do not count in m.

    Sorted ascending p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    """
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    finite = np.flatnonzero(~np.isnan(p))
    m = len(finite)
    if m == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


# --------------------------------------------------------------------------- improvement


def _metric_rows(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    rows = frame[frame["metric"].astype(str) == metric]
    if rows.empty:
        known = sorted({str(m) for m in frame["metric"].unique()})
        raise unknown_name("metric", metric, known)
    return rows


def default_baseline(methods: list[str]) -> str:
    """The method of ``methods`` that the others are compared with when no baseline is named:
    the first whose plugin declares itself a baseline (``Method.baseline``), else the first."""
    from hcibench import plugins

    registered = plugins.methods().items
    for name in methods:
        if getattr(registered.get(name), "baseline", False):
            return name
    return methods[0]


def _resolve_baseline(frame: pd.DataFrame, baseline: str | None) -> str:
    methods = [str(m) for m in frame["method"].unique()]
    if baseline is None and methods:
        return default_baseline(methods)
    if baseline not in methods:
        raise unknown_name("baseline method", baseline, methods)
    return baseline


def _cell_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Plain-string copy (categoricals break merges across methods)."""
    out = frame.copy()
    for column in ("method", "source", "target", "metric"):
        out[column] = out[column].astype(str)
    return out


def relative_improvements(
    summary: pd.DataFrame, metric: str = "accuracy", baseline: str | None = None
) -> pd.DataFrame:
    """Per method (baseline excluded) and cell present for both: the seed means and
    ``improvement = (mean - base_mean) / base_mean * 100`` (NaN when the baseline is 0).

    ``summary`` is any frame with method, source, target, metric and mean columns (the output
    of ``report.summarise`` or a paper table). Rows keep the summary's order.
    """
    rows = _metric_rows(summary, metric)
    baseline = _resolve_baseline(rows, baseline)
    cells = _cell_frame(rows)
    base = cells[cells["method"] == baseline][["source", "target", "mean"]]
    others = cells[cells["method"] != baseline][["method", "source", "target", "mean"]]
    merged = others.merge(base.rename(columns={"mean": "base_mean"}), on=["source", "target"])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (merged["mean"] - merged["base_mean"]) / merged["base_mean"] * 100
    merged["improvement"] = ratio.where(merged["base_mean"] != 0)
    merged["in_domain"] = merged["source"] == merged["target"]
    return merged.reset_index(drop=True)


def improvement_summary(improvements: pd.DataFrame) -> pd.DataFrame:
    """Per method over its off-diagonal cells: n_cells, mean and sample std of the per-cell
    improvement (%), and ``ratio_mean`` = 100 + mean (the paper's way of writing it)."""
    off = improvements[~improvements["in_domain"]].dropna(subset=["improvement"])
    rows = []
    for method in dict.fromkeys(improvements["method"]):
        values = off.loc[off["method"] == method, "improvement"].to_numpy(float)
        mean = float(values.mean()) if len(values) else math.nan
        std = float(values.std(ddof=1)) if len(values) >= 2 else math.nan
        rows.append(
            {"method": method, "n_cells": len(values), "mean": mean, "std": std, "ratio_mean": 100 + mean}
        )
    frame = pd.DataFrame(rows, columns=[c for c in IMPROVEMENT_COLUMNS if c != "baseline"])
    return frame


# --------------------------------------------------------------------------- comparisons


def compare(long_df: pd.DataFrame, metric: str = "accuracy", baseline: str | None = None) -> pd.DataFrame:
    """Every paired comparison of each method with ``baseline`` on ``metric``.

    Per cell present for both (in-domain included): paired t across seeds paired by seed.
    Per method over the off-diagonal cells present for both, paired by cell on the seed
    means: Wilcoxon signed-rank and paired t. ``p_holm`` is Holm-adjusted within the row's
    ``family`` (``CELL_FAMILY`` or the off-diagonal test's name).
    Columns: ``COMPARISON_COLUMNS``; mean_diff/sd_diff in the metric's units (method - base).
    """
    rows = _metric_rows(long_df, metric)
    baseline = _resolve_baseline(rows, baseline)
    from hcibench.report.tables import summarise

    summary = summarise(rows)
    improvements = relative_improvements(summary, metric, baseline)
    per_cell = {(r.method, r.source, r.target): r.improvement for r in improvements.itertuples(index=False)}
    totals = improvement_summary(improvements).set_index("method")
    values = _cell_frame(rows)
    base = values[values["method"] == baseline]
    methods = [str(m) for m in summary["method"].unique() if str(m) != baseline]
    cell_order = [
        (str(r.source), str(r.target))
        for r in summary[["source", "target"]].drop_duplicates().itertuples(index=False)
    ]
    out = []
    for method in methods:
        mine = values[values["method"] == method]
        for source, target in cell_order:
            a = mine[(mine["source"] == source) & (mine["target"] == target)]
            b = base[(base["source"] == source) & (base["target"] == target)]
            if a.empty or b.empty:
                continue
            paired = a[["seed", "value"]].merge(b[["seed", "value"]], on="seed", suffixes=("", "_base"))
            result = paired_t(paired["value"], paired["value_base"])
            unpaired = len(a) + len(b) - 2 * len(paired)
            if unpaired:
                result.note = "; ".join(
                    filter(
                        None,
                        [
                            result.note,
                            f"{unpaired} seed record{'s' if unpaired > 1 else ''} without a partner left out",
                        ],
                    )
                )
            out.append(
                _row(
                    method,
                    baseline,
                    f"{source}{ARROW}{target}",
                    source,
                    target,
                    result,
                    per_cell.get((method, source, target), math.nan),
                    math.nan,
                )
            )
        off = improvements[(improvements["method"] == method) & ~improvements["in_domain"]]
        if off.empty:
            continue
        scope = f"{OFF_DIAGONAL} ({len(off)} cells)"
        total = totals.loc[method]
        for test in (wilcoxon, paired_t):
            result = test(off["mean"].to_numpy(float), off["base_mean"].to_numpy(float))
            out.append(_row(method, baseline, scope, "", "", result, total["mean"], total["std"]))
    frame = pd.DataFrame(out, columns=COMPARISON_COLUMNS)
    for _, family_rows in frame.groupby("family", sort=False):
        frame.loc[family_rows.index, "p_holm"] = holm(family_rows["p"].to_numpy(float))
    return frame


def holm_families(comparisons: pd.DataFrame) -> str:
    """The Holm families of ``compare``'s rows in words, with the number of tests in each."""
    counts = comparisons[comparisons["p"].notna()].groupby("family", sort=False).size()
    words = {CELL_FAMILY: "per-cell t-tests"}
    parts = [f"{n} {words.get(family, family + ' tests')}" for family, n in counts.items()]
    return ", ".join(parts) if parts else "no tests"


def _row(method, baseline, scope, source, target, result: PairedResult, rel, rel_std) -> dict:
    row = {
        "method": method,
        "baseline": baseline,
        "scope": scope,
        "source": source,
        "target": target,
        **asdict(result),
        "p_holm": math.nan,
        "family": CELL_FAMILY if source else f"{OFF_DIAGONAL} {result.test}",
        "rel_improvement": rel,
        "rel_improvement_std": rel_std,
    }
    return {column: row[column] for column in COMPARISON_COLUMNS}


# --------------------------------------------------------------------------- rendering

STATS_FORMATS = ("table", "markdown", "csv", "json")
COMPARISON_HEADER = [
    "Method",
    "Cells",
    "Test",
    "n",
    "Δ mean (pp)",
    "d_z",
    "p",
    "p (Holm)",
    "Rel. impr. (%)",
    "Note",
]
IMPROVEMENT_HEADER = ["Method", "Off-diagonal cells", "Rel. improvement (%)", "Ratio to baseline (%)"]


def _num(value: float, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:+.{digits}f}" if digits >= 0 else f"{value}"


def format_p(p: float) -> str:
    """p with 3 significant digits; tiny values in scientific notation."""
    if p is None or math.isnan(p):
        return "–"
    if p == 0:
        return "0"
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.2e}"


def comparison_rows(comparisons: pd.DataFrame, scale: float = 100.0) -> list[list[str]]:
    """Display rows for ``COMPARISON_HEADER``: differences times ``scale`` (fractions -> pp)."""
    rows = []
    for r in comparisons.itertuples(index=False):
        rel = _num(r.rel_improvement, 1)
        if not math.isnan(r.rel_improvement_std):
            rel = f"{rel} ± {r.rel_improvement_std:.1f}"
        d_z = _num(r.d_z, 2).lstrip("+") if not math.isnan(r.d_z) else "–"
        rows.append(
            [
                r.method,
                r.scope,
                r.test,
                str(r.n),
                _num(r.mean_diff * scale, 2),
                d_z,
                format_p(r.p),
                format_p(r.p_holm),
                rel,
                r.note,
            ]
        )
    return rows


def improvement_rows(summary: pd.DataFrame) -> list[list[str]]:
    rows = []
    for r in summary.itertuples(index=False):
        spread = "" if math.isnan(r.std) else f" ± {r.std:.1f}"
        ratio = "–" if math.isnan(r.ratio_mean) else f"{r.ratio_mean:.1f}{spread}"
        rows.append([r.method, str(r.n_cells), f"{_num(r.mean, 1)}{spread}", ratio])
    return rows


def stats_caption(metric: str, baseline: str, seeds: str, families: str) -> str:
    """``families``: ``holm_families`` of the comparisons the caption describes."""
    return (
        f"{metric}: each method against the baseline '{baseline}'. Within a cell: paired "
        f"t-test across seeds paired by seed ({seeds}); over the off-diagonal cells (source ≠ "
        f"target): Wilcoxon signed-rank and paired t on the per-cell seed means, paired by cell. "
        f"Δ = method - baseline in percentage points; d_z = mean Δ / sd Δ; p two-sided; Holm "
        f"correction within each family of tests ({families}). Rel. impr. = (method - baseline) / "
        f"baseline × 100 per cell; off-diagonal rows: mean ± sample std over cells."
    )


def _fraction(value: float, digits: int = 6) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{round(float(value), digits)}"


def _json_number(value):
    """NaN -> null; an infinite d_z or t -> "inf" / "-inf" (JSON has no infinity)."""
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return float(value)
    return value


def render_stats(
    run_dir, fmt: str = "table", metric: str = "accuracy", baseline: str | None = None, console=None
) -> str:
    """The comparisons table and the relative-improvement summary of a run as text.

    ``fmt``: table, markdown, csv (the comparisons, one row per test) or json (both).
    """
    from hcibench.report.tables import load_records

    if fmt not in STATS_FORMATS:
        raise UsageError(f"--stats supports --format {', '.join(STATS_FORMATS)}, not '{fmt}'")
    long_df = load_records(run_dir)
    baseline = _resolve_baseline(_metric_rows(long_df, metric), baseline)
    comparisons = compare(long_df, metric, baseline)
    if comparisons.empty:
        raise UsageError(
            f"nothing to compare: no method besides '{baseline}' shares a cell "
            f"with it (use --baseline to pick another method)"
        )
    from hcibench.report.tables import summarise

    summary = summarise(_metric_rows(long_df, metric))
    totals = improvement_summary(relative_improvements(summary, metric, baseline))
    if fmt == "csv":
        return comparisons_csv(comparisons)
    if fmt == "json":
        payload = {
            "metric": metric,
            "baseline": baseline,
            "comparisons": [
                {k: _json_number(v) for k, v in row.items()} for row in comparisons.to_dict(orient="records")
            ],
            "relative_improvement": [
                {"baseline": baseline, **{k: _json_number(v) for k, v in row.items()}}
                for row in totals.to_dict(orient="records")
            ],
        }
        return json.dumps(payload, indent=2, ensure_ascii=False, default=json_default) + "\n"
    ns = summary["n"]
    seeds = f"n = {int(ns.min())}" if ns.min() == ns.max() else f"n = {int(ns.min())}–{int(ns.max())}"
    caption = stats_caption(metric, baseline, seeds, holm_families(comparisons))
    improvement_title = (
        f"Relative improvement over '{baseline}' on the off-diagonal cells: mean ± sample std over cells (%)"
    )
    if fmt == "markdown":
        lines = [f"**Paired comparisons.** {caption}", ""]
        lines += markdown_table(COMPARISON_HEADER, comparison_rows(comparisons), 3, 9)
        lines += ["", f"**{improvement_title}.**", ""]
        lines += markdown_table(IMPROVEMENT_HEADER, improvement_rows(totals), 1)
        return "\n".join(lines) + "\n"
    from rich.text import Text

    from hcibench.report.tables import render_text

    return render_text(
        [
            Text(caption),
            rich_table(COMPARISON_HEADER, comparison_rows(comparisons), None, 3, 9),
            Text(""),
            rich_table(IMPROVEMENT_HEADER, improvement_rows(totals), improvement_title, 1),
        ],
        console,
    )


def comparisons_csv(comparisons: pd.DataFrame) -> str:
    """One row per test, ``COMPARISON_COLUMNS``; numbers to 6 decimals, empty when undefined."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COMPARISON_COLUMNS)
    for row in comparisons.itertuples(index=False):
        writer.writerow([_fraction(value) if isinstance(value, float) else value for value in row])
    return out.getvalue()
