"""Device and precision settings, and reading batches ahead."""

import threading

import pytest
import torch

from hcibench.errors import UsageError
from hcibench.run import accelerator


def test_auto_is_the_cpu_without_a_gpu_and_a_missing_gpu_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert accelerator.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UsageError, match="no CUDA GPU"):
        accelerator.resolve_device("cuda")
    with pytest.raises(UsageError, match="not a device"):
        accelerator.resolve_device("tpu")


def test_precision_auto_follows_the_cpu_flags(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(accelerator, "cpu_flags", lambda: frozenset({"avx2"}))
    assert accelerator.resolve_precision("auto", cpu) == "fp32"
    with pytest.warns(UserWarning, match="slower"):
        assert accelerator.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(accelerator, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert accelerator.resolve_precision("auto", cpu) == "bf16"


def test_prefetch_on_the_cpu_passes_batches_through():
    batches = [(torch.zeros(1), 0)]
    assert list(accelerator.prefetch(batches, torch.device("cpu"))) == batches


def test_read_ahead_keeps_order_raises_where_it_failed_and_stops_early():
    assert list(accelerator.read_ahead(range(10), 2, lambda i: i * i)) == [i * i for i in range(10)]

    def failing():
        yield 1
        raise OSError("unreadable image")

    seen = []
    with pytest.raises(OSError, match="unreadable image"):
        for item in accelerator.read_ahead(failing(), 2):
            seen.append(item)
    assert seen == [1]
    before = threading.active_count()
    for item in accelerator.read_ahead(iter(range(1000)), 2):
        if item == 3:
            break
    assert threading.active_count() == before  # the reading thread has ended
