"""A plugin package written from the README alone is installed with pip and runs in the grid."""

import json
import os
import re
import subprocess
import sys

from conftest import REPO, run_cli


def _readme_blocks(language):
    text = (REPO / "README.md").read_text()
    section = text.split("## Writing a plugin", 1)[1]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def test_readme_plugin_installs_and_runs_through_the_cli(tmp_path):
    package = tmp_path / "hcibench-majority"
    package.mkdir()
    (package / "pyproject.toml").write_text(_readme_blocks("toml")[0])
    (package / "hcibench_majority.py").write_text(_readme_blocks("python")[0])
    site = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(package),
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}

    listed = run_cli("plugins", env=env)
    assert re.search(
        r"^majority\s+hcibench-majority 0\.1\.0\s+register_methods", listed.stdout, flags=re.M
    ), listed.stdout

    out = tmp_path / "run"
    result = run_cli(
        "run",
        "--methods",
        "majority",
        "--sources",
        "S3",
        "--targets",
        "S3,S5",
        "--out",
        str(out),
        "--set",
        "dataset.scale=0.34",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "records/majority/S3/S5/seed0.json").read_text())
    assert 0 < record["metrics"]["accuracy"] < 0.5  # a constant guess: one class's share
