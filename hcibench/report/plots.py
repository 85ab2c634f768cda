"""Figures of a run: ``hcibench report RUN --plots OUTDIR`` (PNG and SVG files).

* ``heatmap-<method>``: source × target mean (± std) per method, one shared colour scale;
* ``out-of-domain``: grouped bars of each method's out-of-domain score per target, one panel
  per source, error bars = sample std over seeds (the paper's Figure 7);
* ``granularity``: adaptation per source, batch or plate, scored on the part or on the whole
  target (the paper's Figure 4), when the records carry ``info.granularity`` and at least two
  settings can be compared; skipped otherwise;
* ``ttt-steps``: score against the number of test-time training steps, when the records have
  ``<metric>@steps=k`` metrics;
* ``adaptation``: the label-free diagnostics of step 3 by epoch (one panel each: DINO loss,
  teacher target entropy and prototype usage, weight movement, CKA to the step-1 FE, share of
  changed predictions, predicted-class spread), and on the last panel the oracle target score
  (``<metric>@adapt_epoch=k``), when the records carry them.

Figures are built with matplotlib's object API on the Agg canvas: no pyplot state, no display.
Values are shown in percent of the fractions in the records.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hcibench.errors import UsageError

PLOT_FORMATS = ("png", "svg")
DPI = 110


@dataclass
class Plot:
    """A finished figure with the file stem it is saved under and a one-line caption."""

    name: str
    figure: Figure
    caption: str

    def png(self) -> bytes:
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
        return buffer.getvalue()

    def save(self, folder: Path, formats=PLOT_FORMATS) -> list[Path]:
        paths = []
        for fmt in formats:
            path = folder / f"{self.name}.{fmt}"
            self.figure.savefig(path, format=fmt, dpi=DPI, bbox_inches="tight")
            paths.append(path)
        return paths


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "plot"


def _seeds_text(ns) -> str:
    ns = [int(n) for n in ns]
    if not ns:
        return "no seeds"
    low, high = min(ns), max(ns)
    if low == high:
        return f"n = {low} seed{'s' if low != 1 else ''}"
    return f"n = {low}–{high} seeds per cell"


def _colours(methods: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors if len(methods) <= 10 else colormaps["tab20"].colors
    return {method: palette[i % len(palette)] for i, method in enumerate(methods)}


def _metric_summary(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    rows = summary[summary["metric"].astype(str) == metric].copy()
    for column in ("method", "source", "target"):
        rows[column] = rows[column].astype(str)
    return rows


# --------------------------------------------------------------------------- heatmaps


def heatmaps(summary: pd.DataFrame, metric: str, sources, targets, methods) -> list[Plot]:
    """One source × target heatmap per method, annotated with mean ± std (%)."""
    rows = _metric_summary(summary, metric)
    if rows.empty:
        return []
    vmax = max(float(rows["mean"].max()) * 100, 1e-9)
    plots = []
    for method in methods:
        mine = rows[rows["method"] == method]
        if mine.empty:
            continue
        srcs = [s for s in sources if s in set(mine["source"])]
        tgts = [t for t in targets if t in set(mine["target"])]
        grid = np.full((len(srcs), len(tgts)), np.nan)
        spread = np.full_like(grid, np.nan)
        for r in mine.itertuples(index=False):
            grid[srcs.index(r.source), tgts.index(r.target)] = r.mean * 100
            spread[srcs.index(r.source), tgts.index(r.target)] = r.std * 100
        figure = _figure(1.1 * len(tgts) + 2.4, 0.75 * len(srcs) + 1.6)
        axes = figure.add_subplot()
        image = axes.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        for i in range(len(srcs)):
            for j in range(len(tgts)):
                if np.isnan(grid[i, j]):
                    continue
                text = f"{grid[i, j]:.1f}"
                if not np.isnan(spread[i, j]):
                    text += f"\n± {spread[i, j]:.1f}"
                dark = grid[i, j] < 0.6 * vmax
                axes.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else "black",
                    fontweight="bold" if srcs[i] == tgts[j] else "normal",
                )
        axes.set_xticks(range(len(tgts)), tgts)
        axes.set_yticks(range(len(srcs)), srcs)
        axes.set_xlabel("Target source (tested on)")
        axes.set_ylabel("Source (trained on)")
        seeds = _seeds_text(mine["n"])
        axes.set_title(f"{method}: {metric} (%), mean ± std, {seeds}", fontsize=10)
        figure.colorbar(image, ax=axes, label=f"{metric} (%)")
        caption = (
            f"{method}: {metric} by source (rows) and target (columns), mean ± sample "
            f"std over seeds ({seeds}); in-domain cells in bold."
        )
        plots.append(Plot(f"heatmap-{_safe(method)}", figure, caption))
    return plots


# --------------------------------------------------------------------------- Figure 7


def out_of_domain_bars(summary: pd.DataFrame, metric: str, sources, targets, methods) -> Plot | None:
    """Grouped bars (the paper's Figure 7): per source a panel, per target a group of bars,
    one bar per method, error bars = sample std over seeds."""
    rows = _metric_summary(summary, metric)
    rows = rows[rows["source"] != rows["target"]]
    if rows.empty:
        return None
    panels = [s for s in sources if s in set(rows["source"])]
    colours = _colours(methods)
    present = [m for m in methods if m in set(rows["method"])]
    figure = _figure(max(6.0, 1.2 * len(targets) + 0.5 * len(present)), 2.6 * len(panels) + 0.8)
    axes_list = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    width = 0.8 / max(1, len(present))
    top = float((rows["mean"] + rows["std"].fillna(0)).max()) * 100
    for axes, source in zip(axes_list, panels):
        mine = rows[rows["source"] == source]
        tgts = [t for t in targets if t in set(mine["target"])]
        for k, method in enumerate(present):
            cells = mine[mine["method"] == method].set_index("target")
            x = [i + (k - (len(present) - 1) / 2) * width for i, t in enumerate(tgts) if t in cells.index]
            y = [cells.loc[t, "mean"] * 100 for t in tgts if t in cells.index]
            err = [
                0 if math.isnan(cells.loc[t, "std"]) else cells.loc[t, "std"] * 100
                for t in tgts
                if t in cells.index
            ]
            axes.bar(
                x,
                y,
                width,
                yerr=err,
                capsize=2,
                color=colours[method],
                label=method,
                error_kw={"elinewidth": 0.8},
            )
        axes.set_xticks(range(len(tgts)), [f"{source}→{t}" for t in tgts])
        axes.set_ylabel(f"{metric} (%)")
        axes.set_ylim(0, top * 1.1 + 1e-9)
        axes.set_title(f"Trained on {source}", fontsize=10, loc="left")
        axes.grid(axis="y", alpha=0.3)
    handles, labels = axes_list[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), title="Method")
    seeds = _seeds_text(rows["n"])
    figure.suptitle(f"Out-of-domain {metric} (%) per target: mean ± std over seeds ({seeds})", fontsize=11)
    caption = (
        f"Out-of-domain {metric} (source ≠ target) per method and target, one panel "
        f"per training source; error bars: sample std over seeds ({seeds})."
    )
    return Plot("out-of-domain", figure, caption)


# --------------------------------------------------------------------------- Figure 4


def _granularity_rows(records: list[dict], metric: str) -> pd.DataFrame:
    """One row per off-diagonal record and setting: (method, setting, cell, seed, value)."""
    rows = []
    for record in records:
        if record.get("source") == record.get("target"):
            continue
        metrics = record.get("metrics") or {}
        info = record.get("info") or {}
        granularity = info.get("granularity")
        base = {
            "method": str(record["method"]),
            "cell": f"{record['source']}→{record['target']}",
            "seed": record["seed"],
        }
        value = metrics.get(metric)
        if granularity is None:
            if isinstance(value, (int, float)):
                rows.append({**base, "setting": "no adaptation", "value": float(value)})
            continue
        if isinstance(value, (int, float)):
            label = "whole source" if granularity == "source" else f"each {granularity}, scored on it"
            rows.append({**base, "setting": label, "value": float(value)})
        prefix = f"{metric}@{granularity}="
        parts = [float(v) for k, v in metrics.items() if k.startswith(prefix) and isinstance(v, (int, float))]
        if parts:  # eval_on == "full": each part's FE scored on the whole target
            rows.append(
                {
                    **base,
                    "setting": f"single {granularity}, scored on whole target",
                    "value": float(np.mean(parts)),
                }
            )
    return pd.DataFrame(rows, columns=["method", "setting", "cell", "seed", "value"])


def granularity_plot(records: list[dict], metric: str, methods) -> Plot | None:
    """Adaptation granularity (Figure 4): bars per (method, setting), grouped by cell.

    Drawn only when records carry ``info.granularity`` and there are at least two adapted
    settings to compare (records of several runs, or a batch/plate run scored on the whole
    target as well); a run that adapted to whole sources only is skipped."""
    rows = _granularity_rows(records, metric)
    adapted = rows[rows["setting"] != "no adaptation"]
    if adapted["setting"].nunique() < 2:  # one granularity only: nothing to compare
        return None
    per_seed = rows.groupby(["method", "setting", "cell", "seed"], sort=False)["value"].mean()
    stats = per_seed.groupby(["method", "setting", "cell"], sort=False).agg(
        ["mean", lambda v: v.std(ddof=1), "count"]
    )
    stats.columns = ["mean", "std", "n"]
    stats = stats.reset_index()
    bars = list(dict.fromkeys(zip(stats["method"], stats["setting"])))
    order = {m: i for i, m in enumerate(methods)}
    bars.sort(key=lambda b: (order.get(b[0], len(order)), b[1]))
    cells = list(dict.fromkeys(stats["cell"]))
    colours = _colours([f"{m} · {s}" for m, s in bars])
    figure = _figure(max(6.0, 1.6 * len(cells) + 0.4 * len(bars)), 4.2)
    axes = figure.add_subplot()
    width = 0.8 / len(bars)
    for k, (method, setting) in enumerate(bars):
        mine = stats[(stats["method"] == method) & (stats["setting"] == setting)]
        mine = mine.set_index("cell")
        xs = [i + (k - (len(bars) - 1) / 2) * width for i, c in enumerate(cells) if c in mine.index]
        ys = [mine.loc[c, "mean"] * 100 for c in cells if c in mine.index]
        err = [
            0 if math.isnan(mine.loc[c, "std"]) else mine.loc[c, "std"] * 100
            for c in cells
            if c in mine.index
        ]
        label = method if setting == "no adaptation" else f"{method} · {setting}"
        axes.bar(xs, ys, width, yerr=err, capsize=2, label=label, color=colours[f"{method} · {setting}"])
    axes.set_xticks(range(len(cells)), cells)
    axes.set_ylabel(f"{metric} (%)")
    axes.set_xlabel("Transfer (source → target)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    seeds = _seeds_text(stats["n"])
    axes.set_title(f"Adaptation granularity: {metric} (%), mean ± std over seeds ({seeds})", fontsize=10)
    caption = (
        f"Effect of adaptation granularity on out-of-domain {metric}: adapting to the "
        f"whole target source, to each batch or plate (scored on that part), or to a "
        f"single part scored on the whole target (mean over parts); {seeds}."
    )
    return Plot("granularity", figure, caption)


# --------------------------------------------------------------------------- TTT steps


def ttt_steps_plot(long_df: pd.DataFrame, metric: str) -> Plot | None:
    """Score against test-time training steps for methods with ``<metric>@steps=k`` metrics:
    thin lines per off-diagonal cell (seed means), a thick line for the mean over cells with
    error bars = sample std over seeds of the per-seed mean over cells."""
    pattern = re.compile(rf"^{re.escape(metric)}@steps=(\d+)$")
    names = {
        str(m): int(match.group(1)) for m in long_df["metric"].unique() if (match := pattern.match(str(m)))
    }
    if not names:
        return None
    rows = long_df[long_df["metric"].astype(str).isin(names)].copy()
    for column in ("method", "source", "target", "metric"):
        rows[column] = rows[column].astype(str)
    rows["steps"] = rows["metric"].map(names)
    off = rows[rows["source"] != rows["target"]]
    rows = off if not off.empty else rows
    methods = list(dict.fromkeys(rows["method"]))
    figure = _figure(5.2 * len(methods), 3.8)
    axes_list = figure.subplots(1, len(methods), squeeze=False)[0]
    counts = []
    for axes, method in zip(axes_list, methods):
        mine = rows[rows["method"] == method]
        cells = mine.groupby(["source", "target", "steps"], sort=True)["value"].mean()
        for _cell, line in cells.groupby(level=[0, 1], sort=False):
            steps = line.index.get_level_values("steps")
            axes.plot(steps, line.to_numpy() * 100, color="grey", alpha=0.35, linewidth=0.8)
        per_seed = mine.groupby(["seed", "steps"])["value"].mean().unstack("steps")
        mean = per_seed.mean(axis=0) * 100
        std = per_seed.std(axis=0, ddof=1) * 100 if len(per_seed) > 1 else mean * np.nan
        counts.append(len(per_seed))
        axes.errorbar(
            mean.index,
            mean.to_numpy(),
            yerr=std.fillna(0).to_numpy(),
            color="C3",
            linewidth=2,
            capsize=3,
            marker="o",
            label="mean over cells ± std over seeds",
        )
        axes.plot([], [], color="grey", alpha=0.6, linewidth=0.8, label="one source → target cell")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("Adaptation steps per test image (0 = none)")
        axes.set_ylabel(f"{metric} (%)")
        axes.set_title(method, fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    seeds = _seeds_text(counts)
    scope = "out-of-domain cells" if not off.empty else "cells"
    figure.suptitle(f"Test-time training: {metric} (%) by steps, {scope}, {seeds}", fontsize=11)
    caption = (
        f"{metric} against the number of test-time training steps on {scope}; thick "
        f"line: mean over cells, error bars: sample std over seeds ({seeds})."
    )
    return Plot("ttt-steps", figure, caption)


# --------------------------------------------------------------------------- adaptation


# (label, how to read one adaptation's series from its diagnostics); the objective's own series
# have one value per epoch (epochs 1..E), the monitor's one per epoch from 0 (before adapting).
ADAPTATION_PANELS = (
    ("self-supervised loss (DINO or MAE)", lambda d: (1, d.get("loss"))),
    ("teacher target entropy / ln K", lambda d: (1, d.get("target_entropy"))),
    ("prototype usage / ln K", lambda d: (1, d.get("target_usage"))),
    ("feature-alignment loss", lambda d: (1, d.get("feature_alignment_loss"))),
    ("weight movement ‖Δθ‖/‖θ‖", lambda d: (0, [r["weight_movement_total"] for r in d["epochs"]])),
    ("CKA of class tokens to step 1", lambda d: (0, [r["cka_to_start"] for r in d["epochs"]])),
    ("share of predictions changed", lambda d: (0, [r["changed_predictions"] for r in d["epochs"]])),
    ("predicted classes (effective / K)", lambda d: (0, [r["predicted_classes"] for r in d["epochs"]])),
)


def _adaptation_series(records: list[dict]) -> pd.DataFrame:
    """One row per (method, cell, seed, panel, epoch) from the records' adaptation diagnostics."""
    rows = []
    for record in records:
        for adaptation in (record.get("info") or {}).get("adaptations") or []:
            diagnostics = adaptation.get("diagnostics")
            if not diagnostics or not diagnostics.get("epochs"):
                continue
            for panel, read in ADAPTATION_PANELS:
                first, values = read(diagnostics)
                for epoch, value in enumerate(values or [], start=first):
                    if value is not None and not (isinstance(value, float) and math.isnan(value)):
                        rows.append(
                            {
                                "method": str(record["method"]),
                                "off": record["source"] != record["target"],
                                "seed": record["seed"],
                                "panel": panel,
                                "epoch": epoch,
                                "value": float(value),
                            }
                        )
    return pd.DataFrame(rows)


def adaptation_plot(records: list[dict], long_df: pd.DataFrame, metric: str) -> Plot | None:
    """Step-3 diagnostics by epoch, mean over cells per method (out-of-domain cells when there
    are any), with the oracle target score on the last panel."""
    series = _adaptation_series(records)
    if series.empty:
        return None
    pattern = re.compile(rf"^{re.escape(metric)}@adapt_epoch=(\d+)$")
    oracle = long_df[long_df["metric"].astype(str).str.match(pattern)].copy()
    off = series[series["off"]]
    series = off if not off.empty else series
    panels = [label for label, _ in ADAPTATION_PANELS] + [f"ORACLE: target {metric} (%)"]
    methods = list(dict.fromkeys(series["method"]))
    colours = _colours(methods)
    columns = 4
    figure = _figure(4.0 * columns, 3.0 * math.ceil(len(panels) / columns))
    axes_grid = figure.subplots(math.ceil(len(panels) / columns), columns, squeeze=False).ravel()
    for axes, panel in zip(axes_grid, panels):
        for method in methods:
            if panel.startswith("ORACLE"):
                mine = oracle[oracle["method"].astype(str) == method]
                if not off.empty:
                    mine = mine[mine["source"].astype(str) != mine["target"].astype(str)]
                epochs = mine["metric"].astype(str).str.extract(pattern)[0].astype(int)
                line = mine.assign(epoch=epochs.to_numpy()).groupby("epoch")["value"].mean() * 100
            else:
                mine = series[(series["method"] == method) & (series["panel"] == panel)]
                line = mine.groupby("epoch")["value"].mean()
            if not line.empty:
                axes.plot(
                    line.index, line.to_numpy(), marker="o", markersize=3, color=colours[method], label=method
                )
        axes.set_title(panel, fontsize=9, color="C3" if panel.startswith("ORACLE") else "black")
        axes.set_xlabel("adaptation epoch (0 = step 1's FE)", fontsize=8)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    for axes in axes_grid[len(panels) :]:
        axes.set_visible(False)
    axes_grid[0].legend(fontsize=7)
    scope = "out-of-domain cells" if not off.empty else "cells"
    figure.suptitle(
        f"Step 3 by epoch, mean over {scope} and seeds; the last panel uses target "
        f"labels and is for analysis only",
        fontsize=10,
    )
    caption = (
        f"Label-free diagnostics of the adaptation by epoch (mean over {scope} and seeds); "
        f"the last panel is an oracle curve of target {metric}, never used to choose."
    )
    return Plot("adaptation", figure, caption)


# --------------------------------------------------------------------------- entry points


def build_plots(run_dir, metric: str = "accuracy") -> list[Plot]:
    """Every figure that the run's records support, in a fixed order."""
    from hcibench.report.tables import check_metric, load_run, summarise

    long_df, manifest, records = load_run(run_dir)
    summary = summarise(long_df)
    check_metric(summary, metric)
    methods = [str(m) for m in summary["method"].unique()]
    sources = [str(s) for s in summary["source"].unique().sort_values()]
    targets = [str(t) for t in summary["target"].unique().sort_values()]
    plots = heatmaps(summary, metric, sources, targets, methods)
    for plot in (
        out_of_domain_bars(summary, metric, sources, targets, methods),
        granularity_plot(records, metric, methods),
        ttt_steps_plot(long_df, metric),
        adaptation_plot(records, long_df, metric),
    ):
        if plot is not None:
            plots.append(plot)
    return plots


def write_plots(run_dir, out_dir, metric: str = "accuracy", formats=PLOT_FORMATS) -> list[Path]:
    """Write every figure as ``OUT_DIR/<name>.<fmt>``; returns the paths written."""
    unknown = [f for f in formats if f not in ("png", "svg", "pdf")]
    if unknown:
        raise UsageError(f"unknown plot format '{unknown[0]}'. Available: pdf, png, svg.")
    plots = build_plots(run_dir, metric)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create plot folder {out}: {error.strerror or error}") from None
    paths = []
    for plot in plots:
        paths += plot.save(out, formats)
    return paths
