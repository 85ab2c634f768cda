"""What every training loop shares: AdamW parameter groups, setting the learning rate and weight
decay of a step, and saving and restoring progress inside a stage.

The classifier, DINO and MAE loops keep their own steps (a supervised batch, a DINO update on
multi-crop views, a masked reconstruction); everything around a step that a loop must get right
the same way (which parameters decay, how a schedule reaches the optimiser, what a resumed
computation needs to go on bitwise as if never stopped) is written here once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from hcibench.run.stages import current_checkpoint


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
            }
        )
