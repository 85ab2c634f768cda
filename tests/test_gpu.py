"""The CUDA path: skipped where torch sees no GPU (``pytest -m gpu`` runs these alone, as
``benchmarks/gpu_check.sh`` does on a GPU machine)."""

import json

import pytest
import torch
from conftest import tiny_args
from test_dino import domain, models, tiny_settings
from test_dual import TINY_DUAL

from hcibench.run import accelerator
from hcibench.train.dino import DinoTrainer, train_dino

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")


def _trained(device, precision="fp32"):
    settings = tiny_settings(epochs=2, batch_size=8, drop_path=0.0, precision=precision)
    student, teacher, student_head, teacher_head = (m.to(device) for m in models(settings))
    stats = train_dino(
        student,
        teacher,
        student_head,
        teacher_head,
        domain(n=24),
        settings,
        generator=torch.Generator().manual_seed(3),
    )
    return stats, teacher


def test_dino_on_cuda_follows_the_cpu_run():
    cpu_stats, cpu_teacher = _trained(torch.device("cpu"))
    gpu_stats, gpu_teacher = _trained(CUDA)
    assert gpu_stats["epoch_losses"] == pytest.approx(cpu_stats["epoch_losses"], abs=1e-3)
    for (name, a), b in zip(cpu_teacher.state_dict().items(), gpu_teacher.state_dict().values()):
        torch.testing.assert_close(b.cpu(), a, atol=1e-3, rtol=1e-3, msg=name)


def test_dino_in_bf16_on_cuda_trains():
    stats, _ = _trained(CUDA, "bf16")
    assert all(torch.isfinite(torch.tensor(stats["epoch_losses"])))


def test_a_dino_step_never_waits_for_the_gpu():
    settings = tiny_settings(batch_size=8, drop_path=0.0, clip_mode="global")
    student, teacher, student_head, teacher_head = (m.to(CUDA) for m in models(settings))
    trainer = DinoTrainer(student, teacher, student_head, teacher_head, settings, 10)
    views = [
        torch.rand(8, 3, 16, 16, device=CUDA),
        torch.rand(8, 3, 16, 16, device=CUDA),
        torch.rand(8, 3, 8, 8, device=CUDA),
        torch.rand(8, 3, 8, 8, device=CUDA),
    ]
    trainer.step(views, epoch=1, step=0)  # the first step allocates the optimiser's state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.step(views, epoch=1, step=1)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_precision_auto_is_bf16_on_cuda():
    assert accelerator.resolve_precision("auto", CUDA) == "bf16"


def test_the_grid_runs_on_the_gpu_and_says_so(tmp_path, cli):
    out = tmp_path / "run"
    result = cli(
        "run",
        "--methods",
        "supervised,oda,ttt",
        "--sources",
        "S3",
        "--targets",
        "S3,S5",
        "--out",
        str(out),
        *tiny_args(*TINY_DUAL, "device=cuda", "mae.epochs=1"),
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(p.read_text()) for p in out.glob("records/**/*.json")]
    assert records
    assert all(r["computed_with"].get("device") == torch.cuda.get_device_name() for r in records)


def test_batches_read_ahead_arrive_pinned_and_in_order():
    batches = [(torch.full((2, 3), float(i)), i) for i in range(5)]
    got = list(accelerator.prefetch(iter(batches), CUDA))
    assert [b[1] for b in got] == list(range(5))
    assert all(b[0].is_pinned() and b[0][0, 0] == b[1] for b in got)
