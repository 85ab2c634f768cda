"""Where a run computes and in which precision: the settings ``device`` and ``precision``.

``device``: ``auto`` (the first GPU when torch sees one, else the CPU), ``cpu``, ``cuda`` or
``cuda:N``. Models are built on the CPU and moved to the device by whoever trains or runs them;
batches follow the model they are fed to (:func:`device_of`), and whatever a stage keeps or a
prediction returns comes back to the CPU, so that stages and records read the same everywhere.

``precision``: ``fp32``, ``bf16`` (autocast: matmuls and convolutions in bfloat16, losses,
softmaxes and the DINO centre in float32) or ``auto``: bf16 on CUDA and on CPUs with bfloat16
instructions (AMX or AVX512-BF16), fp32 elsewhere, where bf16 is several times slower.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from hcibench.errors import UsageError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
# CPU flags (as /proc/cpuinfo names them) of instructions that compute in bfloat16.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_device(name: str | None) -> torch.device:
    """The torch device for the ``device`` setting; a GPU asked for but absent is a usage error."""
    name = (name or "auto").strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(
                f"device '{name}' asked for, but torch sees no CUDA GPU here; use --set device=cpu (or auto)"
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device '{name}': only {torch.cuda.device_count()} GPU(s) here")
        return device
    raise UsageError(f"device '{name}' is not a device: use auto, cpu, cuda or cuda:N")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_bf16() -> bool:
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def resolve_precision(name: str | None, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for the ``precision`` setting on ``device``."""
    name = name or "auto"
    if name not in PRECISIONS:
        raise UsageError(f"precision '{name}' is not one of {', '.join(PRECISIONS)}")
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_bf16() else "fp32"
    if name == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        warnings.warn(
            "precision bf16 on a CPU without bfloat16 instructions (AMX or "
            "AVX512-BF16) runs several times slower than fp32",
            stacklevel=2,
        )
    return name


def autocast(device: torch.device, precision: str):
    """The autocast context for ``precision`` (a no-op context for fp32)."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU for an empty module)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; a host-to-GPU copy from pinned memory does not wait for the GPU."""
    if x.device == device:
        return x
    return x.to(device, non_blocking=x.is_pinned())


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s state on the CPU: what a stage keeps, loadable on any device."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def precision_key(precision: str) -> dict:
    """What a stage key adds for its precision: nothing for fp32, so that fp32 stages keep the
    keys they have always had; ``{"precision": "bf16"}`` otherwise."""
    return {} if precision == "fp32" else {"precision": precision}


def prefetch(batches: Iterable[tuple], device: torch.device, depth: int = 2) -> Iterator[tuple]:
    """``batches`` read ``depth`` ahead in a background thread into pinned memory, when the
    device is a GPU: reading and decoding the next batch (file datasets) overlaps the GPU's
    work on this one, and the copy to the GPU does not wait. On the CPU, ``batches`` as they
    are. The batches must draw no random numbers while they are read (``Domain.batches`` draws
    its order before the first)."""
    if device.type != "cuda":
        return iter(batches)
    return read_ahead(
        batches,
        depth,
        lambda batch: tuple(x.pin_memory() if isinstance(x, torch.Tensor) else x for x in batch),
    )


def read_ahead(items: Iterable, depth: int, prepare=lambda item: item) -> Iterator:
    """``prepare(item)`` for each of ``items``, in order, computed up to ``depth`` items ahead
    in a background thread. An error there is raised here, at the item it happened at; leaving
    the loop early stops the thread."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in items:
                if not offer((prepare(item),)):
                    return
            offer(done)
        except BaseException as error:  # handed to the consumer, raised there
            offer(error)

    def consume() -> Iterator:
        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        try:
            while (item := ready.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item[0]
        finally:
            stop.set()
            thread.join()

    return consume()
