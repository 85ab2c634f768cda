"""Supervised training with model selection on held-out source data, shared by every method
that trains a classifier (the supervised baseline, the dual model's task model).

The schedule follows the paper: linear warm-up, then the learning rate is divided by 10 each
time the validation loss stops improving. The checkpoint kept is the one with the best
validation accuracy, where validation is a held-out *source* plate, never target data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hcibench.data import Domain
from hcibench.run import distributed
from hcibench.run.accelerator import cpu_state, prefetch, to_device
from hcibench.run.stages import Context
from hcibench.train import augment
from hcibench.train.loop import (
    TrainingStep,
    clip_gradients,
    optimise,
    parameter_groups,
    run_epochs,
    set_schedule,
)


def prepare_images(
    x: torch.Tensor,
    input_size: int,
    training: bool,
    generator: torch.Generator | None = None,
    jitter: augment.Jitter | None = None,
) -> torch.Tensor:
    """Model input from raw images: random crop and flips (and the intensity ``jitter``, when
    given) when training, centre crop otherwise, then per-image per-channel standardisation
    (which removes gain and offset differences)."""
    if x.dim() == 4 and x.shape[-1] > input_size:
        if training:
            x = augment.random_crops(x, input_size, generator)
        else:
            x = augment.center_crop(x, input_size)
    if training and x.dim() == 4:
        x = augment.random_flips(x, generator)
        if jitter is not None:
            x = jitter.apply(x, generator)
    return augment.self_normalise(x) if x.dim() == 4 else x


@torch.no_grad()
def predict_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    domain: Domain,
    batch_size: int,
    input_size: int,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Logits for every sample of ``domain``, in order, on the CPU; ``forward`` runs on
    ``device`` (the device of the model behind it; None: where the data is)."""
    return predict_outputs(lambda x: (forward(x),), domain, batch_size, input_size, device)[0]


@torch.no_grad()
def predict_outputs(
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
    domain: Domain,
    batch_size: int,
    input_size: int,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, ...]:
    """Like :func:`predict_logits` for a ``forward`` that returns several tensors per batch
    (e.g. logits and embeddings): each concatenated over the domain, in order, on the CPU."""
    outputs = []
    for x, _, _ in prefetch(domain.batches(batch_size), device or torch.device("cpu")):
        if device is not None:
            x = to_device(x, device)
        outputs.append(forward(prepare_images(x, input_size, training=False)))
    if not outputs:
        return (torch.empty(0),)
    return tuple(torch.cat(parts).cpu() for parts in zip(*outputs))


def evaluate(
    forward, domain: Domain, batch_size: int, input_size: int, device: torch.device | None = None
) -> tuple[float, float]:
    """Cross-entropy and accuracy of ``forward`` on the labelled samples of ``domain``
    (infinity and 0 when none is labelled)."""
    logits = predict_logits(forward, domain, batch_size, input_size, device)
    labels = domain.labels
    known = labels >= 0
    if known.sum() == 0:
        return float("inf"), 0.0
    loss = F.cross_entropy(logits[known], labels[known]).item()
    accuracy = (logits[known].argmax(1) == labels[known]).float().mean().item()
    return loss, accuracy


class ClassifierStep(TrainingStep):
    """Cross-entropy on the labelled samples of a domain, with the paper's schedule (linear
    warm-up, the rate multiplied by ``decay`` when the validation loss stalls for ``patience``
    epochs) and the best validation accuracy's weights kept.

    Two optional settings give the CODA authors' step-2 recipe: ``clip_grad`` (> 0: the norm of
    all gradients together is clipped to it) and ``jitter`` (the intensity jitter of their code,
    :meth:`augment.Jitter.reference`, on the training images)."""

    def __init__(
        self,
        trainable: nn.Module,
        forward: Callable[[torch.Tensor], torch.Tensor],
        train: Domain,
        val: Domain,
        settings: dict,
        context: Context,
        input_size: int,
        description: str,
    ):
        super().__init__(context.device, context.precision)
        self.trainable, self.forward = trainable.to(self.device), forward
        self.train, self.val, self.settings, self.input_size = train, val, settings, input_size
        self.description = description
        self.optimizer = torch.optim.AdamW(
            parameter_groups([trainable], settings["weight_decay"]), lr=settings["lr"]
        )
        labels_known = (train.labels >= 0).sum().item()
        steps_per_epoch = max(1, -(-labels_known // settings["batch_size"]))
        self.warmup_steps = settings["warmup_epochs"] * steps_per_epoch
        self.lr, self.stale, self.best_loss = settings["lr"], 0, float("inf")
        self.clip = float(settings.get("clip_grad") or 0.0)
        self.jitter = augment.Jitter.reference() if settings.get("jitter") else None
        self.best = {"accuracy": -1.0, "state": None, "epoch": -1}
        self.history: list[dict] = []

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.trainable}

    def batches(self, epoch: int, generator: torch.Generator):
        self.generator = generator  # the crops and flips draw from the loop's stream too
        batches = self.train.batches(self.settings["batch_size"], shuffle=True, generator=generator)
        return prefetch(batches, self.device)

    def update(self, batch, epoch: int, step: int):
        x, y, _ = batch
        known = y >= 0
        if known.sum() == 0:
            return None
        scale = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        set_schedule(self.optimizer, self.lr * scale)
        x, y = to_device(x[known], self.device), to_device(y[known], self.device)
        x = prepare_images(x, self.input_size, True, self.generator, self.jitter)
        # Under torchrun each rank takes its share of the global batch (possibly uneven:
        # batches are not dropped); the loss is normalised by the global batch so that the
        # averaged gradients are those of one process.
        local_x, local_y = distributed.share(x), distributed.share(y)
        with self.autocast():
            logits = self.forward(local_x)
        if distributed.active():
            loss = F.cross_entropy(logits.float(), local_y, reduction="sum") * (
                distributed.world_size() / len(y)
            )
        else:
            loss = F.cross_entropy(logits.float(), y)
        parameters = list(self.trainable.parameters())
        clip = (lambda: clip_gradients(parameters, self.clip, "global")) if self.clip > 0 else None
        optimise(loss, self.optimizer, parameters, before_step=clip, zero_missing=True)
        return {}

    def end_epoch(self, epoch: int, figures: dict[str, float]) -> None:
        self.trainable.eval()
        val_loss, val_accuracy = evaluate(
            self.forward, self.val, self.settings["batch_size"] * 4, self.input_size, self.device
        )
        self.history.append(
            {"epoch": epoch, "val_loss": val_loss, "val_accuracy": val_accuracy, "lr": self.lr}
        )
        if val_accuracy > self.best["accuracy"]:
            self.best = {"accuracy": val_accuracy, "state": cpu_state(self.trainable), "epoch": epoch}
        # Step decay when the validation loss saturates (after warm-up).
        settings = self.settings
        if val_loss < self.best_loss - 1e-4:
            self.best_loss, self.stale = val_loss, 0
        elif epoch >= settings["warmup_epochs"]:
            self.stale += 1
            if self.stale >= settings["patience"]:
                self.lr, self.stale = max(self.lr * settings["decay"], settings["min_lr"]), 0

    def progress_state(self):
        return (self.lr, self.stale, self.best_loss, self.best, self.history)

    def load_progress_state(self, state) -> None:
        self.lr, self.stale, self.best_loss, self.best, self.history = state


def train_classifier(
    trainable: nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    train: Domain,
    val: Domain,
    settings: dict,
    context: Context,
    input_size: int,
    description: str = "train",
) -> dict:
    """Train ``trainable`` (the parameters behind ``forward``) with cross-entropy on ``train``.

    Training runs on ``context.device`` (``trainable`` is moved there) in ``context.precision``,
    driven by :func:`hcibench.train.loop.run_epochs` (a killed stage goes on from its saved
    progress). Returns ``{"state": best state_dict of trainable (on the CPU), "history": [...],
    "best_epoch": k, "val_accuracy": best accuracy}``.
    """
    step = ClassifierStep(trainable, forward, train, val, settings, context, input_size, description)
    generator = torch.Generator().manual_seed(context.seed)
    run_epochs(step, settings["epochs"], generator, context.progress)
    return {
        "state": step.best["state"],
        "history": step.history,
        "best_epoch": step.best["epoch"],
        "val_accuracy": step.best["accuracy"],
    }
