"""What an unlabelled adaptation (step 3) may change, and what it did, measured without labels.

``restrict_to_scope`` freezes the FE weights an adaptation must leave alone: the paper adapts
all of them; input-level shifts are often best corrected in the early layers alone (surgical
fine-tuning), and Tent adapts only the normalisation layers.

``AdaptationMonitor`` records, before the adaptation and after each of its epochs, label-free
diagnostics of the adapted FE on the target: how far each block's weights moved, the linear CKA
between the step-1 and the adapted FE's class tokens, the share of predictions that changed and
the spread of predicted classes. It also keeps each epoch's logits, which the runner scores as
an *oracle* curve (``accuracy@adapt_epoch=k``): target accuracy for analysis only, which nothing
in hcibench uses to choose a setting or an epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from hcibench.analysis import linear_cka
from hcibench.errors import UsageError
from hcibench.run.accelerator import device_of

SCOPES = ("all", "early", "norm")
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


def scope_parameters(fe: nn.Module, scope: str, early_blocks: int = 1) -> set[str]:
    """Names of the FE parameters that ``scope`` adapts."""
    names = {name for name, _ in fe.named_parameters()}
    if scope == "all":
        return names
    if scope == "norm":
        return {
            f"{module_name}.{name}" if module_name else name
            for module_name, module in fe.named_modules()
            if isinstance(module, NORM_TYPES)
            for name, _ in module.named_parameters(recurse=False)
        }
    if scope == "early":
        if not hasattr(fe, "blocks") or not hasattr(fe, "patch_embed"):
            raise UsageError(
                "adapt.trainable=early needs a ViT feature extractor (patch "
                "embedding and blocks); use all or norm for this modality"
            )
        prefixes = ("patch_embed.", "pos_embed", "cls_token", *(f"blocks.{i}." for i in range(early_blocks)))
        return {name for name in names if name.startswith(prefixes)}
    raise UsageError(f"adapt.trainable must be one of {', '.join(SCOPES)}, not {scope!r}")


def restrict_to_scope(fe: nn.Module, scope: str, early_blocks: int = 1) -> int:
    """Freeze every FE parameter outside ``scope``; returns how many values stay trainable."""
    keep = scope_parameters(fe, scope, early_blocks)
    trainable = 0
    for name, param in fe.named_parameters():
        param.requires_grad_(name in keep)
        trainable += param.numel() if name in keep else 0
    return trainable


def block_of(name: str) -> str:
    """The part of a ViT a parameter belongs to: ``blocks.3``, ``patch_embed``, ``norm``, ..."""
    parts = name.split(".")
    if parts[0] == "blocks" and len(parts) > 1:
        return f"blocks.{parts[1]}"
    return parts[0]


def _squared_changes(
    start: dict[str, torch.Tensor], now: dict[str, torch.Tensor]
) -> dict[str, tuple[float, float]]:
    """Per block, (sum of squared changes, sum of squared start values) over the block's
    floating-point weights."""
    sums: dict[str, tuple[float, float]] = {}
    for name, before in start.items():
        if not torch.is_floating_point(before):
            continue
        delta = float((now[name].float() - before.float()).pow(2).sum())
        size = float(before.float().pow(2).sum())
        old_delta, old_size = sums.get(block_of(name), (0.0, 0.0))
        sums[block_of(name)] = (old_delta + delta, old_size + size)
    return sums


def _relative(delta: float, size: float) -> float:
    return math.sqrt(delta / size) if size > 0 else 0.0


def weight_movement(start: dict[str, torch.Tensor], now: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per block, ||now - start|| / ||start|| over the block's floating-point weights."""
    return {block: _relative(*sums) for block, sums in _squared_changes(start, now).items()}


def effective_classes(predicted: torch.Tensor, num_classes: int) -> float:
    """exp(entropy) of the predicted-class histogram: how many classes predictions really use."""
    counts = torch.bincount(predicted, minlength=num_classes).double()
    p = counts[counts > 0] / counts.sum()
    return float(torch.exp(-(p * p.log()).sum()))


class AdaptationMonitor:
    """Diagnostics of an FE during its adaptation, from the target's images only.

    ``outputs(fe) -> (logits, class tokens)`` runs the FE and the frozen task model over the
    target's images. ``record(epoch, fe)`` appends one row of diagnostics; row 0 (before any
    update) is the reference the later rows are compared with.
    """

    def __init__(
        self,
        outputs: Callable[[nn.Module], tuple[torch.Tensor, torch.Tensor]],
        num_classes: int,
        cka_images: int = 512,
    ):
        self.outputs = outputs
        self.num_classes = num_classes
        self.cka_images = cka_images
        self.rows: list[dict] = []
        self.logits: list[torch.Tensor] = []
        self._start_weights: dict[str, torch.Tensor] | None = None
        self._start_tokens: np.ndarray | None = None
        self._start_predicted: torch.Tensor | None = None

    def record(self, epoch: int, fe: nn.Module) -> dict:
        logits, tokens = self.outputs(fe)
        predicted = logits.argmax(1)
        tokens = tokens[: self.cka_images].double().numpy()
        weights = {k: v.detach().clone() for k, v in fe.state_dict().items()}
        if self._start_weights is None:
            self._start_weights, self._start_tokens = weights, tokens
            self._start_predicted = predicted
        sums = _squared_changes(self._start_weights, weights)
        total = [sum(column) for column in zip(*sums.values())] or [0.0, 0.0]
        row = {
            "epoch": epoch,
            "cka_to_start": linear_cka(self._start_tokens, tokens),
            "changed_predictions": float((predicted != self._start_predicted).double().mean()),
            "predicted_classes": effective_classes(predicted, self.num_classes) / self.num_classes,
            "weight_movement": {block: _relative(*pair) for block, pair in sums.items()},
            "weight_movement_total": _relative(*total),
        }
        self.rows.append(row)
        self.logits.append(logits.detach().clone())
        return row

    _STATE = ("rows", "logits", "_start_weights", "_start_tokens", "_start_predicted")

    def state_dict(self) -> dict:
        """What the monitor has recorded so far (kept with a training's saved progress)."""
        return {name: getattr(self, name) for name in self._STATE}

    def load_state_dict(self, state: dict) -> None:
        for name in self._STATE:
            setattr(self, name, state[name])

    def result(self) -> dict:
        """The per-epoch diagnostics and logits (``epochs`` rows, the first before adapting)."""
        return {"diagnostics": self.rows, "epoch_logits": self.logits}


# ----------------------------------------------------------------------------- token alignment


def token_moments(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel mean and std of FE outputs: for ViT tokens (N×T×D) the class token and the
    patch tokens separately; for one vector per sample (N×D) that vector."""
    groups = (
        {"cls": tokens[:, 0], "patch": tokens[:, 1:].reshape(-1, tokens.shape[-1])}
        if tokens.dim() == 3
        else {"cls": tokens}
    )
    return {
        f"{name}_{stat}": value
        for name, group in groups.items()
        for stat, value in (
            ("mean", group.double().mean(0)),
            ("std", group.double().std(0, unbiased=False) + 1e-6),
        )
    }


class AlignedFE(nn.Module):
    """An FE whose outputs are moved from the target's moments to the source's: per channel,
    ``(f(x) - mean_target) / std_target * std_source + mean_source``.

    The frozen task model was trained on the step-1 FE's outputs on the source; whatever moved
    the target's outputs as a whole (the shift itself, or the drift an adaptation adds), this
    puts their first two moments back where the task model expects them. Label-free: the
    moments are those of the source's training images and of the whole unlabelled target."""

    def __init__(self, fe: nn.Module, source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]):
        super().__init__()
        self.fe = fe
        self.embed_dim = getattr(fe, "embed_dim", None)
        device = device_of(fe)
        self.scale = {
            k: (source[f"{k}_std"] / target[f"{k}_std"]).float().to(device)
            for k in ("cls", "patch")
            if f"{k}_std" in source
        }
        self.shift = {
            k: (source[f"{k}_mean"] - target[f"{k}_mean"] * source[f"{k}_std"] / target[f"{k}_std"])
            .float()
            .to(device)
            for k in self.scale
        }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fe.forward_features(x)
        if out.dim() == 2:
            return out * self.scale["cls"] + self.shift["cls"]
        cls = out[:, :1] * self.scale["cls"] + self.shift["cls"]
        patches = out[:, 1:] * self.scale["patch"] + self.shift["patch"]
        return torch.cat([cls, patches], dim=1)


# ----------------------------------------------------------------------------- feature alignment


def _block_moments(output: torch.Tensor) -> torch.Tensor:
    """Per channel mean and std of a block's tokens, class token and patch tokens apart:
    a 4×D tensor (cls mean, cls std, patch mean, patch std)."""
    cls, patches = output[:, 0], output[:, 1:].reshape(-1, output.shape[-1])
    return torch.stack(
        [cls.mean(0), cls.std(0, unbiased=False), patches.mean(0), patches.std(0, unbiased=False)]
    )


class BlockOutputs:
    """Forward hooks on a ViT's blocks that keep their outputs while ``capturing``."""

    def __init__(self, fe: nn.Module):
        if not hasattr(fe, "blocks"):
            raise UsageError(
                "adapt.feature_alignment needs a ViT feature extractor (blocks); "
                "set it to 0 for this modality"
            )
        self.outputs: list[torch.Tensor] = []
        self.capturing = False
        self.handles = [block.register_forward_hook(self._keep) for block in fe.blocks]

    def _keep(self, _module, _inputs, output) -> None:
        if self.capturing:
            self.outputs.append(output)

    def run(self, fe: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        self.outputs, self.capturing = [], True
        try:
            fe.forward_features(x)
        finally:
            self.capturing = False
        return self.outputs

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class FeatureAlignment:
    """A label-free loss that keeps the adapted FE's hidden features, on the target, at the
    moments the step-1 FE's features have on the source (as class-agnostic feature alignment,
    Kojima et al., NeurIPS 2022): per block, the scale-free distance of per-channel means and
    stds (:meth:`distance`), summed over blocks and scaled by ``weight``.

    DINO on the target alone has nothing that ties the FE to what the frozen task model was
    trained on; this term is that tie. ``source_moments`` come from :meth:`measure` on source
    images under the same view as the loss sees (the first global crop)."""

    def __init__(self, fe: nn.Module, source_moments: list[torch.Tensor], weight: float):
        self.fe = fe
        self.hooks = BlockOutputs(fe)
        self.source = source_moments
        self.weight = weight

    @staticmethod
    @torch.no_grad()
    def measure(fe: nn.Module, batches) -> list[torch.Tensor]:
        """Block moments of ``fe`` (in eval mode) averaged over ``batches`` of views."""
        hooks = BlockOutputs(fe)
        was_training = fe.training
        fe.eval()
        totals, count = None, 0
        try:
            for views in batches:
                moments = [_block_moments(o) for o in hooks.run(fe, views)]
                totals = moments if totals is None else [t + m for t, m in zip(totals, moments)]
                count += 1
        finally:
            hooks.remove()
            fe.train(was_training)
        return [t / max(count, 1) for t in totals]

    @staticmethod
    def distance(moments: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Scale-free distance of block moments from the source's: the mean over channels of
        |mean difference| / source std and |log std ratio|, class token and patches apart."""
        means = (moments[0::2] - source[0::2]).abs() / (source[1::2] + 1e-6)
        stds = (torch.log(moments[1::2] + 1e-6) - torch.log(source[1::2] + 1e-6)).abs()
        return means.mean() + stds.mean()

    def __call__(self, views) -> torch.Tensor:
        # Eval mode (no drop-path) as when the source moments were measured; gradients flow.
        was_training = self.fe.training
        self.fe.eval()
        try:
            outputs = self.hooks.run(self.fe, views[0])
        finally:
            self.fe.train(was_training)
        loss = sum(self.distance(_block_moments(o), s) for o, s in zip(outputs, self.source))
        return self.weight * loss

    def remove(self) -> None:
        self.hooks.remove()
