"""One DINO stage over two processes (gloo on the CPU) equals the same stage in one process with
the same global batch: teacher weights and loss curve within 1e-5."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_dino import domain, models, tiny_settings

from hcibench.run import distributed
from hcibench.train.dino import train_dino

# Starts processes (workers, clusters, ranks): `pytest -m 'not slow'` leaves them out.
pytestmark = pytest.mark.slow

# Batch-norm off and no drop-path: both draw from per-process state (batch statistics of a
# slice, the global RNG) and would differ from one process by design.
SETTINGS = dict(epochs=2, batch_size=8, drop_path=0.0, head_batch_norm=False)


def _train(cross_batch: bool):
    settings = tiny_settings(**SETTINGS, cross_batch=cross_batch)
    student, teacher, student_head, teacher_head = models(settings)
    stats = train_dino(
        student,
        teacher,
        student_head,
        teacher_head,
        domain(n=24),
        settings,
        generator=torch.Generator().manual_seed(3),
    )
    return stats["epoch_losses"], {
        **teacher.state_dict(),
        **{f"head.{k}": v for k, v in teacher_head.state_dict().items()},
    }


def _rank(rank: int, world: int, port: int, cross_batch: bool, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        losses, state = _train(cross_batch)
        if distributed.is_main():
            torch.save({"losses": losses, "state": state}, out)
        dist.barrier()  # neither rank leaves while the other still talks to the group
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("cross_batch", [False, True])
def test_two_gloo_ranks_train_the_same_teacher_as_one_process(tmp_path, cross_batch):
    torch.set_num_threads(1)
    losses, state = _train(cross_batch)
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_rank, args=(2, _free_port(), cross_batch, out), nprocs=2, join=True)
    two = torch.load(out)
    assert two["losses"] == pytest.approx(losses, abs=1e-5)
    assert set(two["state"]) == set(state)
    for name, value in state.items():
        torch.testing.assert_close(
            two["state"][name], value, atol=1e-5, rtol=0, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_a_batch_that_does_not_split_over_the_ranks_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    with pytest.raises(ValueError, match="multiple of 3"):
        distributed.local_slice(torch.zeros(8, 2))
    assert len(distributed.local_slice(torch.zeros(9, 2))) == 3


def test_torchrun_runs_a_grid_as_one_process_does(tmp_path):
    """``torchrun --nproc_per_node=2 -m hcibench.cli run``: the stages are trained by both
    processes together, rank 0 alone writes, and the records are those of one process."""
    from conftest import run_cli, tiny_args
    from test_dual import TINY_DUAL

    grid = [
        "--methods",
        "oda",
        "--sources",
        "S3",
        "--targets",
        "S3,S5",
        *tiny_args(
            *TINY_DUAL, "dino.drop_path=0.0", "dino.head_batch_norm=false", "threads=1", supervised=False
        ),
    ]
    alone = run_cli("run", *grid, "--out", str(tmp_path / "one"))
    assert alone.returncode == 0, alone.stderr
    together = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "hcibench.cli",
            "run",
            *grid,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert together.returncode == 0, together.stderr[-3000:]

    def records(name):
        return {
            p.relative_to(tmp_path / name): json.loads(p.read_text())
            for p in (tmp_path / name).glob("records/**/*.json")
        }

    one, two = records("one"), records("two")
    assert set(one) == set(two) and len(one) == 2
    for path, record in one.items():
        assert two[path]["metrics"]["accuracy"] == pytest.approx(record["metrics"]["accuracy"], abs=0.02), (
            path
        )
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert all(stage["computed"] == 1 for stage in manifest["stages"].values())


def test_one_stage_job_trained_by_two_torchrun_processes(tmp_path):
    """``torchrun ... hcibench stage run OUT ID`` (what a SLURM job of two tasks runs): both
    processes train the stage together and rank 0 writes its file."""
    from conftest import run_cli, tiny_args
    from test_dual import TINY_DUAL

    grid = [
        "--methods",
        "oda",
        "--sources",
        "S3",
        "--targets",
        "S5",
        *tiny_args(
            *TINY_DUAL, "dino.drop_path=0.0", "dino.head_batch_norm=false", "threads=1", supervised=False
        ),
    ]
    out = tmp_path / "run"
    assert run_cli("run", *grid, "--out", str(out)).returncode == 0
    jobs = json.loads(run_cli("plan", *grid, "--json").stdout)
    adapt = next(job["id"] for job in jobs if job["name"] == "adapt")
    stage = out / "stages" / f"{adapt}.pt"
    stage.unlink()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "hcibench.cli",
            "stage",
            "run",
            str(out),
            adapt,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Each rank says what it did: both computed (together); a rank working alone would have
    # waited for the other's file and said "already there".
    assert result.stdout.count(f"{adapt}: computed") == 2, result.stdout
    assert stage.exists()
