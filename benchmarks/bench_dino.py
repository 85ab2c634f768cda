"""Throughput and efficiency of one step of the quick preset's DINO (step 1 of the dual model).

Run: ``pytest benchmarks/bench_dino.py --benchmark-only`` (add ``-s`` to see nothing more: the
summary lines are printed either way). For each case it reports, and stores in
``benchmark.extra_info``:

* ``images_per_s``: batch size / median time of a whole step (augmentation of the batch into
  the preset's 2 global + 2 local views, teacher forward, student forward and backward,
  gradient clipping, AdamW, teacher EMA);
* ``step_gflop`` (counted with ``torch.utils.flop_counter.FlopCounterMode`` over one step: the
  matmuls, convolutions and attention of the forward and backward passes) and the achieved
  ``gflop_per_s``, as a ``fraction_of_peak`` of a ViT-shaped matmul (2080×192 @ 192×768) timed
  with ``torch.mm`` in the same dtype and thread setting, in the same run;
* ``augment_share``: the median time of building the views / the median step time;
* ``peak_step_mib``: the peak tensor memory one step allocates above what it started with
  (activations, gradients, temporaries; not the parameters and optimiser state held before it),
  from ``torch.profiler``'s allocation events, with ``process_max_rss_mib`` beside it
  (``memory_method`` says how the peak was measured).

The machine's load average is recorded too: other processes on the same cores make every figure
noisy, the peak-matmul rate included.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time

import pytest
import torch
from measure import max_rss_mib, peak_memory
from torch.utils.flop_counter import FlopCounterMode

from hcibench.compat import ensure_torchvision_importable
from hcibench.train import augment
from hcibench.train.dino import DinoTrainer
from hcibench_plugins.methods.dual import settings as dual_settings
from hcibench_plugins.methods.dual import steps as dual

BATCH = 64  # source images per step, as the quick preset's DINO batch
MATMUL = (2080, 192, 768)  # tokens×dim @ dim×4·dim of a small ViT's MLP


def build(precision: str):
    """The quick preset's step-1 DINO (its ViT, head, crops and schedules) on random images."""
    ensure_torchvision_importable()
    config = dual_settings.config("quick")
    settings = dual.dino_settings(config["dino"], batch_size=BATCH, precision=precision)
    torch.manual_seed(0)
    student, teacher, student_head, teacher_head = dual.build_fe_pair(config, 3, settings)
    trainer = DinoTrainer(student, teacher, student_head, teacher_head, settings, steps_per_epoch=1000)
    size = config["input_size"]
    images = torch.rand(BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    return settings, trainer, images


def matmul_peak(dtype: torch.dtype, rounds: int = 7, reps: int = 20) -> float:
    """Best GFLOP/s of a ViT-shaped ``torch.mm`` in ``dtype`` over a few timed rounds."""
    m, k, n = MATMUL
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    for _ in range(5):
        torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        best = min(best, (time.perf_counter() - start) / reps)
    return 2 * m * k * n / best / 1e9


# All threads (the machine's default) and one thread: on a busy machine a single thread is much
# faster, because the threads of one op wait for each other at every barrier. bf16 autocast is
# slower than fp32 at this model size (the matmuls are too small for AMX to pay off); set
# HCIBENCH_BENCH_BF16=1 to measure it too.
CASES = [("fp32", None), ("fp32", 1)]
if os.environ.get("HCIBENCH_BENCH_BF16"):
    CASES.append(("bf16", None))


@pytest.mark.parametrize(("precision", "threads"), CASES, ids=[f"{p}-{t or 'all'}threads" for p, t in CASES])
def test_dino_step(benchmark, capsys, precision, threads):
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        settings, trainer, images = build(precision)
        generator = torch.Generator().manual_seed(0)
        counter = itertools.count()

        def make_views():
            return augment.multi_crop(
                images, settings.global_size, settings.local_size, settings.n_local, generator
            )

        def step():
            return trainer.step(make_views(), epoch=1, step=next(counter))

        for _ in range(2):
            step()
        benchmark.pedantic(step, rounds=8, iterations=1, warmup_rounds=1)
        step_s = benchmark.stats.stats.median

        augment_times = []
        for _ in range(15):
            start = time.perf_counter()
            make_views()
            augment_times.append(time.perf_counter() - start)
        augment_s = statistics.median(augment_times)

        with FlopCounterMode(display=False) as counter_mode:
            step()
        flops = counter_mode.get_total_flops()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        peak = matmul_peak(dtype)
        trainer.optimizer.zero_grad(set_to_none=True)  # so that no earlier block is freed inside
        memory_mib, memory_method = peak_memory(step)

        info = {
            "precision": precision,
            "threads": torch.get_num_threads(),
            "batch": BATCH,
            "views": f"2x{settings.global_size}px + {settings.n_local}x{settings.local_size}px",
            "step_s": step_s,
            "images_per_s": BATCH / step_s,
            "step_gflop": flops / 1e9,
            "gflop_per_s": flops / step_s / 1e9,
            "matmul_peak_gflop_per_s": peak,
            "matmul_peak_dtype": str(dtype).replace("torch.", ""),
            "fraction_of_peak": flops / step_s / 1e9 / peak,
            "augment_s": augment_s,
            "augment_share": augment_s / step_s,
            "peak_step_mib": memory_mib,
            "memory_method": memory_method,
            "process_max_rss_mib": max_rss_mib(),
            "load_average_1min": os.getloadavg()[0],
        }
        benchmark.extra_info.update(info)
        with capsys.disabled():
            print(
                f"\nDINO step [{precision}, {info['threads']} threads]: "
                f"{info['images_per_s']:.1f} img/s ({step_s * 1e3:.0f} ms/step, batch "
                f"{BATCH}, {info['views']}); {info['step_gflop']:.1f} GFLOP/step -> "
                f"{info['gflop_per_s']:.1f} GFLOP/s = {info['fraction_of_peak']:.0%} of the "
                f"{peak:.0f} GFLOP/s {info['matmul_peak_dtype']} matmul peak; augmentation "
                f"{augment_s * 1e3:.1f} ms = {info['augment_share']:.1%} of a step; peak memory "
                f"{memory_mib:.0f} MiB ({memory_method}; process max RSS "
                f"{info['process_max_rss_mib']:.0f} MiB); load average "
                f"{info['load_average_1min']:.1f}"
            )
    finally:
        torch.set_num_threads(saved_threads)
