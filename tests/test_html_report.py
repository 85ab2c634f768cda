"""The HTML report: self-contained, and number for number the same as the CSV."""

from __future__ import annotations

import base64
import csv
import html
import io
import re
import shutil
import subprocess
import tempfile
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from conftest import run_in_process
from records_factory import make_grid

from hcibench.paper.comparison import html_section
from hcibench.report.html import render_html
from hcibench.report.tables import render

VALUES = {
    ("supervised", "S3", "S3"): 0.386,
    ("supervised", "S3", "S5"): 0.131,
    ("supervised", "S5", "S3"): 0.074,
    ("supervised", "S5", "S5"): 0.355,
    ("coda", "S3", "S3"): 0.402,
    ("coda", "S3", "S5"): 0.329,
    ("coda", "S5", "S3"): 0.263,
    ("coda", "S5", "S5"): 0.366,
}


@pytest.fixture
def run(tmp_path):
    return make_grid(tmp_path / "run", VALUES)


NUM = ' class="num"'


def percent(fraction_text):
    return str((Decimal(fraction_text) * 100).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def test_html_agrees_with_csv(run):
    page = render_html(run)
    rows = list(csv.DictReader(io.StringIO(render(run, "csv"))))
    for r in rows:
        # The all-metrics table holds the CSV row as it is ...
        cells = "".join(f"<td{NUM if i >= 4 else ''}>{html.escape(v)}</td>" for i, v in enumerate(r.values()))
        assert f"<tr>{cells}</tr>" in page
        # ... and the Table-2 layout its percent, rounded the documented way.
        if r["metric"] == "accuracy":
            assert f"{percent(r['mean'])} ± {percent(r['std'])}</td>" in page
    assert '<td class="num diag">40.6 ± 1.7</td>' in page  # in-domain cells marked


def test_html_is_self_contained_with_embedded_figures(run):
    page = render_html(run, extra_sections=[html_section])
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 3  # two heatmaps and the out-of-domain bars
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    for external in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert external not in page
    assert "Statistics against supervised" in page and "Wilcoxon" in page
    assert "Beside the CODA paper" in page and "33.3 ± 0.3" in page


def test_html_caption_matches_markdown(run):
    markdown = render(run, "markdown")
    caption = markdown.splitlines()[0].removeprefix("**Table.** ")
    assert f"<caption>{html.escape(caption, quote=True)}</caption>" in render_html(run, figures=False)


def test_html_without_figures_or_baseline(run):
    page = render_html(run, baseline="dual-dino", figures=False)
    assert "<img" not in page and "baseline method 'dual-dino' is not in this run" in page


hcibench = run_in_process


def test_cli_writes_html_stats_comparison_and_plots(run, tmp_path, capsys):
    out = tmp_path / "report.html"
    status, _, err = hcibench(
        capsys,
        "report",
        str(run),
        "--format",
        "html",
        "--output",
        str(out),
        "--plots",
        str(tmp_path / "figs"),
    )
    assert status == 0, err
    assert "data:image/png;base64," in out.read_text()
    assert (tmp_path / "figs" / "out-of-domain.svg").stat().st_size > 0
    assert "wrote" in err
    status, stdout, _ = hcibench(capsys, "report", str(run), "--stats", "--format", "markdown")
    assert status == 0 and "| coda | S3→S5 | paired t | 3 |" in stdout
    status, stdout, _ = hcibench(capsys, "report", str(run), "--compare", "paper", "--format", "csv")
    assert status == 0 and "coda,S3,S5,accuracy,33.3,1.7,3,33.3,0.3,+0.0" in stdout
    status, _, err = hcibench(capsys, "report", str(run), "--stats", "--compare", "paper")
    assert status == 2 and err.startswith("error: ")
    status, _, err = hcibench(capsys, "report", str(run), "--stats", "--baseline", "nope")
    assert status == 2 and "unknown baseline method 'nope'" in err
    assert len(err.strip().splitlines()) == 1


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed")
def test_html_renders_in_headless_chromium(run, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render_html(run))
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--window-size=1280,2400",
                f"--screenshot={shot}",
                Path(page).as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
    assert shot.is_file() and shot.stat().st_size > 20_000  # a page, not a blank screen
