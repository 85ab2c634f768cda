"""Figures are written for hand-made records; optional ones only when the records allow."""

from __future__ import annotations

import pytest
from records_factory import make_grid, write_manifest, write_record

from hcibench.errors import UsageError
from hcibench.report.plots import build_plots, write_plots

VALUES = {
    ("supervised", "S3", "S3"): 0.39,
    ("supervised", "S3", "S5"): 0.13,
    ("supervised", "S5", "S3"): 0.08,
    ("supervised", "S5", "S5"): 0.36,
    ("ttt", "S3", "S3"): 0.38,
    ("ttt", "S3", "S5"): 0.15,
    ("ttt", "S5", "S3"): 0.10,
    ("ttt", "S5", "S5"): 0.35,
    ("coda", "S3", "S3"): 0.40,
    ("coda", "S3", "S5"): 0.33,
    ("coda", "S5", "S3"): 0.27,
    ("coda", "S5", "S5"): 0.37,
}


def steps(method, source, target, seed, acc):
    if method != "ttt":
        return {}
    return {f"accuracy@steps={k}": acc - 0.02 * (3 - k) for k in range(4)}


@pytest.fixture
def run(tmp_path):
    return make_grid(tmp_path / "run", VALUES, extra=steps)


def test_plots_are_written(run, tmp_path):
    out = tmp_path / "plots"
    paths = write_plots(run, out)
    names = sorted(p.name for p in paths)
    for stem in ("heatmap-supervised", "heatmap-ttt", "heatmap-coda", "out-of-domain", "ttt-steps"):
        assert f"{stem}.png" in names and f"{stem}.svg" in names
    assert all(p.stat().st_size > 1000 for p in paths)
    assert (out / "out-of-domain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any("granularity" in n for n in names)  # no info.granularity: skipped quietly
    svg = (out / "heatmap-coda.svg").read_text()
    assert "n = 3 seeds" in svg and "33.4" in svg  # title and an annotated cell


def test_granularity_plot_when_settings_differ(tmp_path):
    run = tmp_path / "run"
    for seed in (0, 1):
        for target, base in (("S11", 0.1), ("S5", 0.12)):
            write_record(run, "supervised", "S3", target, seed, {"accuracy": base + seed / 100})
            metrics = {"accuracy": 0.3 + seed / 100, "accuracy@batch=B1": 0.25, "accuracy@batch=B2": 0.27}
            write_record(
                run, "oda", "S3", target, seed, metrics, info={"granularity": "batch", "eval_on": "full"}
            )
    write_manifest(run, ["supervised", "oda"], ["S3", "S5", "S11"], [0, 1])
    names = [plot.name for plot in build_plots(run)]
    assert "granularity" in names and "ttt-steps" not in names
    paths = write_plots(run, tmp_path / "out", formats=("png", "pdf"))
    assert (tmp_path / "out" / "granularity.pdf").stat().st_size > 1000
    assert len(paths) == 2 * len(names)


def test_one_granularity_only_is_skipped(tmp_path):
    run = tmp_path / "run"
    for method in ("oda", "coda"):
        for seed in (0, 1):
            write_record(
                run,
                method,
                "S3",
                "S5",
                seed,
                {"accuracy": 0.3},
                info={"granularity": "source", "eval_on": "subset"},
            )
    assert "granularity" not in [plot.name for plot in build_plots(run)]


def test_bad_plot_requests(run, tmp_path):
    with pytest.raises(UsageError, match="unknown metric"):
        write_plots(run, tmp_path / "x", metric="auc")
    with pytest.raises(UsageError, match="plot format"):
        write_plots(run, tmp_path / "x", formats=("gif",))
