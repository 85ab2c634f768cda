"""A run folder that nothing corrupts: damaged files, leftovers, concurrent commands."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
from conftest import tiny_args

from hcibench.errors import UsageError
from hcibench.run.stages import StageCache

RUN = ["run", "--methods", "supervised", "--sources", "S8", "--targets", "S8,S11"]


def _command(out, *overrides):
    return [sys.executable, "-m", "hcibench.cli", *RUN, "--out", str(out), *tiny_args(*overrides)]


def _metrics(out):
    return {
        p.relative_to(out).as_posix(): json.loads(p.read_text())["metrics"]
        for p in (out / "records").rglob("*.json")
    }


def test_doctor_lists_and_fixes_damage_and_the_run_recomputes_it(cli, tmp_path):
    out = tmp_path / "run"
    assert subprocess.run(_command(out), capture_output=True).returncode == 0
    before = _metrics(out)
    record = out / "records/supervised/S8/S11/seed0.json"
    record.write_text(record.read_text()[:30])
    (out / "manifest.json").write_text("{not json")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    leftover = out / "records/supervised/S8" / f".seed0.json.{dead}.abc123.tmp"
    leftover.write_text("partial")
    report = cli("doctor", str(out))
    assert report.returncode == 0, report.stderr
    for name in (
        "seed0.json: record is damaged",
        "manifest.json: the manifest does not parse",
        "abc123.tmp: temporary file",
    ):
        assert name in report.stdout, report.stdout
    fixed = cli("doctor", str(out), "--fix")
    assert "removed 3 file(s)" in fixed.stdout
    again = subprocess.run(_command(out), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "1 cell(s) computed" in again.stderr
    assert _metrics(out) == before
    assert "nothing damaged" in cli("doctor", str(out)).stdout


def test_a_truncated_record_is_recomputed_without_doctor(tmp_path):
    out = tmp_path / "run"
    assert subprocess.run(_command(out), capture_output=True).returncode == 0
    record = out / "records/supervised/S8/S8/seed0.json"
    record.write_text("{")
    again = subprocess.run(_command(out), capture_output=True, text=True)
    assert again.returncode == 0 and "1 cell(s) computed" in again.stderr
    assert json.loads(record.read_text())["metrics"]["accuracy"] >= 0


def test_two_commands_at_once_on_one_folder(tmp_path):
    same = tmp_path / "same"
    runs = [
        subprocess.Popen(_command(same), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errors = [run.communicate(timeout=600)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    stage_files = list((same / "stages").glob("*.pt"))
    assert len(stage_files) == 1
    counts = json.loads((same / "stages.json").read_text())
    assert [c["computed"] for c in counts.values()] == [1]
    computed = [int(re.search(r"(\d+) cell\(s\) computed", e).group(1)) for e in errors]
    assert sorted(computed) == [0, 2]  # each cell by one of the two
    single = tmp_path / "single"
    assert subprocess.run(_command(single), capture_output=True).returncode == 0
    assert _metrics(same) == _metrics(single)

    other = tmp_path / "other"
    runs = [
        subprocess.Popen(
            _command(other, f"supervised.lr={lr}"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for lr in (1e-3, 2e-3)
    ]
    errors = [run.communicate(timeout=600)[1] for run in runs]
    assert sorted(run.returncode for run in runs) == [0, 2], errors
    assert any("holds a run made with other settings of method supervised" in e for e in errors)


def test_a_stage_reused_with_another_thread_count_says_so(tmp_path):
    said = []
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        StageCache(tmp_path).get("fe", {"k": 1}, lambda: {"w": torch.ones(2)})
        torch.set_num_threads(2)
        value = StageCache(tmp_path, log=said.append).get("fe", {"k": 1}, lambda: {"w": None})
        with pytest.raises(UsageError, match="without --strict"):
            StageCache(tmp_path, strict=True).get("fe", {"k": 1}, lambda: {"w": None})
    finally:
        torch.set_num_threads(threads)
    assert value["computed_with"]["threads"] == 1 and torch.equal(value["w"], torch.ones(2))
    assert len(said) == 1 and "'threads': 1" in said[0]


class _Killed(BaseException):
    """A process ending where it stands, as SIGKILL would end it."""


def test_a_process_killed_as_it_writes_a_stage_leaves_the_stage_counted(tmp_path, monkeypatch):
    from hcibench.run import stage_store

    save = stage_store.storage.save_torch

    def save_then_die(path, value):
        save(path, value)
        raise _Killed

    monkeypatch.setattr(stage_store.storage, "save_torch", save_then_die)
    with pytest.raises(_Killed):
        StageCache(tmp_path).get("fe", {"k": 1}, lambda: {"w": torch.ones(2)})
    monkeypatch.setattr(stage_store.storage, "save_torch", save)
    value = StageCache(tmp_path).get("fe", {"k": 1}, lambda: {"w": None})
    assert torch.equal(value["w"], torch.ones(2))  # the file survived: nothing computed again
    (counts,) = json.loads((tmp_path / "stages.json").read_text()).values()
    assert (counts["computed"], counts["reused"]) == (1, 1)


def test_the_manifest_shows_the_stages_of_every_process_sharing_the_folder(tmp_path):
    from hcibench.run.runner import Grid, RunSpec, prepare, start_run_folder, write_manifest

    overrides = [item for item in tiny_args() if item != "--set"]
    run = prepare(RunSpec(Grid(["supervised"], ["S8"], ["S8"], [0]), tmp_path / "run", overrides=overrides))
    start_run_folder(run)
    mine, theirs = StageCache(run.out), StageCache(run.out)  # as two processes would hold them
    mine.get("fe", {"k": 1}, lambda: {"w": torch.ones(2)})
    theirs.get("fe", {"k": 2}, lambda: {"w": torch.zeros(2)})
    write_manifest(run, mine)  # written by the process that counted first
    stages = json.loads((run.out / "manifest.json").read_text())["stages"]
    assert sorted(entry["key"]["k"] for entry in stages.values()) == [1, 2]


def test_status_tells_a_claim_left_by_a_killed_process_from_one_at_work(tmp_path):
    from hcibench.run.status import render_status

    out = tmp_path / "run"
    (out / "stages").mkdir(parents=True)
    grid = {"methods": ["supervised"], "sources": ["S3"], "targets": ["S3"], "seeds": [0]}
    (out / "manifest.json").write_text(json.dumps({"grid": grid}))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for holder, claim in [
        (dead.pid, out / ".cells-supervised-S3-seed0.claim"),
        (os.getpid(), out / "stages" / ".fe-1.claim"),
    ]:
        claim.write_text(json.dumps({"pid": holder, "host": socket.gethostname(), "started": "then"}))
    text = render_status(out)
    assert f"not computing cells-supervised-S3-seed0: its process is gone (pid {dead.pid}" in text
    assert f"  computing fe-1 (pid {os.getpid()}" in text
