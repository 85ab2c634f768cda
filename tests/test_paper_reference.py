"""The transcription of the paper's Tables 2-5 and ``--compare paper``."""

from __future__ import annotations

import csv
import io
import json

import pytest
from records_factory import make_grid

from hcibench.errors import UsageError
from hcibench.paper import claims
from hcibench.paper.comparison import TABLES, load_table, render_comparison

METHODS = {"supervised", "dual-dino", "dual-cb", "ttt", "oda", "coda", "dual-mae", "oda-mae"}


def cell(frame, method, source, target):
    rows = frame[(frame.method == method) & (frame.source == source) & (frame.target == target)]
    assert len(rows) == 1
    return rows.iloc[0]["mean"], rows.iloc[0]["std"]


def test_cell_counts_and_names():
    counts = {
        "table2_accuracy": 132,
        "table3_dino_vs_mae_accuracy": 8,
        "table4_f1": 120,
        "table5_mae_ttt_accuracy": 40,
    }
    for name, count in counts.items():
        frame = load_table(name)
        assert len(frame) == count, name
        assert set(frame["method"]) <= METHODS
        assert not frame.duplicated(["method", "source", "target"]).any()
    assert set(TABLES) == set(counts)
    # Table 2: 4 sources x (3 methods x 6 targets + 3 adapting methods x 5 targets).
    t2 = load_table("accuracy")
    assert set(t2["source"]) == {"S3", "S5", "S8", "S11"}
    assert t2[t2.source == t2.target]["method"].unique().tolist() == ["supervised", "dual-dino", "dual-cb"]
    assert set(load_table("f1")["metric"]) == {"f1"}


def test_spot_values():
    t2 = load_table("accuracy")
    assert cell(t2, "supervised", "S3", "S3") == (39.0, 0.4)
    assert cell(t2, "coda", "S3", "S5") == (33.3, 0.3)
    assert cell(t2, "coda", "S3", "S8") == (33.9, 0.2)  # the prose's "S3->S8 ... 33.9"
    # The shifted labels: 31.0 in-domain is S8, 32.4 is S11.
    assert cell(t2, "supervised", "S8", "S8") == (31.0, 0.5)
    assert cell(t2, "supervised", "S11", "S11") == (32.4, 0.6)
    assert cell(t2, "ttt", "S11", "S7") == (7.0, 0.0)
    t4 = load_table("f1")
    assert cell(t4, "coda", "S11", "S10") == (8.7, 0.6)
    assert cell(load_table("table3_dino_vs_mae_accuracy"), "oda-mae", "S3", "S10") == (11.1, 0.4)
    t5 = load_table("table5_mae_ttt_accuracy")
    assert cell(t5, "dual-mae", "S8", "S7") == (14.4, 0.4)
    # TTT in Table 5 repeats Table 2's TTT rows.
    for source in ("S3", "S5", "S8", "S11"):
        ttt2 = t2[(t2.method == "ttt") & (t2.source == source)].set_index("target")["mean"]
        ttt5 = t5[(t5.method == "ttt") & (t5.source == source)].set_index("target")["mean"]
        assert ttt2.to_dict() == ttt5.to_dict()


@pytest.fixture
def run(tmp_path):
    values = {
        ("supervised", "S3", "S3"): 0.386,
        ("supervised", "S3", "S5"): 0.131,
        ("coda", "S3", "S5"): 0.329,
        ("coda", "S3", "S3"): 0.40,
        ("mine", "S3", "S5"): 0.2,
    }
    return make_grid(tmp_path / "run", values)


def test_compare_paper_rows(run):
    rows = list(csv.DictReader(io.StringIO(render_comparison(run, "csv"))))
    # coda S3->S3 is not in Table 2 ("-"), "mine" is not a paper method.
    assert [(r["method"], r["source"], r["target"]) for r in rows] == [
        ("supervised", "S3", "S3"),
        ("supervised", "S3", "S5"),
        ("coda", "S3", "S5"),
    ]
    coda = rows[2]
    assert (coda["ours_mean"], coda["ours_std"], coda["n"]) == ("33.3", "1.7", "3")
    assert (coda["paper_mean"], coda["paper_std"], coda["diff"]) == ("33.3", "0.3", "+0.0")
    assert rows[0]["diff"] == "+0.0" and rows[1]["diff"] == "+0.0"
    text = render_comparison(run, "table")
    assert "33.3 ± 1.7" in text and "33.3 ± 0.3" in text and "Table 2" in text
    markdown = render_comparison(run, "markdown")
    assert "| coda | S3 | S5 | 33.3 ± 1.7 | 3 | 33.3 ± 0.3 | +0.0 |" in markdown
    f1 = json.loads(render_comparison(run, "json", metric="f1"))
    assert f1["paper_table"].startswith("Table 4")
    supervised = next(r for r in f1["rows"] if r["method"] == "supervised")
    assert (supervised["paper_mean"], supervised["ours_mean"]) == ("10.9", "6.8")
    assert supervised["diff"] == "-4.1"


def test_compare_errors(run, tmp_path):
    with pytest.raises(UsageError, match="accuracy .*Table 2.* f1"):
        render_comparison(run, metric="auc")
    with pytest.raises(UsageError, match="--compare supports"):
        render_comparison(run, "latex")
    other = make_grid(tmp_path / "other", {("mine", "A", "B"): 0.5})
    with pytest.raises(UsageError, match="no \\(method, source, target\\)"):
        render_comparison(other)


def test_the_papers_own_table_satisfies_its_claims():
    table = load_table("accuracy")
    table = table.assign(mean=table["mean"] / 100)
    verdicts = {claim.text: claim.holds for claim in claims.check(table, table)}
    assert list(verdicts.values()) == [True, True, True], verdicts


def _claims_run(tmp_path, coda, oda=0.15, duals=0.09):
    values = {
        ("supervised", "S3", "S3"): 0.40,
        ("supervised", "S3", "S5"): 0.10,
        ("supervised", "S5", "S3"): 0.12,
        ("coda", "S3", "S5"): coda,
        ("coda", "S5", "S3"): coda,
    }
    if oda is not None:
        values |= {("oda", "S3", "S5"): oda, ("oda", "S5", "S3"): oda}
    values |= {("dual-dino", "S3", "S5"): duals, ("dual-dino", "S5", "S3"): duals}
    return make_grid(tmp_path / f"run-{coda}-{oda}", values)


def test_compare_paper_checks_the_papers_claims_on_the_run(tmp_path):
    # Off domain, supervised averages 0.11 (+ the seed offsets' mean 0.004).
    holding = render_comparison(_claims_run(tmp_path, coda=0.25), "table")
    assert "CODA > ODA > Supervised out of domain: holds" in holding
    assert "CODA at least twice Supervised out of domain: holds" in holding
    assert "ours: coda 25.4, oda 15.4, supervised 11.4" in holding
    assert "without adaptation not better than Supervised out of domain: holds" in holding

    failing = json.loads(render_comparison(_claims_run(tmp_path, coda=0.20, duals=0.13), "json"))
    verdicts = {c["text"]: c["verdict"] for c in failing["claims"]}
    assert verdicts["CODA > ODA > Supervised out of domain"] == "holds"
    assert verdicts["CODA at least twice Supervised out of domain"] == "does not hold"
    assert (
        verdicts["dual models without adaptation not better than Supervised out of domain"] == "does not hold"
    )
    # The paper's side averages the same two cells (Table 2: coda S3->S5 33.3, S5->S3 26.7).
    twice = next(c for c in failing["claims"] if c["text"].startswith("CODA at least"))
    assert twice["paper"]["coda"] == pytest.approx(0.30)

    markdown = render_comparison(_claims_run(tmp_path, coda=0.25, oda=None), "markdown")
    assert "- CODA > ODA > Supervised out of domain: not checked: the run has no oda" in markdown
