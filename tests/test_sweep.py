"""Sweeps: one run variant per value of a --set, stages shared, reported side by side."""

import json

import pytest
from conftest import tiny_args
from test_dual import TINY_DUAL

from hcibench.errors import UsageError
from hcibench.run.runner import Grid, RunSpec
from hcibench.run.sweep import sweep_variants


def test_a_comma_list_sweeps_and_a_json_list_does_not(tmp_path):
    spec = RunSpec(
        Grid(["oda"], ["S3"]),
        tmp_path,
        overrides=["adapt.lr=1e-5,1e-4", "adapt.epochs=3,5", "dino.epochs=2", "backbone.x=[1,2]"],
    )
    variants = sweep_variants(spec)
    assert [v.out.name for v in variants] == [
        "adapt.lr=1e-5,adapt.epochs=3",
        "adapt.lr=1e-5,adapt.epochs=5",
        "adapt.lr=1e-4,adapt.epochs=3",
        "adapt.lr=1e-4,adapt.epochs=5",
    ]
    assert all(v.cache == tmp_path / "cache" for v in variants)
    assert variants[1].overrides == ["dino.epochs=2", "backbone.x=[1,2]", "adapt.lr=1e-5", "adapt.epochs=5"]
    assert sweep_variants(RunSpec(Grid(["oda"], ["S3"]), tmp_path, overrides=["a.b=1"])) is None
    with pytest.raises(UsageError, match="listed twice"):
        sweep_variants(RunSpec(Grid(["oda"], ["S3"]), tmp_path, overrides=["a.b=1,1"]))


def test_a_sweep_shares_unchanged_stages_and_reports_each_variant(cli, tmp_path):
    out = tmp_path / "sweep"
    result = cli(
        "run",
        "--methods",
        "dual-dino",
        "--sources",
        "S8",
        "--targets",
        "S8",
        "--out",
        str(out),
        *tiny_args(*TINY_DUAL, "adapt.lr=1e-4,5e-4", supervised=False),
    )
    assert result.returncode == 0, result.stderr
    variants = json.loads((out / "sweep.json").read_text())["variants"]
    assert variants == ["adapt.lr=1e-4", "adapt.lr=5e-4"]
    computed = [
        sum(s["computed"] for s in json.loads((out / v / "stages.json").read_text()).values())
        for v in variants
    ]
    assert computed == [2, 0]  # step 1 and step 2 once, for both variants
    report = cli("report", str(out), "--format", "csv")
    assert report.returncode == 0, report.stderr
    assert "dual-dino [adapt.lr=1e-4],S8,S8,accuracy" in report.stdout
    assert "dual-dino [adapt.lr=5e-4],S8,S8,accuracy" in report.stdout


def test_a_sweep_table_in_a_grid_file_is_a_comma_list(tmp_path):
    from hcibench.cli import merge_grid_file

    grid = tmp_path / "grid.toml"
    grid.write_text(
        'methods = ["oda"]\n[sweep]\n"adapt.lr" = [1e-5, 1e-4]\n"adapt.trainable" = ["all", "norm"]\n'
    )
    merged = merge_grid_file({"grid_file": str(grid), "methods": None, "overrides": ["a.b=1"]})
    assert merged["overrides"] == ["a.b=1", "adapt.lr=1e-05,0.0001", "adapt.trainable=all,norm"]
    grid.write_text('[sweep]\n"adapt.lr" = 3\n')
    with pytest.raises(UsageError, match="sweep"):
        merge_grid_file({"grid_file": str(grid), "overrides": []})
