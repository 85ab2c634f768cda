"""The grid runner: records per cell, resume without retraining, determinism, run manifest."""

import json
import subprocess
import sys
import time

from conftest import tiny_args


def _records(out):
    return sorted(p.relative_to(out).as_posix() for p in (out / "records").rglob("*.json"))


def _metrics(out):
    return {
        p.relative_to(out).as_posix(): json.loads(p.read_text())["metrics"]
        for p in (out / "records").rglob("*.json")
    }


def test_grid_writes_one_record_per_cell_and_a_manifest(cli, tmp_path):
    out = tmp_path / "run"
    result = cli(
        "run",
        "--methods",
        "supervised",
        "--sources",
        "S3",
        "--targets",
        "S3,S5,S8",
        "--seeds",
        "0,1",
        "--out",
        str(out),
        *tiny_args(),
    )
    assert result.returncode == 0, result.stderr
    assert len(_records(out)) == 6
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["grid"]["seeds"] == [0, 1]
    assert manifest["config"]["supervised"]["epochs"] == 2
    assert manifest["versions"]["torch"] and "git_revision" in manifest
    stages = manifest["stages"].values()
    assert sorted(s["computed"] for s in stages) == [1, 1]  # one fit per seed, reused per target
    record = json.loads((out / "records/supervised/S3/S5/seed1.json").read_text())
    assert record["in_domain"] is False and 0 <= record["metrics"]["accuracy"] <= 1


def test_rerun_trains_nothing_and_same_seed_gives_same_numbers(cli, tmp_path):
    args = ["run", "--methods", "supervised", "--sources", "S3", "--targets", "S3,S5", *tiny_args()]
    first = cli(*args, "--out", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr
    written = [*(tmp_path / "a" / "records").rglob("*.json"), *(tmp_path / "a" / "stages").glob("*.pt")]
    assert any(p.suffix == ".pt" for p in written), "the first run kept no stage"
    before = {p: p.stat().st_mtime_ns for p in written}
    again = cli(*args, "--out", str(tmp_path / "a"))
    assert again.returncode == 0, again.stderr
    assert "0 cell(s) computed" in again.stderr
    # Neither a record nor a trained stage is written again (checked on files, not on the
    # clock: a loaded machine makes any time limit flaky).
    assert before == {p: p.stat().st_mtime_ns for p in before}
    twin = cli(*args, "--out", str(tmp_path / "b"))
    assert twin.returncode == 0, twin.stderr
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")


def test_a_killed_run_resumes_without_redoing_finished_cells(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "hcibench.cli",
        "run",
        "--methods",
        "supervised",
        "--sources",
        "S3,S5",
        "--targets",
        "S3,S5",
        "--out",
        str(out),
        *tiny_args(),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill as soon as the first record lands; the limit only guards against a hang, and is
    # generous because a loaded machine can take minutes to get there.
    deadline = time.time() + 1800
    while not list((out / "records").rglob("*.json")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.kill()  # SIGKILL; nothing to do if the run already ended (poll reaped it)
    process.wait()
    finished = {p: p.stat().st_mtime_ns for p in (out / "records").rglob("*.json")}
    assert finished, "no record was written before the kill"
    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert len(_records(out)) == 4
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in finished.items())
    assert not [p for p in out.rglob(".*.tmp")]


def test_changed_settings_in_the_same_folder_are_refused(cli, tmp_path):
    out = tmp_path / "run"
    args = ["run", "--methods", "supervised", "--sources", "S3", "--targets", "S3", "--out", str(out)]
    assert cli(*args, *tiny_args()).returncode == 0
    changed = cli(*args, *tiny_args("supervised.lr=0.01"))
    assert changed.returncode == 2
    assert "other settings" in changed.stderr and len(changed.stderr.strip().splitlines()) == 1


def test_a_later_command_may_add_a_method_but_not_change_one(cli, tmp_path):
    out = tmp_path / "run"
    base = ["run", "--sources", "S8", "--targets", "S8", "--out", str(out)]
    first = cli(*base, "--methods", "supervised", *tiny_args())
    assert first.returncode == 0, first.stderr
    # dual-dino's sections (dino, task) are its own: setting them concerns its records only.
    dual = (
        "dino.epochs=1",
        "dino.n_local=2",
        "dino.head_out_dim=64",
        "task.epochs=1",
        "task.model.depth=1",
        "task.model.embed_dim=32",
        "task.model.num_heads=2",
    )
    added = cli(*base, "--methods", "supervised,dual-dino", *tiny_args(*dual))
    assert added.returncode == 0, added.stderr
    assert "1 cell(s) computed" in added.stderr
    changed_dino = cli(*base, "--methods", "dual-dino", *tiny_args(*dual, "dino.lr=0.01", supervised=False))
    assert changed_dino.returncode == 2 and "settings of method dual-dino" in changed_dino.stderr
    changed = cli(*base, "--methods", "supervised", *tiny_args("supervised.lr=0.01"))
    assert changed.returncode == 2 and "settings of method supervised" in changed.stderr
    shared = cli(*base, "--methods", "supervised", *tiny_args("split.val_plates=0"))
    assert shared.returncode == 2 and "shared settings" in shared.stderr
    report = cli("report", str(out), "--format", "csv")
    assert report.returncode == 0, report.stderr
    assert "supervised,S8,S8,accuracy" in report.stdout and "dual-dino,S8,S8" in report.stdout
