"""One stage on several processes (``torchrun --nproc_per_node=N``): data parallelism that gives
the same result as one process with the same global batch.

Every rank draws the same global batch from the same generator (the same permutation, the same
augmentations, the same masks) and trains on its own slice of it; gradients are averaged over
the ranks after the backward pass, so that each rank takes the same optimiser step as one
process on the whole batch would. Drawing the whole batch's random numbers on every rank costs
little (augmentation is under 1 % of a step) and is what makes the result independent of the
number of ranks, which one generator per rank drawing for its slice only would not be.

The gradients are averaged with one all-reduce over a flat buffer per step instead of wrapping
the model in ``DistributedDataParallel``: the losses of step 3 (feature alignment) run the
feature extractor outside its forward, which DDP's reducer does not follow, and at these model
sizes overlapping communication with the backward pass gains little. Batch-norm statistics are
synchronised on CUDA (``SyncBatchNorm``); on the CPU (gloo) each rank normalises its own slice.

Outside ``torchrun`` (no process group) every function here is the identity.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn


def active() -> bool:
    """Whether this process is one rank of several."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Whether this process writes (rank 0, or the only process)."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device: torch.device) -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment (nccl for CUDA,
    gloo for the CPU); returns this rank's device (``cuda:LOCAL_RANK`` on a GPU machine)."""
    if not launched_by_torchrun() or active():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_slice(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a global batch (the whole batch in one process). The
    batch size must be a multiple of the number of ranks."""
    n = world_size()
    if n == 1:
        return batch
    if len(batch) % n:
        raise ValueError(
            f"a batch of {len(batch)} does not split over {n} processes; choose a "
            f"batch size that is a multiple of {n}"
        )
    size = len(batch) // n
    return batch[rank() * size : (rank() + 1) * size]


def share(batch: torch.Tensor) -> torch.Tensor:
    """This rank's share of a batch that need not split evenly (``torch.tensor_split``: the
    first ranks take one more; a rank may get none)."""
    n = world_size()
    return batch if n == 1 else torch.tensor_split(batch, n)[rank()]


def local_views(views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [local_slice(v) for v in views]


def average_gradients(parameters: Iterable[torch.Tensor], zero_missing: bool = False) -> None:
    """Average the gradients of ``parameters`` over the ranks (one all-reduce). A parameter
    without a gradient is left alone (a frozen last layer has none on any rank), unless
    ``zero_missing``: then it counts as zero, for a rank whose share of the batch was empty."""
    if not active():
        return
    parameters = [p for p in parameters if p.requires_grad]
    if zero_missing:
        for p in parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size()
    for grad, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        grad.copy_(synced)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over the ranks (itself in one process)."""
    if not active():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world_size()


def sync_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with batch-norm synchronised over the ranks on CUDA (unchanged otherwise)."""
    if not active() or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        return module
    if next(module.parameters()).device.type != "cuda":
        return module
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def broadcast_object(value):
    """Rank 0's ``value`` on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()
