"""GPU figures measured in one run (``benchmarks/gpu_check.sh`` calls this on a CUDA machine).

* ``dino``: one DINO step of the paper preset (DeiT-S, 2 global 224 px + 6 local 96 px crops,
  the reference head, AdamW, global clipping, teacher EMA) on random images, in fp32 and in
  bf16 autocast: images/s, the step's FLOPs (``FlopCounterMode``: matmuls, convolutions and
  attention, forward and backward) and their rate as a fraction of the bf16 matmul peak measured
  in the same run (an 8192³ ``torch.mm``).
* ``ttt``: batched test-time training (vmap over per-image weights) against one image at a
  time, on the quick configuration, in images/s and their ratio.

Writes ``gpu_check.json`` into ``--out`` and prints one line per figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from hcibench.train import augment
from hcibench.train.dino import DinoTrainer
from hcibench.train.mae import MaskedAutoencoder, build_decoder
from hcibench_plugins.methods.dual import settings as dual_settings
from hcibench_plugins.methods.dual import steps as dual
from hcibench_plugins.methods.dual.mae_steps import mae_settings
from hcibench_plugins.methods.dual.steps import TaskModel
from hcibench_plugins.methods.dual.ttt import TTTSettings, ttt_batched, ttt_sequential


def cuda_seconds(fn, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


def matmul_peak(size: int = 8192) -> float:
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    seconds = cuda_seconds(lambda: torch.mm(a, b), repeats=10, warmup=3)
    return 2 * size**3 / seconds / 1e12


def dino_step(precision: str, batch: int, peak_tflops: float) -> dict:
    config = dual_settings.config("paper")
    settings = dual.dino_settings(config["dino"], batch_size=batch, precision=precision)
    torch.manual_seed(0)
    modules = [m.to("cuda") for m in dual.build_fe_pair(config, 3, settings)]
    trainer = DinoTrainer(*modules, settings, steps_per_epoch=1000)
    images = torch.rand(batch, 3, config["input_size"], config["input_size"], device="cuda")
    generator = torch.Generator().manual_seed(0)
    step = iter(range(10**6))

    def run():
        views = augment.multi_crop(
            images, settings.global_size, settings.local_size, settings.n_local, generator
        )
        trainer.step(views, epoch=1, step=next(step))

    with FlopCounterMode(display=False) as counter:
        run()
    flops = counter.get_total_flops()
    seconds = cuda_seconds(run, repeats=10)
    achieved = flops / seconds / 1e12
    return {
        "precision": precision,
        "batch": batch,
        "images_per_s": batch / seconds,
        "step_seconds": seconds,
        "step_tflop": flops / 1e12,
        "tflop_per_s": achieved,
        "fraction_of_bf16_peak": achieved / peak_tflops,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def ttt(chunk: int = 32, sequential_images: int = 8) -> dict:
    quick = dual_settings.config("quick")
    torch.manual_seed(0)
    encoder = dual.create_vit(quick["backbone"])
    settings = mae_settings(quick["mae"])
    mae = MaskedAutoencoder(encoder, build_decoder(encoder, settings, 3), settings).cuda()
    mae.decoder.requires_grad_(False)
    task = TaskModel(encoder.embed_dim, quick["task"]["model"], 10).cuda().eval()
    task.requires_grad_(False)
    ttt_settings = TTTSettings(steps=5, copies=16, chunk=chunk)
    size = quick["input_size"]
    images = torch.rand(chunk, 3, size, size, device="cuda")
    sequential = cuda_seconds(
        lambda: ttt_sequential(mae, task, images[:sequential_images], ttt_settings, size), repeats=3, warmup=1
    )
    batched = cuda_seconds(lambda: ttt_batched(mae, task, images, ttt_settings, size), repeats=3, warmup=1)
    sequential_rate, batched_rate = sequential_images / sequential, chunk / batched
    return {
        "steps": ttt_settings.steps,
        "copies": ttt_settings.copies,
        "chunk": chunk,
        "sequential_images_per_s": sequential_rate,
        "batched_images_per_s": batched_rate,
        "speedup": batched_rate / sequential_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=64, help="DINO images per step")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch sees no CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 figures are plain fp32
    figures = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    figures["bf16_matmul_peak_tflops"] = peak = matmul_peak()
    print(f"bf16 matmul peak (8192³): {peak:.0f} TFLOP/s", flush=True)
    figures["dino"] = []
    for precision in ("bf16", "fp32"):
        row = dino_step(precision, args.batch, peak)
        figures["dino"].append(row)
        print(
            f"DINO step, paper preset, {precision}, batch {args.batch}: "
            f"{row['images_per_s']:.0f} img/s, {row['tflop_per_s']:.1f} TFLOP/s = "
            f"{row['fraction_of_bf16_peak']:.1%} of the bf16 peak, "
            f"{row['peak_memory_gib']:.1f} GiB",
            flush=True,
        )
    started = time.perf_counter()
    figures["ttt"] = row = ttt()
    print(
        f"TTT quick ViT (5 steps × 16 copies): batched {row['batched_images_per_s']:.1f} img/s, "
        f"one at a time {row['sequential_images_per_s']:.1f} img/s: "
        f"{row['speedup']:.1f}× ({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
