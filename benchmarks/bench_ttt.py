"""Test-time training throughput: batched (vmap over per-image weights) against the
one-image-at-a-time reference, measured in the same run on the quick configuration.

Run: ``pytest benchmarks/bench_ttt.py --benchmark-only -s``. Reports images/s of both paths,
their ratio (the figure to watch; the machine is noisy, so absolute rates are not), and the peak
tensor memory of each (``torch.profiler`` allocation events).
"""

from __future__ import annotations

import time

import torch
from measure import peak_memory

from hcibench.run.presets import QUICK
from hcibench.train.backbones import create_vit
from hcibench.train.mae import MaskedAutoencoder, build_decoder
from hcibench_plugins.methods.dual.mae_steps import mae_settings
from hcibench_plugins.methods.dual.steps import TaskModel
from hcibench_plugins.methods.dual.ttt import TTTSettings, ttt_batched, ttt_sequential

SEQUENTIAL_IMAGES = 8  # the reference is slow; its rate is per image, so fewer images suffice


def build():
    torch.manual_seed(0)
    encoder = create_vit(QUICK["backbone"])
    settings = mae_settings(QUICK["mae"])
    mae = MaskedAutoencoder(encoder, build_decoder(encoder, settings, 3), settings)
    mae.decoder.requires_grad_(False)
    task = TaskModel(encoder.embed_dim, QUICK["task"]["model"], 10).eval().requires_grad_(False)
    return mae, task


def test_ttt_batched_vs_sequential(benchmark):
    mae, task = build()
    settings = TTTSettings(steps=5, copies=16, chunk=32)
    size = QUICK["input_size"]
    images = torch.rand(settings.chunk, 3, size, size)

    started = time.perf_counter()
    ttt_sequential(mae, task, images[:SEQUENTIAL_IMAGES], settings, size)
    sequential_rate = SEQUENTIAL_IMAGES / (time.perf_counter() - started)

    benchmark.pedantic(ttt_batched, args=(mae, task, images, settings, size), rounds=2, warmup_rounds=0)
    batched_rate = settings.chunk / benchmark.stats.stats.median

    sequential_mib, method = peak_memory(
        lambda: ttt_sequential(mae, task, images[:SEQUENTIAL_IMAGES], settings, size)
    )
    batched_mib, _ = peak_memory(lambda: ttt_batched(mae, task, images, settings, size))
    ratio = batched_rate / sequential_rate
    benchmark.extra_info.update(
        {
            "batched_images_per_s": batched_rate,
            "sequential_images_per_s": sequential_rate,
            "speedup": ratio,
            "batched_peak_mib": batched_mib,
            "sequential_peak_mib": sequential_mib,
            "memory_method": method,
            "steps": settings.steps,
            "copies": settings.copies,
            "chunk": settings.chunk,
        }
    )
    print(
        f"\nTTT ({settings.steps} steps × {settings.copies} copies, quick ViT): batched "
        f"{batched_rate:.2f} img/s (chunk {settings.chunk}), one-at-a-time "
        f"{sequential_rate:.2f} img/s -> speed-up {ratio:.1f}x; peak memory batched "
        f"{batched_mib:.0f} MiB, one-at-a-time {sequential_mib:.0f} MiB ({method})"
    )
