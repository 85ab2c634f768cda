"""Reports over a hand-made run folder: numbers checked against numpy, formats against each other."""

from __future__ import annotations

import csv
import io
import json
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest

from hcibench.errors import UsageError
from hcibench.report.tables import (
    load_records,
    off_diagonal_means,
    render,
    summarise,
)

# Grid order deliberately not alphabetical, so ordering by the manifest is visible.
METHODS = ["supervised", "coda"]
DOMAINS = ["S5", "S3"]
SEEDS = [0, 1, 2]
# Per-seed offsets: mean offset +0.004, sample std ~0.0165 (-> "± 1.7" in percent).
OFFSETS = [0.003, -0.012, 0.021]
BASE = {
    ("supervised", "S5", "S5"): 0.386,
    ("supervised", "S5", "S3"): 0.131,
    ("supervised", "S3", "S5"): 0.074,
    ("supervised", "S3", "S3"): 0.355,
    ("coda", "S5", "S5"): 0.402,
    ("coda", "S5", "S3"): 0.329,
    ("coda", "S3", "S5"): 0.263,
    ("coda", "S3", "S3"): 0.366,
}


def accuracy(method, source, target, seed):
    return BASE[method, source, target] + OFFSETS[seed]


def write_record(run, method, source, target, seed, metrics, name=None):
    path = run / "records" / method / f"{source}_{target}" / (name or f"seed{seed}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "method": method,
        "source": source,
        "target": target,
        "seed": seed,
        "dataset": "synthetic",
        "in_domain": source == target,
        "metrics": metrics,
        "n_images": 540,
        "seconds": 1.0,
        "info": {},
    }
    path.write_text(json.dumps(record))
    return path


def write_manifest(run):
    grid = {"methods": METHODS, "sources": DOMAINS, "targets": DOMAINS, "seeds": SEEDS}
    (run / "manifest.json").write_text(json.dumps({"grid": grid, "dataset": {"name": "toyset"}}))


@pytest.fixture
def run(tmp_path):
    """2 methods x 2 sources x 2 targets x 3 seeds, three metrics each."""
    run = tmp_path / "run"
    for method, source, target in BASE:
        for seed in SEEDS:
            acc = accuracy(method, source, target, seed)
            metrics = {"accuracy": acc, "f1": acc / 2, "accuracy@steps=1": acc + 0.05}
            write_record(run, method, source, target, seed, metrics)
    write_manifest(run)
    return run


def read_csv(text):
    return list(csv.DictReader(io.StringIO(text)))


def percent(fraction_text):
    """The documented contract: a layout shows the CSV fraction x 100, rounded half up."""
    return str((Decimal(fraction_text) * 100).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def expected(method, source, target, transform=lambda v: v):
    values = np.array([transform(accuracy(method, source, target, s)) for s in SEEDS])
    return values.mean(), values.std(ddof=1)


def test_load_records_is_long_and_in_grid_order(run):
    df = load_records(run)
    assert list(df.columns) == ["method", "source", "target", "seed", "metric", "value"]
    assert len(df) == 8 * 3 * 3
    assert list(df["method"].cat.categories) == METHODS
    assert (df["source"] == df["target"]).sum() == 4 * 3 * 3  # shared categories compare


def test_summarise_columns_and_sample_std(run):
    summary = summarise(load_records(run))
    assert list(summary.columns) == ["method", "source", "target", "metric", "mean", "std", "n"]
    row = summary[
        (summary.method == "coda")
        & (summary.source == "S3")
        & (summary.target == "S5")
        & (summary.metric == "accuracy")
    ].iloc[0]
    mean, std = expected("coda", "S3", "S5")
    assert row["mean"] == pytest.approx(mean)
    assert row["std"] == pytest.approx(std)
    assert row["n"] == 3


def test_csv_header_rows_and_numbers(run):
    text = render(run, "csv")
    assert text.splitlines()[0] == "method,source,target,metric,mean,std,n"
    rows = read_csv(text)
    assert len(rows) == 8 * 3
    # Grid order: methods as listed, then sources and targets as listed.
    cells = [(r["method"], r["source"], r["target"]) for r in rows if r["metric"] == "accuracy"]
    assert cells[:4] == [
        ("supervised", "S5", "S5"),
        ("supervised", "S5", "S3"),
        ("supervised", "S3", "S5"),
        ("supervised", "S3", "S3"),
    ]
    for r in rows:
        transform = {"accuracy": lambda v: v, "f1": lambda v: v / 2, "accuracy@steps=1": lambda v: v + 0.05}[
            r["metric"]
        ]
        mean, std = expected(r["method"], r["source"], r["target"], transform)
        assert len(r["mean"].split(".")[1]) == 4 and len(r["std"].split(".")[1]) == 4
        assert float(r["mean"]) == pytest.approx(mean, abs=5e-5)
        assert float(r["std"]) == pytest.approx(std, abs=5e-5)
        assert r["n"] == "3"


def test_variant_metrics_appear_in_csv(run):
    metrics = {r["metric"] for r in read_csv(render(run, "csv"))}
    assert metrics == {"accuracy", "accuracy@steps=1", "f1"}


def test_json_has_the_csv_numbers(run):
    rows = read_csv(render(run, "csv"))
    data = json.loads(render(run, "json", metric="f1"))
    assert data["metric"] == "f1" and data["seeds"] == 3
    assert len(data["rows"]) == len(rows)
    for from_csv, from_json in zip(rows, data["rows"]):
        assert from_json["mean"] == float(from_csv["mean"])
        assert from_json["std"] == float(from_csv["std"])
        assert from_json["n"] == int(from_csv["n"])
        assert [from_json[k] for k in ("method", "source", "target", "metric")] == [
            from_csv[k] for k in ("method", "source", "target", "metric")
        ]


def test_markdown_cells_caption_and_summary(run):
    text = render(run, "markdown")
    # base 0.386 + mean offset 0.004 = 39.0 %; std 1.65 % -> 1.7; diagonal in bold.
    assert "**39.0 ± 1.7**" in text
    assert "| S5 | supervised | **39.0 ± 1.7** | 13.5 ± 1.7 |" in text
    assert "|  | coda | **40.6 ± 1.7** | 33.3 ± 1.7 |" in text
    assert "mean ± sample std over 3 seeds" in text
    assert "dataset: toyset" in text and "accuracy" in text
    # coda: off-diagonal (33.3 + 26.7) / 2 = 30.0, in-domain (40.6 + 37.0) / 2 = 38.8.
    assert "| coda | 30.0 | 38.8 |" in text


def test_layouts_agree_with_csv(run):
    rows = [r for r in read_csv(render(run, "csv")) if r["metric"] == "accuracy"]
    texts = {fmt: render(run, fmt) for fmt in ("table", "markdown", "latex")}
    for r in rows:
        mean, std = percent(r["mean"]), percent(r["std"])
        assert f"{mean} ± {std}" in texts["table"]
        assert f"{mean} ± {std}" in texts["markdown"]
        assert f"{mean} $\\pm$ {std}" in texts["latex"]
    assert "40.6 ± 1.7*" in texts["table"]  # in-domain marker survives plain text
    assert "\\textbf{40.6 $\\pm$ 1.7}" in texts["latex"]


def test_off_diagonal_means_against_numpy(run):
    summary = summarise(load_records(run))
    means = off_diagonal_means(summary, "accuracy")
    assert list(means) == METHODS
    for method in METHODS:
        cells = [expected(method, s, t)[0] for s in DOMAINS for t in DOMAINS if s != t]
        assert means[method] == pytest.approx(np.mean(cells))


def test_single_seed_cell_has_no_std(tmp_path):
    run = tmp_path / "run"
    for seed in SEEDS:
        write_record(run, "supervised", "S3", "S5", seed, {"accuracy": 0.1 + seed / 10})
    write_record(run, "supervised", "S3", "S3", 0, {"accuracy": 0.4213})
    row = next(r for r in read_csv(render(run, "csv")) if r["target"] == "S3")
    assert (row["mean"], row["std"], row["n"]) == ("0.4213", "", "1")
    json_row = next(r for r in json.loads(render(run, "json"))["rows"] if r["target"] == "S3")
    assert json_row["std"] is None
    text = render(run, "markdown")
    assert "**42.1** |" in text
    assert "n per cell varies: 1–3" in text


def test_missing_cells_show_a_dash_and_no_manifest_sorts(tmp_path):
    run = tmp_path / "run"
    for source, target in [("S3", "S3"), ("S3", "S11"), ("S11", "S11")]:
        write_record(run, "tta", source, target, 0, {"accuracy": 0.5})
    text = render(run, "markdown")
    assert "| Source | Method | S3 | S11 |" in text  # natural order: S3 before S11
    assert "| S11 | tta | – | **50.0** |" in text
    assert "dataset: synthetic" in text  # from the records when there is no manifest


def test_dot_files_are_skipped(run):
    (run / "records" / ".partial.json").write_text("{not json")
    (run / "records" / "coda" / "S3_S3" / ".seed9.json.tmp.json").write_text("")
    assert len(read_csv(render(run, "csv"))) == 8 * 3


def test_missing_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="hcibench run --out"):
        load_records(tmp_path / "nope")


def test_empty_folder_is_a_usage_error(tmp_path):
    (tmp_path / "records").mkdir()
    with pytest.raises(UsageError, match="no records in .*hcibench run --out"):
        render(tmp_path, "csv")


def test_unknown_format_lists_choices(run):
    with pytest.raises(UsageError) as info:
        render(run, "html")
    message = str(info.value)
    assert "format" in message and all(f in message for f in ("csv", "json", "latex", "table"))


def test_unknown_metric_lists_choices(run):
    with pytest.raises(UsageError, match="accuracy@steps=1.*f1"):
        render(run, "markdown", metric="auc")


def test_duplicate_records_are_refused(run):
    write_record(run, "coda", "S3", "S3", 0, {"accuracy": 0.3}, name="again.json")
    with pytest.raises(UsageError, match="duplicate records for coda S3->S3 seed 0"):
        load_records(run)
