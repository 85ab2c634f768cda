"""`hcibench plan`: the stages a grid will compute, named before anything runs, and
`hcibench stage run`: one job of the plan at a time."""

import json

import pytest
from conftest import run_cli, tiny_args
from test_dual import TINY_DUAL

METHODS = "supervised,dual-dino,oda,oda-mae"
GRID = [
    "--methods",
    METHODS,
    "--sources",
    "S3",
    "--targets",
    "S3,S5",
    *tiny_args(*TINY_DUAL, "mae.epochs=1", "threads=1"),
]


@pytest.fixture(scope="module")
def planned_and_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "run"
    plan = run_cli("plan", *GRID, "--json")
    assert plan.returncode == 0, plan.stderr
    result = run_cli("run", *GRID, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return json.loads(plan.stdout), out


def test_the_plan_names_exactly_the_stages_a_run_computes(planned_and_run):
    jobs, out = planned_and_run
    stage_ids = {job["id"] for job in jobs if job["kind"] == "stage"}
    assert stage_ids == {path.stem for path in (out / "stages").glob("*.pt")}
    manifest = json.loads((out / "manifest.json").read_text())
    assert stage_ids == set(manifest["stages"])


def test_shared_stages_are_one_job_and_each_job_comes_after_what_it_needs(planned_and_run):
    jobs, _ = planned_and_run
    by_name = {}
    for job in jobs:
        by_name.setdefault(job["name"], []).append(job)
    (fe,) = by_name["fe-dino"]  # step 1 of dual-dino and of oda: one job
    assert fe["used_by"] == ["dual-dino", "oda"] and fe["needs"] == []
    (task,) = [job for job in by_name["task"] if fe["id"] in job["needs"]]
    assert len(by_name["adapt"]) == 2  # oda on S3 (its held-out plates) and on S5
    assert all(job["needs"] == [task["id"]] for job in by_name["adapt"])
    assert len(by_name["adapt-mae"]) == 2
    seen = set()
    for job in jobs:
        assert set(job["needs"]) <= seen, job["id"]
        seen.add(job["id"])
    cells = [job for job in jobs if job["kind"] == "cells"]
    assert sorted(job["name"] for job in cells) == sorted(METHODS.split(","))


def test_stage_run_computes_one_stage_only_when_its_file_is_missing(planned_and_run):
    jobs, out = planned_and_run
    adapt = next(job for job in jobs if job["name"] == "adapt")
    again = run_cli("stage", "run", str(out), adapt["id"])
    assert again.returncode == 0, again.stderr
    assert f"{adapt['id']}: already there" in again.stdout
    stage = out / "stages" / f"{adapt['id']}.pt"
    stage.unlink()
    redo = run_cli("stage", "run", str(out), adapt["id"])
    assert f"{adapt['id']}: computed" in redo.stdout, redo.stderr
    assert stage.exists()


def test_an_unknown_job_is_one_line(planned_and_run):
    _, out = planned_and_run
    result = run_cli("stage", "run", str(out), "fe-dino-000000000000")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no job 'fe-dino-000000000000'" in result.stderr


def test_a_method_that_declares_no_stages_is_one_cells_job(tmp_path):
    import hcibench
    from hcibench import plugins
    from hcibench.run.plan import build_plan
    from hcibench.run.runner import Grid, RunSpec, prepare

    class Plain(hcibench.Method):
        name = "plain"

    class Registrar:
        @hcibench.hookimpl
        def register_methods(self, register):
            register(Plain)

    plugins.manager().register(Registrar())
    run = prepare(
        RunSpec(Grid(["plain"], ["S3"], ["S3", "S5"], [0, 1]), out=tmp_path, overrides=["dataset.scale=0.34"])
    )
    plan = build_plan(run)
    assert [job.id for job in plan.jobs.values()] == ["cells-plain-S3-seed0", "cells-plain-S3-seed1"]
    assert all(job.needs == [] for job in plan.jobs.values())
