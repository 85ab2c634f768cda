"""Paired tests, Holm's correction and relative improvement, checked against hand formulas."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from records_factory import write_manifest, write_record
from scipy import stats as scipy_stats

from hcibench.errors import UsageError
from hcibench.report.statistics import (
    compare,
    holm,
    improvement_summary,
    paired_t,
    relative_improvements,
    render_stats,
    wilcoxon,
)
from hcibench.report.tables import load_records

SEEDS = [0, 1, 2]
CELLS = [("S3", "S3"), ("S3", "S5"), ("S5", "S3"), ("S5", "S5")]
BASE = {("S3", "S3"): 0.40, ("S3", "S5"): 0.10, ("S5", "S3"): 0.08, ("S5", "S5"): 0.36}
NOISE = [0.003, -0.012, 0.021]
# coda - supervised per seed in S3->S5: differences 1, 2, 3 percentage points.
CODA_GAIN = {
    ("S3", "S3"): [0.0, 0.01, 0.0],
    ("S3", "S5"): [0.01, 0.02, 0.03],
    ("S5", "S3"): [0.15, 0.17, 0.16],
    ("S5", "S5"): [0.01, -0.01, 0.02],
}


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "run"
    for cell in CELLS:
        for seed in SEEDS:
            base = BASE[cell] + NOISE[seed]
            write_record(run, "supervised", *cell, seed, {"accuracy": base})
            write_record(run, "copy", *cell, seed, {"accuracy": base})
            write_record(run, "coda", *cell, seed, {"accuracy": base + CODA_GAIN[cell][seed]})
    write_manifest(run, ["supervised", "copy", "coda"], ["S3", "S5"], SEEDS)
    return run


def test_method_against_itself_gives_p_one():
    a = [0.31, 0.35, 0.29, 0.4]
    for test in (paired_t, wilcoxon):
        result = test(a, a)
        assert result.p == 1.0
        assert result.mean_diff == 0.0 and result.d_z == 0.0
        assert "identical" in result.note


def test_paired_t_matches_the_hand_formula():
    diff = np.array([1.0, 2.0, 3.0])
    b = np.array([10.0, 20.0, 15.0])
    result = paired_t(b + diff, b)
    n, mean, sd = 3, diff.mean(), diff.std(ddof=1)
    t = mean / (sd / math.sqrt(n))
    assert result.statistic == pytest.approx(t)
    assert result.p == pytest.approx(2 * scipy_stats.t.sf(t, n - 1))
    assert result.p == pytest.approx(0.07418, abs=1e-5)
    assert result.d_z == pytest.approx(mean / sd) and result.d_z == pytest.approx(2.0)
    assert (result.n, result.mean_diff) == (3, pytest.approx(2.0))


def test_small_samples_give_nan_with_a_note():
    for test in (paired_t, wilcoxon):
        result = test([0.5], [0.4])
        assert math.isnan(result.p) and "n < 2" in result.note
        assert result.n == 1 and result.mean_diff == pytest.approx(0.1)


def test_equal_non_zero_differences_leave_t_undefined():
    result = paired_t([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert math.isnan(result.p) and math.isinf(result.d_z) and "sd 0" in result.note
    assert result.mean_diff == 1.0


def test_wilcoxon_matches_scipy_and_states_its_floor():
    a = np.array([0.30, 0.25, 0.41, 0.28, 0.33, 0.20, 0.27])
    b = np.array([0.10, 0.12, 0.15, 0.31, 0.09, 0.08, 0.11])
    result = wilcoxon(a, b)
    expected = scipy_stats.wilcoxon(a - b)
    assert result.p == pytest.approx(expected.pvalue)
    assert result.statistic == pytest.approx(expected.statistic)
    five = wilcoxon([1, 2, 3, 4, 5], [0, 0, 0, 0, 0])
    assert five.p == pytest.approx(0.0625)  # 2 / 2**5: the smallest p with 5 pairs
    assert "cannot go below 0.0625" in five.note
    zeros = wilcoxon([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0])
    assert "1 zero difference dropped" in zeros.note


def test_holm_on_a_known_vector():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4x, 3x, 2x, 1x = 0.02, 0.03, 0.06, 0.04 -> monotone.
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    with_nan = holm([0.01, math.nan, 0.04])
    assert math.isnan(with_nan[1])
    np.testing.assert_allclose(with_nan[[0, 2]], [0.02, 0.04])  # NaN does not count in m
    assert holm([]).shape == (0,)


def test_compare_within_cells_and_across_cells(run):
    table = compare(load_records(run), "accuracy", "supervised")
    copy = table[table["method"] == "copy"]
    assert (copy["p"] == 1.0).all() and (copy["mean_diff"] == 0).all()
    coda = table[table["method"] == "coda"].set_index("scope")
    cell = coda.loc["S3→S5"]
    t = 0.02 / (0.01 / math.sqrt(3))
    assert cell["n"] == 3 and cell["mean_diff"] == pytest.approx(0.02)
    assert cell["p"] == pytest.approx(2 * scipy_stats.t.sf(t, 2))
    assert cell["d_z"] == pytest.approx(2.0)
    # Off-diagonal: two cells, paired by cell on seed means.
    across = table[(table["method"] == "coda") & table["scope"].str.startswith("off-diagonal")]
    assert list(across["test"]) == ["Wilcoxon", "paired t"]
    assert (across["n"] == 2).all()
    means = {c: BASE[c] + np.mean(NOISE) for c in CELLS}
    diffs = [np.mean(CODA_GAIN[c]) for c in [("S3", "S5"), ("S5", "S3")]]
    t_row = across[across["test"] == "paired t"].iloc[0]
    expected = scipy_stats.ttest_rel(
        [means["S3", "S5"] + diffs[0], means["S5", "S3"] + diffs[1]], [means["S3", "S5"], means["S5", "S3"]]
    )
    assert t_row["p"] == pytest.approx(expected.pvalue)
    gains = [d / means[c] * 100 for d, c in zip(diffs, [("S3", "S5"), ("S5", "S3")])]
    assert t_row["rel_improvement"] == pytest.approx(np.mean(gains))
    assert t_row["rel_improvement_std"] == pytest.approx(np.std(gains, ddof=1))
    # Holm within each family: the per-cell t-tests, and each off-diagonal test over the methods.
    assert set(table["family"]) == {"cell", "off-diagonal Wilcoxon", "off-diagonal paired t"}
    for family, rows in table.groupby("family"):
        np.testing.assert_allclose(rows["p_holm"], holm(rows["p"]), equal_nan=True, err_msg=family)
    assert (table["p_holm"].dropna() >= table["p"].dropna()).all()
    # A method-level test is corrected for the methods compared, not for the grid's cells.
    wilcoxon_rows = table[table["family"] == "off-diagonal Wilcoxon"]
    assert len(wilcoxon_rows) == table["method"].nunique()


def test_relative_improvement_reproduces_the_paper():
    """Table 2 of the paper: CODA +132.6 % ± 63.6 over supervised on the 20 off-diagonal cells,
    which the paper writes as 232.6 % ± 63.6 (ratio to the baseline); ODA 174.8 % likewise."""
    from hcibench.paper.comparison import load_table

    table = load_table("accuracy")
    summary = improvement_summary(relative_improvements(table, "accuracy", "supervised"))
    coda = summary.set_index("method").loc["coda"]
    assert coda["n_cells"] == 20
    assert round(coda["mean"], 1) == 132.6 and round(coda["std"], 1) == 63.6
    assert round(coda["ratio_mean"], 1) == 232.6
    assert round(summary.set_index("method").loc["oda", "ratio_mean"], 1) == 174.8


def test_relative_improvement_per_cell():
    frame = pd.DataFrame(
        {
            "method": ["supervised", "coda", "supervised", "coda"],
            "source": ["S3", "S3", "S3", "S3"],
            "target": ["S5", "S5", "S3", "S3"],
            "metric": ["accuracy"] * 4,
            "mean": [0.10, 0.25, 0.40, 0.30],
        }
    )
    cells = relative_improvements(frame, "accuracy", "supervised").set_index("target")
    assert cells.loc["S5", "improvement"] == pytest.approx(150.0)
    assert cells.loc["S3", "improvement"] == pytest.approx(-25.0)
    summary = improvement_summary(cells.reset_index())
    assert summary.iloc[0]["n_cells"] == 1 and math.isnan(summary.iloc[0]["std"])


def test_render_stats_formats_agree(run):
    table = render_stats(run, "table")
    assert "Holm" in table and "Wilcoxon" in table and "S3→S5" in table
    assert "Relative improvement over 'supervised'" in table
    rows = list(csv.DictReader(io.StringIO(render_stats(run, "csv"))))
    markdown = render_stats(run, "markdown")
    data = json.loads(render_stats(run, "json"))
    assert len(rows) == len(data["comparisons"])
    for row, item in zip(rows, data["comparisons"]):
        assert row["scope"] == item["scope"] and row["test"] == item["test"]
        if row["p"]:
            assert float(row["p"]) == pytest.approx(item["p"], abs=1e-6)
    coda = next(r for r in rows if r["method"] == "coda" and r["scope"] == "S3→S5")
    assert f"| coda | S3→S5 | paired t | 3 | +2.00 | 2.00 | {float(coda['p']):.3g}" in markdown
    assert {r["method"] for r in data["relative_improvement"]} == {"copy", "coda"}


def test_unknown_baseline_and_format_are_usage_errors(run):
    with pytest.raises(UsageError, match="unknown baseline method 'supervise'.*supervised"):
        render_stats(run, baseline="supervise")
    with pytest.raises(UsageError, match="--stats supports"):
        render_stats(run, "latex")
    with pytest.raises(UsageError, match="unknown metric"):
        render_stats(run, metric="auc")


def test_a_run_with_only_the_baseline_has_nothing_to_compare(tmp_path):
    write_record(tmp_path, "supervised", "S3", "S5", 0, {"accuracy": 0.2})
    with pytest.raises(UsageError, match="nothing to compare"):
        render_stats(tmp_path)
