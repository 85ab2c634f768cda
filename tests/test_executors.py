"""The grid on other engines: a Dask cluster and SLURM through submitit give the records of the
in-process run, each stage computed once."""

import json
import os
import stat
import sys
import time

import pytest
from conftest import run_cli, tiny_args
from test_dual import TINY_DUAL

# Starts processes (workers, clusters, ranks): `pytest -m 'not slow'` leaves them out.
pytestmark = pytest.mark.slow

SETTINGS = tiny_args(*TINY_DUAL, "threads=1", supervised=False)
# Two groups (dual-dino and oda) sharing their first two stages.
GRID = ["--methods", "dual-dino,oda", "--sources", "S3", "--targets", "S3,S5", "--seeds", "0", *SETTINGS]


def _records(out):
    return {
        p.relative_to(out).as_posix(): json.loads(p.read_text())["metrics"]
        for p in out.glob("records/**/*.json")
    }


def _computed(out):
    stages = json.loads((out / "manifest.json").read_text())["stages"].values()
    return [stage["computed"] for stage in stages]


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """The records of GRID computed in one process, as `hcibench run` does by default."""
    out = tmp_path_factory.mktemp("local") / "run"
    alone = run_cli("run", *GRID, "--out", str(out))
    assert alone.returncode == 0, alone.stderr
    return _records(out)


def test_dask_workers_give_the_records_of_one_process(tmp_path, in_process):
    pytest.importorskip("distributed")
    dask = run_cli("run", *GRID, "--executor", "dask", "--workers", "2", "--out", str(tmp_path / "dask"))
    assert dask.returncode == 0, dask.stderr
    assert _records(tmp_path / "dask") == in_process
    # dual-dino and oda share step 1 and step 2 per seed: each computed once across workers.
    assert _computed(tmp_path / "dask") and set(_computed(tmp_path / "dask")) == {1}
    status = run_cli("status", str(tmp_path / "dask"))
    assert "4 of 4 cells" in status.stdout


def test_a_dask_worker_lost_mid_grid_still_completes_it(tmp_path):
    distributed = pytest.importorskip("distributed")
    from hcibench.run.executors import submit_plan
    from hcibench.run.plan import build_plan
    from hcibench.run.runner import Grid, RunSpec, pending_cells, prepare, start_run_folder

    overrides = [item for item in SETTINGS if item != "--set"]
    spec = RunSpec(
        Grid(["dual-dino", "oda"], ["S3"], ["S3", "S5"], [0, 1]), tmp_path / "run", overrides=overrides
    )
    run = prepare(spec)
    start_run_folder(run)
    plan = build_plan(run, pending_only=True)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        futures = submit_plan(client, spec, plan, threads=1, retries=2)
        workers = {nanny.process.pid for nanny in cluster.workers.values()}
        killed, pid = _a_stage_being_computed(tmp_path / "run" / "stages", workers)
        os.kill(pid, 9)
        client.gather(list(futures.values()))
    assert not pending_cells(prepare(spec))
    assert len(_records(tmp_path / "run")) == 8
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    # The killed stage was computed again elsewhere; every other stage once, for all workers.
    # (Killed in the moment between its count and its file, it counts twice, as it ran twice.)
    assert stages[killed]["computed"] in (1, 2)
    assert {entry["computed"] for stage, entry in stages.items() if stage != killed} == {1}


def _a_stage_being_computed(folder, workers, timeout=600.0):
    """(stage id, worker pid) of a stage that one of ``workers`` is computing now, read from
    the claim the worker holds on it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for claim in folder.glob(".*.claim"):
            try:
                pid = json.loads(claim.read_text())["pid"]
            except (OSError, ValueError, KeyError):  # released, or not yet written
                continue
            if pid in workers:
                return claim.name[1 : -len(".claim")], pid
        time.sleep(0.02)
    raise AssertionError(f"no worker claimed a stage in {folder} within {timeout:.0f} s")


def _fake_sbatch(folder):
    """A stand-in ``sbatch`` that records each submission and answers with a job id."""
    log = folder / "sbatch.log"
    script = folder / "sbatch"
    script.write_text(
        "#!/bin/sh\n"
        f"n=$(ls {folder}/submitted 2>/dev/null | wc -l)\n"
        f"mkdir -p {folder}/submitted\n"
        f'cp "$1" {folder}/submitted/job$n.sh\n'
        f'echo "$@" >> {log}\n'
        'echo "Submitted batch job $((4242 + n))"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder / "submitted"


def test_slurm_submits_the_plan_with_its_dependencies_and_resources(tmp_path):
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    submitted = _fake_sbatch(bin_dir)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = tmp_path / "run"
    result = run_cli(
        "run",
        *GRID,
        "--executor",
        "slurm",
        "--slurm",
        "slurm_partition=gpu",
        "--slurm",
        "gpus_per_node=1",
        "--set",
        "resources.hours=1.5",
        "--out",
        str(out),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    said = " ".join((result.stdout + result.stderr).split())
    # fe-dino, task, adapt on S3 and on S5, cells of dual-dino and of oda
    assert "6 SLURM job(s) submitted (4242, 4243, 4244, 4245, 4246, ...)" in said
    scripts = [(submitted / f"job{i}.sh").read_text() for i in range(6)]
    for text in scripts:
        assert "#SBATCH --partition=gpu" in text
        assert "#SBATCH --gpus-per-node=1" in text
        assert "#SBATCH --time=90" in text  # resources.hours
        assert "#SBATCH --signal=USR2@" in text  # requeued with its work on a time-out

    def dependency(job_name: str) -> str:
        (text,) = [t for t in scripts if f"--job-name=hcibench-{job_name}" in t]
        line = [x for x in text.splitlines() if x.startswith("#SBATCH --dependency=")]
        return line[0].split("=", 1)[1] if line else ""

    ids = {
        f"hcibench-{name}": str(4242 + i)
        for i, name in enumerate(t.split("--job-name=hcibench-", 1)[1].split("\n", 1)[0] for t in scripts)
    }
    names = [name.removeprefix("hcibench-") for name in ids]
    fe = next(n for n in names if n.startswith("fe-dino-"))
    task = next(n for n in names if n.startswith("task-"))
    adapts = [n for n in names if n.startswith("adapt-")]
    assert dependency(fe) == ""  # step 1 needs nothing
    assert dependency(task) == f"afterok:{ids['hcibench-' + fe]}"  # step 2 after step 1
    assert len(adapts) == 2 and all(  # step 3 on each target after step 2
        dependency(a) == f"afterok:{ids['hcibench-' + task]}" for a in adapts
    )
    assert dependency("cells-oda-S3-seed0") == "afterok:" + ":".join(
        ids["hcibench-" + n] for n in (fe, task, *adapts)
    )
    assert not _records(out)  # submitted only: the jobs write the records


def test_slurm_jobs_run_end_to_end_through_the_local_executor(tmp_path, in_process):
    pytest.importorskip("submitit")
    out = tmp_path / "run"
    grid = [item if item != "dual-dino,oda" else "dual-dino" for item in GRID]  # 3 jobs
    result = run_cli("run", *grid, "--executor", "slurm", "--slurm", "cluster=local", "--out", str(out))
    assert result.returncode == 0, result.stderr
    deadline = time.time() + 300
    while time.time() < deadline and len(_records(out)) < 2:
        time.sleep(1)
    assert len(_records(out)) == 2, run_cli("status", str(out)).stdout
    assert _records(out) == {k: v for k, v in in_process.items() if "dual-dino" in k}
    assert set(_computed(out)) == {1}
    assert "2 of 2 cells" in run_cli("status", str(out)).stdout


def test_a_missing_engine_says_which_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    from hcibench.errors import UsageError
    from hcibench.run.executors import ExecutorOptions, run_with_dask
    from hcibench.run.runner import Grid, RunSpec

    spec = RunSpec(Grid(["dual-dino"], ["S3"], ["S3"], [0]), tmp_path / "run")
    with pytest.raises(UsageError, match=r"pip install 'hcibench\[dask\]'"):
        run_with_dask(spec, ExecutorOptions("dask"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"workers": "2"}, "--workers is an option of --executor dask"),
        ({"executor": "dask", "workers": "0"}, "bad --workers '0'"),
        ({"executor": "slurm", "slurm_options": ["partition"]}, "bad --slurm 'partition'"),
    ],
)
def test_bad_executor_options_are_refused(options, message):
    from hcibench.cli import executor_options
    from hcibench.errors import UsageError

    with pytest.raises(UsageError, match=message):
        executor_options(options)


def test_a_bad_executor_option_is_one_line_and_writes_nothing(tmp_path):
    result = run_cli("run", *GRID, "--workers", "2", "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --workers is an option of --executor dask"]
    assert not (tmp_path / "run").exists()
