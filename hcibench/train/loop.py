"""The one epoch loop every training in hcibench runs, and what its steps share.

A kind of training (a supervised batch, a DINO update on multi-crop views, a masked
reconstruction) is a :class:`TrainingStep`: it says which batches an epoch has and what one
update does, as DomainBed's ``update()``. :func:`run_epochs` drives any of them, so that what a
loop must get right the same way every time is written once: the progress bar, the epoch's
figures (summed on the device, read once per epoch, averaged over torchrun's ranks), the
callback after each epoch, and saving and restoring progress inside a stage so that a killed
computation goes on bitwise as if never stopped. Beside it: AdamW parameter groups, a step's
learning rate and weight decay (:func:`set_schedule`), one backward-and-step
(:func:`optimise`) and the precision a step computes in (:meth:`TrainingStep.autocast`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hcibench.run import distributed
from hcibench.run.accelerator import autocast, resolve_precision
from hcibench.run.progress import Progress
from hcibench.run.stages import current_checkpoint

# Saved progress in another layout (from another version of the loop) is not resumed from.
PROGRESS_FORMAT = 2


def parameter_groups(modules: Iterable[nn.Module], weight_decay: float | None = None) -> list[dict]:
    """AdamW groups of the trainable parameters of ``modules``: the first decays (weights), the
    second does not (biases and normalisation weights: the 1-d tensors). ``weight_decay`` None
    leaves the first group's decay to the optimiser's default until :func:`set_schedule` sets
    it (the DINO loop schedules it per step)."""
    decay, no_decay = [], []
    for module in modules:
        for param in module.parameters():
            if param.requires_grad:
                (no_decay if param.ndim <= 1 else decay).append(param)
    first = {"params": decay}
    if weight_decay is not None:
        first["weight_decay"] = weight_decay
    return [first, {"params": no_decay, "weight_decay": 0.0}]


def set_schedule(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float | None = None) -> None:
    """This step's learning rate for every group and, when given, weight decay for the group
    that decays (the first of :func:`parameter_groups`)."""
    for index, group in enumerate(optimizer.param_groups):
        group["lr"] = lr
        if index == 0 and weight_decay is not None:
            group["weight_decay"] = weight_decay


class SavedProgress:
    """A loop's progress inside the stage being computed (:func:`current_checkpoint`): modules,
    optimiser, random streams (the loop's generator, torch's CPU and GPU states), objects kept
    alongside (``kept``: anything with ``state_dict``/``load_state_dict``), and the loop's own
    figures. Outside a stage, or for a cache in memory, it saves nothing and restores nothing.

    ``restore()`` at the start gives the loop's saved figures (None: start from the beginning);
    ``save_if_due(epochs_done, total, figures)`` at the end of each epoch saves at most every
    ``HCIBENCH_CHECKPOINT_SECONDS``, never after the last epoch (the stage file follows)."""

    def __init__(
        self,
        modules: dict[str, nn.Module],
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        kept: dict[str, Any] | None = None,
        log: Callable[[str], None] | None = None,
        description: str = "training",
    ):
        self.modules, self.optimizer, self.generator = modules, optimizer, generator
        self.kept = kept or {}
        self.log, self.description = log, description
        self.checkpoint = current_checkpoint()

    def restore(self, total_epochs: int) -> dict | None:
        saved = self.checkpoint.load() if self.checkpoint is not None else None
        if saved is None:
            return None
        if saved.get("format") != PROGRESS_FORMAT:
            if self.log is not None:
                self.log(f"{self.description}: saved progress from another version, starting over")
            return None
        for name, module in self.modules.items():
            module.load_state_dict(saved["modules"][name])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["rng"])
        if torch.cuda.is_available() and saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        for name, keeper in self.kept.items():
            keeper.load_state_dict(saved["kept"][name])
        if self.log is not None:
            self.log(
                f"{self.description}: going on from epoch {saved['figures']['epoch']} of "
                f"{total_epochs} (saved progress)"
            )
        return saved["figures"]

    def save_if_due(self, epochs_done: int, total_epochs: int, figures: dict) -> None:
        """``figures`` must hold ``epoch`` (= ``epochs_done``) and whatever else the loop needs
        to go on."""
        if self.checkpoint is None or not self.checkpoint.due() or epochs_done >= total_epochs:
            return
        self.checkpoint.save(
            {
                "modules": {name: module.state_dict() for name, module in self.modules.items()},
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "kept": {name: keeper.state_dict() for name, keeper in self.kept.items()},
                "figures": {**figures, "epoch": epochs_done},
                "format": PROGRESS_FORMAT,
            }
        )


CLIP_MODES = ("global", "parameter")


def clip_gradients(parameters: Sequence[torch.Tensor], clip: float, mode: str = "parameter") -> None:
    """Scale gradients to a norm of at most ``clip``: each parameter's own (``"parameter"``, as
    the DINO repository) or all of them together (``"global"``, torch's ``clip_grad_norm_``, as
    the CODA research code). Parameters without a gradient are left alone."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads or clip <= 0:
        return
    if mode == "global":
        torch.nn.utils.clip_grad_norm_([p for p in parameters if p.grad is not None], clip)
        return
    norms = torch._foreach_norm(grads)
    scales = [torch.clamp(clip / (norm + 1e-6), max=1.0) for norm in norms]
    torch._foreach_mul_(grads, scales)


def optimise(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    parameters: Iterable[torch.Tensor],
    before_step: Callable[[], None] | None = None,
    zero_missing: bool = False,
) -> None:
    """One optimiser step on ``loss``: gradients from zero, averaged over torchrun's ranks
    (``zero_missing``: a parameter without a gradient on this rank counts as zero), then
    ``before_step()`` (e.g. clipping), then the update."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(parameters, zero_missing=zero_missing)
    if before_step is not None:
        before_step()
    optimizer.step()


class TrainingStep(ABC):
    """One kind of training as :func:`run_epochs` drives it.

    A subclass sets ``optimizer``, ``device``, ``precision`` (through ``super().__init__``) and
    ``description``, and says what an epoch's batches are and what one update does. Its own
    loop state (a plateau counter, a best checkpoint, a loss centre) goes through
    :meth:`progress_state` / :meth:`load_progress_state`, so a resumed stage goes on from it.
    """

    description = "training"
    optimizer: torch.optim.Optimizer

    def __init__(self, device: torch.device, precision: str | None = "fp32"):
        self.device = device
        self.precision = resolve_precision(precision, device)

    def autocast(self):
        """The context a forward pass of this step runs in (bf16 autocast, or nothing)."""
        return autocast(self.device, self.precision)

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """The modules whose weights a saved progress holds."""

    @abstractmethod
    def batches(self, epoch: int, generator: torch.Generator) -> Iterable:
        """The batches of ``epoch`` (drawn with ``generator``, the loop's random stream)."""

    @abstractmethod
    def update(self, batch, epoch: int, step: int) -> dict[str, torch.Tensor] | None:
        """One optimisation step on ``batch`` (``step`` counts the updates of every epoch so
        far). Returns the figures to average over the epoch, as tensors on the device (the
        loop reads them once per epoch), or None when the batch gave no update."""

    def train_mode(self) -> None:
        """Put the modules in the mode an update expects (called before every epoch)."""
        for module in self.modules().values():
            module.train()

    def eval_mode(self) -> None:
        """The modules as the callback after an epoch sees them."""
        for module in self.modules().values():
            module.eval()

    def end_epoch(self, epoch: int, figures: dict[str, float]) -> None:
        """After ``epoch``'s updates, with their mean figures (e.g. validate, decay the rate)."""
        return None

    def finish(self) -> None:
        """After the loop, also when it failed (e.g. leave the modules in eval mode)."""
        for module in self.modules().values():
            module.eval()

    def progress_state(self) -> Any:
        return None

    def load_progress_state(self, state: Any) -> None:
        """Take back what :meth:`progress_state` gave (nothing to take by default)."""
        return None


@dataclass
class EpochFigures:
    """What :func:`run_epochs` measured: the mean figures of each epoch, the updates done, and
    the seconds the loop took in this process (a resumed run counts only its own part)."""

    epochs: list[dict[str, float]]
    steps: int
    seconds: float

    def curve(self, name: str) -> list[float]:
        return [figures[name] for figures in self.epochs]


def run_epochs(
    training: TrainingStep,
    epochs: int,
    generator: torch.Generator,
    progress: Progress | None = None,
    on_epoch: Callable[[int], None] | None = None,
    keep_with_checkpoint: dict[str, Any] | None = None,
) -> EpochFigures:
    """Drive ``training`` for ``epochs`` epochs.

    Each epoch: the modules in training mode, every batch through ``update``, the figures' means
    (over the epoch's updates and torchrun's ranks) to ``end_epoch``, then ``on_epoch(k)``
    (``k`` counting from 1) with the modules in eval mode. Inside a stage, the progress
    (modules, optimiser, random streams, figures, the step's own state and the ``state_dict()``
    of each object in ``keep_with_checkpoint``) is saved after an epoch when a save is due and,
    when the stage is computed again after a kill, the loop goes on from there.
    """
    progress = progress or Progress()
    saved_progress = SavedProgress(
        training.modules(),
        training.optimizer,
        generator,
        keep_with_checkpoint,
        progress.log,
        training.description,
    )
    first_epoch, step, curves = 0, 0, []
    saved = saved_progress.restore(epochs)
    if saved is not None:
        first_epoch, step, curves = saved["epoch"], saved["step"], saved["curves"]
        training.load_progress_state(saved["state"])
    started = time.perf_counter()
    try:
        for epoch in progress.track(range(first_epoch, epochs), description=training.description):
            training.train_mode()
            sums: dict[str, Any] = {}
            updates = 0
            for batch in training.batches(epoch, generator):
                figures = training.update(batch, epoch, step)
                if figures is None:
                    continue
                for name, value in figures.items():
                    sums[name] = sums.get(name, 0.0) + value
                step += 1
                updates += 1
            means = {
                name: float(distributed.mean_over_ranks(torch.as_tensor(total, device=training.device)))
                / max(updates, 1)
                for name, total in sums.items()
            }
            curves.append(means)
            training.end_epoch(epoch, means)
            if on_epoch is not None:
                training.eval_mode()
                on_epoch(epoch + 1)
            saved_progress.save_if_due(
                epoch + 1,
                epochs,
                {"step": step, "curves": curves, "state": training.progress_state()},
            )
    finally:
        training.finish()
    return EpochFigures(curves, step, time.perf_counter() - started)
