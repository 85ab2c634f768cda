"""The CODA paper's results (WACV 2024) beside a run's: ``hcibench report RUN --compare paper``.

The paper's Tables 2-5 are transcribed in long format (method, source, target, metric, mean,
std; percent as printed) into CSV files shipped with the package under
``hcibench/paper/reference/``; ``results/paper/README.md`` documents the transcription.
Method names are hcibench's (supervised, dual-dino, dual-cb, ttt, oda, coda, dual-mae, oda-mae).
"""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from importlib import resources

import pandas as pd

from hcibench.errors import UsageError
from hcibench.paper import claims

TABLES = {
    "table2_accuracy": "Table 2: generalisation across target sources, accuracy (%)",
    "table3_dino_vs_mae_accuracy": "Table 3: S3 to S7 and S10, DINO vs MAE, accuracy (%)",
    "table4_f1": "Table 4: generalisation across target sources, F1 (%)",
    "table5_mae_ttt_accuracy": "Table 5: Dual-model-MAE and TTT, accuracy (%)",
}
# The table a run's metric is compared with.
METRIC_TABLES = {"accuracy": "table2_accuracy", "f1": "table4_f1"}
REFERENCE_COLUMNS = ["method", "source", "target", "metric", "mean", "std"]
COMPARE_COLUMNS = [
    "method",
    "source",
    "target",
    "metric",
    "ours_mean",
    "ours_std",
    "n",
    "paper_mean",
    "paper_std",
    "diff",
]
COMPARE_FORMATS = ("table", "markdown", "csv", "json")
COMPARE_HEADER = ["Method", "Source", "Target", "Ours (%)", "n", "Paper (%)", "Δ (pp)"]


def _resource(name: str):
    return resources.files("hcibench.paper") / "reference" / f"{name}.csv"


def load_table(name: str = "accuracy") -> pd.DataFrame:
    """One transcribed table as a frame (``REFERENCE_COLUMNS``, mean/std in percent).

    ``name`` is a table stem (``table2_accuracy``, ...) or a metric (accuracy -> Table 2,
    f1 -> Table 4)."""
    stem = METRIC_TABLES.get(name, name)
    if stem not in TABLES:
        choices = ", ".join([*METRIC_TABLES, *TABLES])
        raise UsageError(f"no paper table '{name}'. Available: {choices}.")
    with _resource(stem).open("r", encoding="utf-8") as handle:
        frame = pd.read_csv(handle, dtype={"mean": str, "std": str})
    # Kept as the printed text too, so "39.0" is shown as the paper prints it.
    frame["mean_text"], frame["std_text"] = frame["mean"], frame["std"]
    frame["mean"] = frame["mean"].astype(float)
    frame["std"] = frame["std"].astype(float)
    return frame


def comparison(run_dir, metric: str = "accuracy") -> tuple[pd.DataFrame, dict]:
    """Our mean ± std beside the paper's for every (method, source, target) in both.

    Returns the frame (``COMPARE_COLUMNS``; percent with one decimal as text, like both tables
    print; ``diff`` = ours - paper of the printed values) and facts for the caption.
    """
    from hcibench.report.tables import load_run, percent, round4, summarise

    if metric not in METRIC_TABLES:
        raise UsageError(f"--compare paper covers metric accuracy (Table 2) and f1 (Table 4), not '{metric}'")
    long_df, manifest, records = load_run(run_dir)
    summary = summarise(long_df)
    ours = summary[summary["metric"].astype(str) == metric]
    paper = load_table(metric)
    index = {(r.method, r.source, r.target): r for r in paper.itertuples(index=False)}
    rows = []
    for r in ours.itertuples(index=False):
        ref = index.get((str(r.method), str(r.source), str(r.target)))
        if ref is None:
            continue
        mean = percent(r.mean)
        std = "" if round4(r.std) is None else percent(r.std)
        rows.append(
            {
                "method": str(r.method),
                "source": str(r.source),
                "target": str(r.target),
                "metric": metric,
                "ours_mean": mean,
                "ours_std": std,
                "n": int(r.n),
                "paper_mean": ref.mean_text,
                "paper_std": ref.std_text,
                "diff": f"{Decimal(mean) - Decimal(ref.mean_text):+.1f}",
            }
        )
    if not rows:
        methods = ", ".join(dict.fromkeys(paper["method"]))
        raise UsageError(
            f"no (method, source, target) of {run_dir} is in the paper's "
            f"{TABLES[METRIC_TABLES[metric]].split(':')[0]}: it has methods {methods} and "
            f"sources S3, S5, S8, S11 (targets also S7, S10)"
        )
    from hcibench.report.tables import dataset_names

    facts = {
        "table": TABLES[METRIC_TABLES[metric]],
        "matched": len(rows),
        "ours_cells": len(ours),
        "paper_cells": len(paper),
        "dataset": ", ".join(dataset_names(manifest, records)) or "unknown",
        "claims": claims.check(ours, paper.assign(mean=paper["mean"] / 100)),
    }
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS), facts


def caption(facts: dict, metric: str) -> str:
    return (
        f"{metric} (%), ours (dataset: {facts['dataset']}; mean ± sample std over n seeds) "
        f"beside the CODA paper's {facts['table']} (JUMP-CP, mean ± std). Δ = ours - paper "
        f"in percentage points. {facts['matched']} of our {facts['ours_cells']} cells are in "
        f"the paper's table; in-domain cells of the adapting methods are not reported there."
    )


def claims_title(metric: str) -> str:
    return f"The paper's claims on this run (off-diagonal mean {metric} (%) over the cells both report):"


def display_rows(frame: pd.DataFrame) -> list[list[str]]:
    def pm(mean, std):
        return f"{mean} ± {std}" if std else mean

    return [
        [
            r.method,
            r.source,
            r.target,
            pm(r.ours_mean, r.ours_std),
            str(r.n),
            pm(r.paper_mean, r.paper_std),
            r.diff,
        ]
        for r in frame.itertuples(index=False)
    ]


def render_comparison(run_dir, fmt: str = "table", metric: str = "accuracy", console=None) -> str:
    """The comparison as a rich table, markdown, CSV (``COMPARE_COLUMNS``) or JSON."""
    if fmt not in COMPARE_FORMATS:
        raise UsageError(f"--compare supports --format {', '.join(COMPARE_FORMATS)}, not '{fmt}'")
    frame, facts = comparison(run_dir, metric)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COMPARE_COLUMNS)
        writer.writerows(frame.itertuples(index=False))
        return out.getvalue()
    if fmt == "json":
        rows = frame.to_dict(orient="records")
        payload = {
            "metric": metric,
            "paper_table": facts["table"],
            "rows": rows,
            "claims": [claim.to_json() for claim in facts["claims"]],
        }
        return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    from hcibench.report.formats import markdown_table, rich_table

    text = caption(facts, metric)
    if fmt == "markdown":
        lines = [f"**Ours vs the paper.** {text}", ""]
        lines += markdown_table(COMPARE_HEADER, display_rows(frame), 3)
        lines += ["", f"**{claims_title(metric)}**", ""]
        lines += [f"- {line}" for line in claims.lines(facts["claims"])]
        return "\n".join(lines) + "\n"
    from rich.text import Text

    from hcibench.report.tables import render_text

    verdicts = Text("\n".join([claims_title(metric), *claims.lines(facts["claims"])]))
    return render_text(
        [Text(text), rich_table(COMPARE_HEADER, display_rows(frame), None, 3), verdicts], console
    )


def html_section(run_dir, metric: str) -> str:
    """The comparison as a section of the HTML report ("" when the paper has no table of the
    metric or none of the run's cells)."""
    from hcibench.report.html import table

    if metric not in METRIC_TABLES:
        return ""
    try:
        frame, facts = comparison(run_dir, metric)
    except UsageError:
        return ""  # nothing of this run is in the paper's tables
    return "<h2>Beside the CODA paper</h2>\n" + table(
        COMPARE_HEADER, display_rows(frame), caption(facts, metric), numeric_from=3
    )
