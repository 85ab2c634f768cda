"""DINO (self-distillation with no labels) as a reusable objective.

Used twice by CODA: to train the feature extractor on the source (step 1) and to adapt it to the
target (step 3), with cross-batch pairs for Dual-model-CB and CODA. The behaviour follows the
reference implementation described in ``shared/notes/reference-implementation.md``:

* loss: cross-entropy between the teacher's ``softmax((t - center) / tau_t(epoch))`` over the 2
  global views and the student's ``log_softmax(s / tau_s)`` over all views, skipping the pairs of
  a view with itself, averaged over the remaining terms; the center is an EMA (0.9) of the
  teacher's batch mean;
* head: MLP (GELU, no batch-norm) -> L2-normalise -> weight-normalised linear layer without bias
  whose norm is fixed to 1;
* optimisation: AdamW (no weight decay on biases and norm weights), lr warm-up then cosine,
  weight decay cosine 1e-5 -> 1e-4, per-parameter gradient clipping, the last layer's gradient
  cancelled during the first epoch(s); the teacher is an EMA of the student (backbone and head)
  with a momentum on a cosine from 0.996 to 1, never receiving gradients.

Every ``train_dino`` call starts the center from zero and the schedules from their beginning, as
the reference does when it adapts to a target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hcibench.data import Domain, take
from hcibench.run import distributed
from hcibench.run.accelerator import PRECISIONS, autocast, prefetch, resolve_precision
from hcibench.run.progress import Progress
from hcibench.train import augment
from hcibench.train.loop import (
    CLIP_MODES,
    TrainingStep,
    clip_gradients,
    optimise,
    parameter_groups,
    run_epochs,
    set_schedule,
)
from hcibench.train.pairs import cross_batch_partners

__all__ = [
    "DINOHead",
    "DINOLoss",
    "DinoSettings",
    "DinoEpochs",
    "DinoTrainer",
    "MultiCropWrapper",
    "as_float",
    "cancel_last_layer",
    "default_views",
    "class_token",
    "clip_gradients",
    "cosine_schedule",
    "dino_loss",
    "train_dino",
]

FeatureFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
ViewFn = Callable[[torch.Tensor, "torch.Tensor | None", torch.Generator], list]


# ----------------------------------------------------------------------------------- settings


@dataclass
class DinoSettings:
    """DINO hyper-parameters; the defaults are the reference (paper) configuration."""

    epochs: int = 300
    lr: float = 1e-4  # not scaled by the batch size
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    batch_size: int = 128
    weight_decay: float = 1e-5
    weight_decay_end: float = 1e-4
    momentum_teacher: float = 0.996
    clip_grad: float = 1.0  # gradient-norm clip; 0 disables
    # "global": one norm over all student gradients, as the CODA research code clips
    # (torch's clip_grad_norm_); "parameter": each parameter's own norm, as the DINO repository.
    clip_mode: str = "global"
    # The lr warm-up: "zero" rises from 0 to lr over the warm-up steps, as the DINO repository;
    # "first-step" takes its first step at lr / W (W warm-up steps) and W more at lr / W higher
    # each, one past lr, where the cosine starts, as the CODA authors' code.
    lr_warmup: str = "first-step"
    # The teacher follows the student with the momentum of the next step's schedule value, as
    # the CODA authors' code (which counts steps from 1); false: the current step's (DINO).
    momentum_ahead: bool = True
    freeze_last_layer_epochs: int = 1
    n_local: int = 6
    global_size: int = 224
    local_size: int = 96
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_out_dim: int = 4096
    head_layers: int = 3
    head_batch_norm: bool = False  # BatchNorm after the head's hidden layers (DINO's use_bn_in_head)
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 30
    student_temp: float = 0.1
    center_momentum: float = 0.9
    drop_path: float = 0.1  # applied by whoever builds the student
    cross_batch: bool = False
    pair_key: str = "batch"  # "batch" (the paper's text), "plate" (the authors' code), "same-batch"
    jitter: bool = True  # intensity jitter on the global views
    shift_std: float = 0.005
    gamma_std: float = 0.005
    # The jitter's form (augment.Jitter) and the central area crops come from, as the CODA
    # authors' code: a view jittered with p 0.5, shift before gamma, the gamma within 1 ± 0.005
    # (0: unbounded), crops inside the central 448 px (0: anywhere).
    jitter_p: float = 0.5
    gamma_clip: float = 0.005
    shift_first: bool = True
    crop_region: int = 448
    precision: str = "fp32"  # "fp32" (reference), "bf16" (autocast) or "auto" (see accelerator)

    @property
    def n_crops(self) -> int:
        return 2 + self.n_local

    def build_head(self, in_dim: int) -> DINOHead:
        return DINOHead(
            in_dim,
            self.head_hidden_dim,
            self.head_bottleneck_dim,
            self.head_out_dim,
            self.head_layers,
            self.head_batch_norm,
        )


# ----------------------------------------------------------------------------------- schedules


def cosine_schedule(
    base: float,
    final: float,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: int = 0,
    start_warmup: float = 0.0,
) -> np.ndarray:
    """A per-step value: linear warm-up from ``start_warmup`` to ``base`` over ``warmup_epochs``,
    then a half cosine from ``base`` to ``final`` over the remaining steps.

    Returns an array of ``epochs * steps_per_epoch`` values (as in DINO's ``cosine_scheduler``;
    a warm-up longer than the run is cut at the run's end).
    """
    total = epochs * steps_per_epoch
    warmup_steps = min(warmup_epochs * steps_per_epoch, total)
    warmup = np.linspace(start_warmup, base, warmup_steps) if warmup_steps > 0 else np.array([])
    steps = np.arange(total - warmup_steps)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == total
    return schedule


LR_WARMUPS = ("zero", "first-step")


def lr_schedule(settings: DinoSettings, steps_per_epoch: int) -> np.ndarray:
    """The per-step learning rate of ``settings``: its warm-up (``lr_warmup``), then a half
    cosine to ``min_lr``."""
    if settings.lr_warmup not in LR_WARMUPS:
        raise ValueError(f"lr_warmup must be one of {LR_WARMUPS}, not {settings.lr_warmup!r}")
    epochs, base, final = settings.epochs, settings.lr, settings.min_lr
    warmup = min(settings.warmup_epochs * steps_per_epoch, epochs * steps_per_epoch)
    if settings.lr_warmup == "zero" or warmup == 0:
        return cosine_schedule(base, final, epochs, steps_per_epoch, settings.warmup_epochs)
    # The CODA authors' linear warm-up adds lr / W before every step up to the W-th, so it
    # runs for W + 1 steps and peaks one increment above lr; their cosine decays from that peak
    # over the steps after the warm-up, its first value one step into the half period.
    total = epochs * steps_per_epoch
    ramp = base * np.arange(1, warmup + 2) / warmup
    after = np.arange(1, max(total - warmup, 1))
    cosine = final + 0.5 * (ramp[-1] - final) * (1 + np.cos(np.pi * after / (total - warmup)))
    return np.concatenate((ramp, cosine))[:total]


# ----------------------------------------------------------------------------------- head


class DINOHead(nn.Module):
    """MLP (GELU; batch-norm after hidden layers only if asked) -> L2-normalise ->
    weight-normalised linear layer, norm fixed to 1.

    The last layer is ``weight_norm(Linear(bottleneck_dim, out_dim, bias=False))`` whose norm
    parameter (``last_layer.parametrizations.weight.original0``, the old ``weight_g``) is filled
    with 1 and frozen, so only the direction (``original1``, the old ``weight_v``) trains.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        out_dim: int = 4096,
        n_layers: int = 3,
        batch_norm: bool = False,
    ):
        super().__init__()
        n_layers = max(n_layers, 1)

        def hidden(width_in: int) -> list[nn.Module]:
            norm = [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
            return [nn.Linear(width_in, hidden_dim), *norm, nn.GELU()]

        if n_layers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = hidden(in_dim)
            for _ in range(n_layers - 2):
                layers += hidden(hidden_dim)
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck_dim, out_dim, bias=False)
        )
        norm = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            norm.fill_(1.0)
        norm.requires_grad_(False)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def weight_norm(self) -> torch.Tensor:
        """The frozen norm of the last layer's rows (all ones)."""
        return self.last_layer.parametrizations.weight.original0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


# ----------------------------------------------------------------------------------- backbone


def class_token(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The class token after the final norm (timm ViT); B×D features pass through unchanged."""
    out = backbone.forward_features(x)
    return out[:, 0] if out.dim() == 3 else out


def _join(views: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate same-shape views along the batch; a view, not a copy, when they already lie
    back to back in one buffer (as the views of :func:`hcibench.train.augment.multi_crop` do)."""
    first = views[0]
    if len(views) == 1:
        return first
    step = first.numel()
    adjacent = all(
        v.is_contiguous()
        and v.shape == first.shape
        and v.dtype == first.dtype
        and v.device == first.device
        and v.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        and v.storage_offset() == first.storage_offset() + i * step
        and not v.requires_grad
        for i, v in enumerate(views)
    )
    if adjacent:
        shape = (len(views) * first.shape[0],) + tuple(first.shape[1:])
        strides, size = [], 1
        for extent in reversed(shape):
            strides.insert(0, size)
            size *= extent
        return first.as_strided(shape, strides, first.storage_offset())
    return torch.cat(list(views))


class MultiCropWrapper(nn.Module):
    """Backbone + head over a list of views, one backbone call per run of same-size views.

    ``features(backbone, x) -> B×D`` (default: the class token of a timm ViT, which must be built
    with ``dynamic_img_size=True`` to take both crop sizes). Returns the head outputs of all views
    concatenated in view order: (n_views·B)×out_dim.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, features: FeatureFn | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.features = features or class_token

    def forward(self, views: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if isinstance(views, torch.Tensor):
            views = [views]
        outputs, start = [], 0
        while start < len(views):
            end = start + 1
            while end < len(views) and views[end].shape[1:] == views[start].shape[1:]:
                end += 1
            outputs.append(self.features(self.backbone, _join(views[start:end])))
            start = end
        return self.head(outputs[0] if len(outputs) == 1 else torch.cat(outputs))


# ----------------------------------------------------------------------------------- loss


def dino_loss(
    student_output: torch.Tensor,
    teacher_output: torch.Tensor,
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
    n_crops: int,
    n_global: int = 2,
) -> torch.Tensor:
    """The DINO loss, without any state.

    With ``B`` images per view, ``s_v`` = rows ``v·B … (v+1)·B`` of ``student_output`` (views in
    order, globals first) and ``t_g`` likewise of ``teacher_output`` (the ``n_global`` globals)::

        q_g = softmax((t_g - center) / teacher_temp)          # teacher targets, no gradient
        p_v = log_softmax(s_v / student_temp)
        L   = mean over pairs (g, v), v != g, of  mean_b  sum_k  -q_g[b, k] · p_v[b, k]

    i.e. ``n_global · n_crops - n_global`` terms (14 for 2 globals and 6 locals).
    """
    batch = student_output.shape[0] // n_crops
    dim = student_output.shape[-1]
    # At least float32 (bf16 outputs are promoted), float64 when the outputs are.
    dtype = torch.promote_types(student_output.dtype, torch.float32)
    log_p = F.log_softmax(student_output.to(dtype) / student_temp, dim=-1).view(n_crops, batch * dim)
    q = F.softmax((teacher_output.detach().to(dtype) - center.to(dtype)) / teacher_temp, dim=-1)
    q = q.view(n_global, batch * dim)
    cross = -(q @ log_p.t()) / batch  # cross[g, v] = mean_b sum_k -q_g · p_v
    # The mean over the pairs of different views, as a weighted sum: selecting them with a
    # boolean mask would wait for the GPU to count them.
    keep = 1.0 - torch.eye(n_global, n_crops, device=cross.device, dtype=cross.dtype)
    return (cross * keep).sum() / (n_global * n_crops - min(n_global, n_crops))


def target_spread(
    teacher_output: torch.Tensor, center: torch.Tensor, teacher_temp: float
) -> dict[str, float]:
    """:func:`spread_tensors` as numbers."""
    return {k: float(v) for k, v in spread_tensors(teacher_output, center, teacher_temp).items()}


@torch.no_grad()
def spread_tensors(
    teacher_output: torch.Tensor, center: torch.Tensor, teacher_temp: float
) -> dict[str, torch.Tensor]:
    """How informative the teacher's targets are, as fractions of the largest entropy ln K.

    ``entropy``: mean entropy of one image's target. Near 1, every target is uniform: DINO has
    collapsed onto the centre and its loss sits at ln K, so the student learns nothing more.
    ``usage``: entropy of the batch-averaged target. Near 0, every image is sent to the same
    prototype: the other collapse, which centring normally prevents.
    """
    q = F.softmax((teacher_output.float() - center) / teacher_temp, dim=-1)
    top = math.log(q.shape[-1])
    per_image = -(q * q.clamp_min(1e-12).log()).sum(-1).mean()
    mean = q.mean(0)
    usage = -(mean * mean.clamp_min(1e-12).log()).sum()
    return {"entropy": per_image / top, "usage": usage / top}


# Above this share of the largest entropy, the teacher's targets count as uniform: collapsed.
COLLAPSED_ENTROPY = 0.95


def collapse_epoch(entropies: Sequence[float], threshold: float = COLLAPSED_ENTROPY) -> int | None:
    """The first epoch (counting from 1) from which the teacher targets stayed uniform to the end
    of training, or None if training ended with informative targets."""
    start = None
    for epoch, value in enumerate(entropies, start=1):
        if value >= threshold:
            start = start or epoch
        else:
            start = None
    return start


class DINOLoss(nn.Module):
    """DINO's loss with its state: the center (a buffer) and the teacher-temperature schedule.

    ``forward(student_output, teacher_output, epoch)`` returns :func:`dino_loss` with the current
    center and ``teacher_temperature(epoch)``, then updates the center:
    ``center <- m · center + (1 - m) · mean(teacher_output over rows)`` with ``m =
    center_momentum``. The teacher temperature rises linearly from ``warmup_teacher_temp`` to
    ``teacher_temp`` over ``warmup_teacher_temp_epochs`` epochs, then stays.
    """

    def __init__(
        self,
        out_dim: int,
        n_crops: int,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.07,
        warmup_teacher_temp_epochs: int = 30,
        n_epochs: int = 300,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        n_global: int = 2,
    ):
        super().__init__()
        self.out_dim = out_dim
        self.n_crops = n_crops
        self.n_global = n_global
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        warmup = max(int(warmup_teacher_temp_epochs), 0)
        self.teacher_temp_schedule = np.concatenate(
            (
                np.linspace(warmup_teacher_temp, teacher_temp, warmup),
                np.ones(max(int(n_epochs) - warmup, 0)) * teacher_temp,
            )
        )
        if len(self.teacher_temp_schedule) == 0:
            self.teacher_temp_schedule = np.array([teacher_temp])

    def teacher_temperature(self, epoch: int) -> float:
        schedule = self.teacher_temp_schedule
        return float(schedule[min(max(int(epoch), 0), len(schedule) - 1)])

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        temperature = self.teacher_temperature(epoch)
        loss = dino_loss(
            student_output,
            teacher_output,
            self.center,
            self.student_temp,
            temperature,
            self.n_crops,
            self.n_global,
        )
        # 0-d tensors, left on the device: reading them every step would wait for the GPU.
        self.last_targets = spread_tensors(teacher_output, self.center, temperature)
        self.update_center(teacher_output)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        batch_center = teacher_output.detach().float().sum(dim=0, keepdim=True)
        # Every rank holds an equal slice of the global batch (distributed.local_slice), so the
        # count is known without asking the device.
        count = len(teacher_output) * distributed.world_size()
        if distributed.active():
            torch.distributed.all_reduce(batch_center)
        batch_center = batch_center / count
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)


# ----------------------------------------------------------------------------------- optimisation


def cancel_last_layer(head: nn.Module) -> None:
    """Drop the gradients of the head's last layer (it stays fixed in the first epoch(s))."""
    for name, param in head.named_parameters():
        if name.startswith("last_layer"):
            param.grad = None


def _matched_parameters(student: nn.Module, teacher: nn.Module) -> tuple[list, list]:
    s_named, t_named = list(student.named_parameters()), list(teacher.named_parameters())
    if [n for n, _ in s_named] != [n for n, _ in t_named]:
        raise ValueError("student and teacher must have the same architecture (parameter names)")
    for (name, s), (_, t) in zip(s_named, t_named):
        if s.shape != t.shape:
            raise ValueError(f"parameter '{name}': student {tuple(s.shape)}, teacher {tuple(t.shape)}")
    return [p for _, p in s_named], [p for _, p in t_named]


class DinoTrainer:
    """One DINO optimisation step at a time, with its optimiser, schedules and loss state.

    Builds the AdamW optimiser (fresh), the per-step lr / weight-decay / teacher-momentum
    schedules (from their start) and a :class:`DINOLoss` with a zero center (or the center in
    ``loss_state``). :func:`train_dino` drives it over a domain; benchmarks drive it directly.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        student_head: nn.Module,
        teacher_head: nn.Module,
        settings: DinoSettings,
        steps_per_epoch: int,
        features: FeatureFn | None = None,
        loss_state: dict | None = None,
        extra_loss: Callable[[Sequence[torch.Tensor]], torch.Tensor] | None = None,
    ):
        self.settings = settings
        self.extra_loss = extra_loss  # added to the DINO loss (e.g. feature alignment)
        # Under torchrun: heads' batch-norm synchronised over the ranks on CUDA (in place).
        distributed.sync_batch_norm(student_head)
        distributed.sync_batch_norm(teacher_head)
        self.last_extra = torch.tensor(float("nan"))
        self.student = MultiCropWrapper(student, student_head, features)
        self.teacher = MultiCropWrapper(teacher, teacher_head, features)
        self.student_head = student_head
        self.student_params, self.teacher_params = _matched_parameters(self.student, self.teacher)
        for param in self.teacher_params:
            param.requires_grad_(False)
        self.trainable = [p for p in self.student_params if p.requires_grad]
        # The teacher follows only what the student trains: a part of the FE frozen for an
        # adaptation keeps the teacher's own step-1 weights instead of drifting to the student's.
        moving = [p.requires_grad for p in self.student_params]
        self.ema_student = [p for p, m in zip(self.student_params, moving) if m]
        self.ema_teacher = [p for p, m in zip(self.teacher_params, moving) if m]
        device = self.student_params[0].device
        self.device = device
        self.loss = DINOLoss(
            settings.head_out_dim,
            settings.n_crops,
            settings.warmup_teacher_temp,
            settings.teacher_temp,
            settings.warmup_teacher_temp_epochs,
            settings.epochs,
            settings.student_temp,
            settings.center_momentum,
        ).to(device)
        if loss_state and loss_state.get("center") is not None:
            self.loss.center.copy_(loss_state["center"].to(device).view_as(self.loss.center))
        self.optimizer = torch.optim.AdamW(parameter_groups([self.student]), lr=settings.lr)
        epochs, steps = settings.epochs, max(steps_per_epoch, 1)
        self.lr_schedule = lr_schedule(settings, steps)
        self.wd_schedule = cosine_schedule(settings.weight_decay, settings.weight_decay_end, epochs, steps)
        self.momentum_schedule = cosine_schedule(settings.momentum_teacher, 1.0, epochs, steps)
        if settings.clip_mode not in CLIP_MODES:
            raise ValueError(f"clip_mode must be one of {CLIP_MODES}, not {settings.clip_mode!r}")
        if settings.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {settings.precision!r}")
        self.precision = resolve_precision(settings.precision, device)

    def _schedule_value(self, schedule: np.ndarray, step: int) -> float:
        return float(schedule[min(step, len(schedule) - 1)])

    def step(self, views: Sequence[torch.Tensor], epoch: int, step: int) -> torch.Tensor:
        """One update on ``views`` (globals first); ``step`` is the global step index. Returns
        the DINO loss as a 0-d tensor on the device (``float()`` it to read it): nothing in a
        step waits for the GPU. Under torchrun ``views`` is the global batch, of which this
        rank trains on its slice (see :mod:`hcibench.run.distributed`)."""
        settings = self.settings
        views = distributed.local_views(views)
        set_schedule(
            self.optimizer,
            self._schedule_value(self.lr_schedule, step),
            self._schedule_value(self.wd_schedule, step),
        )
        self.student.train()
        self.teacher.eval()
        if settings.head_batch_norm:
            # The teacher's running statistics are not averaged from the student's, so its
            # head normalises with the batch's own statistics, as the student's does.
            self.teacher.head.train()
        with autocast(self.device, self.precision):
            with torch.no_grad():
                teacher_output = self.teacher(views[:2])
            student_output = self.student(views)
        loss = self.loss(student_output, teacher_output, epoch)
        value = loss.detach()
        if self.extra_loss is not None:
            extra = self.extra_loss(views)
            self.last_extra = extra.detach()
            loss = loss + extra

        def before_step() -> None:
            if settings.clip_grad:
                clip_gradients(self.trainable, settings.clip_grad, settings.clip_mode)
            if epoch < settings.freeze_last_layer_epochs:
                cancel_last_layer(self.student_head)

        optimise(loss, self.optimizer, self.trainable, before_step)
        ahead = 1 if settings.momentum_ahead else 0
        self.update_teacher(self._schedule_value(self.momentum_schedule, step + ahead))
        return value

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum · teacher + (1 - momentum) · student, backbone and head."""
        torch._foreach_mul_(self.ema_teacher, momentum)
        torch._foreach_add_(self.ema_teacher, self.ema_student, alpha=1 - momentum)


# ----------------------------------------------------------------------------------- training


def as_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    images = images.to(device, non_blocking=images.is_pinned())
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    return images.to(dtype=torch.float32)


def default_views(settings: DinoSettings) -> ViewFn:
    """The reference augmentation: multi-crop, or cross-batch views when a partner is given."""

    def views(anchor: torch.Tensor, partner: torch.Tensor | None, generator: torch.Generator):
        form = augment.Jitter(
            settings.shift_std,
            settings.gamma_std,
            settings.jitter_p,
            settings.gamma_clip,
            settings.shift_first,
        )
        options = dict(jitter=settings.jitter, form=form, region=settings.crop_region)
        if partner is None:
            return augment.multi_crop(
                anchor, settings.global_size, settings.local_size, settings.n_local, generator, **options
            )
        return augment.cross_batch_views(
            anchor, partner, settings.global_size, settings.local_size, settings.n_local, generator, **options
        )

    return views


class DinoEpochs(TrainingStep):
    """DINO over a domain's images as :func:`hcibench.train.loop.run_epochs` drives it: each
    epoch draws the cross-batch partners (with ``settings.cross_batch``), then every batch of
    ``batch_size`` images (the last partial one dropped, as the reference) becomes views for one
    :meth:`DinoTrainer.step`."""

    def __init__(
        self,
        trainer: DinoTrainer,
        domain: Domain,
        batch_size: int,
        views: ViewFn,
        log: Callable[[str], None],
        description: str,
    ):
        super().__init__(trainer.device, trainer.precision)
        self.trainer, self.domain, self.batch_size, self.make_views = trainer, domain, batch_size, views
        self.optimizer = trainer.optimizer
        self.log, self.description = log, description
        self.pair_stats: dict | None = None
        self.last_loss = float("nan")
        student, teacher = trainer.student, trainer.teacher
        self.named = {
            "student": student.backbone,
            "teacher": teacher.backbone,
            "student_head": student.head,
            "teacher_head": teacher.head,
        }
        self.modes_before = {name: module.training for name, module in self.named.items()}

    def modules(self) -> dict[str, nn.Module]:
        return self.named

    def train_mode(self) -> None:
        pass  # every DinoTrainer.step sets the student's and the teacher's modes itself

    def batches(self, epoch: int, generator: torch.Generator):
        self.generator, self.partners = generator, None
        settings, domain = self.trainer.settings, self.domain
        if settings.cross_batch:
            self.partners, stats = cross_batch_partners(domain.meta, settings.pair_key, generator)
            if self.pair_stats is None:
                self.pair_stats = stats
                if stats["fallback_plate"] or stats["fallback_self"]:
                    where = "their batch" if stats["key"] == "same-batch" else f"another {stats['key']}"
                    self.log(
                        f"cross-batch pairs on '{domain.name}' by {stats['key']}: "
                        f"{stats['fallback_plate']} of {stats['pairs']} images paired on "
                        f"another plate, {stats['fallback_self']} with themselves "
                        f"({stats['fallback_compounds']} compounds without a partner in "
                        f"{where})"
                    )
        batches = domain.batches(self.batch_size, shuffle=True, generator=generator, drop_last=True)
        return prefetch(batches, self.device)

    def update(self, batch, epoch: int, step: int) -> dict[str, torch.Tensor]:
        images, _, positions = batch
        trainer = self.trainer
        anchor = as_float(images, self.device)
        partner = None
        if self.partners is not None:
            partner = as_float(take(self.domain.images, self.partners[positions]), self.device)
        loss = trainer.step(self.make_views(anchor, partner, self.generator), epoch, step)
        self.last_step_loss = loss
        figures = {
            "loss": loss,
            "entropy": trainer.loss.last_targets["entropy"],
            "usage": trainer.loss.last_targets["usage"],
        }
        if trainer.extra_loss is not None:
            figures["extra"] = trainer.last_extra
        return figures

    def end_epoch(self, epoch: int, figures: dict[str, float]) -> None:
        self.last_loss = float(
            distributed.mean_over_ranks(torch.as_tensor(self.last_step_loss, device=self.device))
        )
        if not math.isfinite(figures["loss"]):
            raise FloatingPointError(f"DINO loss is {figures['loss']} in epoch {epoch}")

    def finish(self) -> None:
        for name, module in self.named.items():
            module.train(self.modes_before[name])

    def progress_state(self):
        return {
            "center": self.trainer.loss.center.detach().cpu(),
            "pairs": self.pair_stats,
            "last_loss": self.last_loss,
        }

    def load_progress_state(self, state) -> None:
        self.trainer.loss.center.copy_(state["center"].to(self.device))
        self.pair_stats, self.last_loss = state["pairs"], state["last_loss"]


def train_dino(
    student: nn.Module,
    teacher: nn.Module,
    student_head: nn.Module,
    teacher_head: nn.Module,
    domain: Domain,
    settings: DinoSettings,
    progress: Progress | None = None,
    generator: torch.Generator | None = None,
    loss_state: dict | None = None,
    *,
    features: FeatureFn | None = None,
    views: ViewFn | None = None,
    description: str = "DINO",
    on_epoch: Callable[[int], None] | None = None,
    extra_loss: Callable[[Sequence[torch.Tensor]], torch.Tensor] | None = None,
    keep_with_checkpoint: dict | None = None,
) -> dict:
    """Train ``student`` (+ head) with DINO on ``domain``'s images; ``teacher`` follows by EMA.

    Modules are updated in place (on the device of the student's parameters). The optimiser is
    built here; schedules start from their beginning and the center from zero (or from
    ``loss_state["center"]`` to continue an interrupted run). With ``settings.cross_batch``, each
    epoch draws for every image a partner of the same compound in another ``settings.pair_key``
    (see :func:`hcibench.train.pairs.cross_batch_partners`). ``views(anchor, partner_or_None,
    generator)`` replaces the image augmentation (e.g. for profiles); ``features`` replaces the
    class-token feature function. ``on_epoch(k)`` is called after epoch ``k`` (counting from 1)
    with the modules in eval mode, e.g. to record how the FE changes. ``extra_loss(views)`` is
    added to the DINO loss of every step (its epoch means are returned as ``extra_losses``).

    Inside a stage (:func:`hcibench.run.stages.current_checkpoint`), the training saves its
    progress after an epoch when a save is due (modules, optimiser, centre, random states,
    epoch figures, and the ``state_dict()`` of each object in ``keep_with_checkpoint``, e.g. an
    adaptation monitor) and, when the stage is computed again after a kill, goes on from there:
    the result is the one an uninterrupted run gives.

    Returns ``{"loss", "last_loss", "epoch_losses", "target_entropy", "target_usage",
    "collapsed_from_epoch", "epochs", "steps", "images", "seconds",
    "images_per_second", "batch_size", "cross_batch", "pair_key", "pairs", "teacher_temp",
    "loss_state"}``; ``pairs`` holds the partner statistics of the first epoch (fallback counts)
    or None.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    n = len(domain)
    if n == 0:
        raise ValueError(f"domain '{domain.name}' has no images to train DINO on")
    batch_size = min(settings.batch_size, n)  # a domain smaller than a batch is one batch
    steps_per_epoch = n // batch_size  # drop_last, as the reference
    trainer = DinoTrainer(
        student,
        teacher,
        student_head,
        teacher_head,
        settings,
        steps_per_epoch,
        features,
        loss_state,
        extra_loss,
    )
    progress = progress or Progress()
    epochs = DinoEpochs(
        trainer, domain, batch_size, views or default_views(settings), progress.log, description
    )
    figures = run_epochs(epochs, settings.epochs, generator, progress, on_epoch, keep_with_checkpoint)
    epoch_losses, epoch_entropy = figures.curve("loss"), figures.curve("entropy")
    images = figures.steps * batch_size
    collapsed = collapse_epoch(epoch_entropy)
    if collapsed is not None:
        progress.log(
            f"warning: {description} collapsed from epoch {collapsed} of {settings.epochs}: the "
            f"teacher's targets are uniform ({epoch_entropy[-1]:.0%} of the largest entropy), so "
            f"the feature extractor stopped learning there."
        )
    return {
        "loss": epoch_losses[-1] if epoch_losses else float("nan"),
        "last_loss": epochs.last_loss,
        "epoch_losses": epoch_losses,
        "target_entropy": epoch_entropy,
        "target_usage": figures.curve("usage"),
        "extra_losses": figures.curve("extra") if extra_loss is not None else None,
        "collapsed_from_epoch": collapsed,
        "epochs": settings.epochs,
        "steps": figures.steps,
        "images": images,
        "seconds": figures.seconds,
        "images_per_second": images / figures.seconds if figures.seconds > 0 else float("nan"),
        "batch_size": batch_size,
        "cross_batch": settings.cross_batch,
        "pair_key": settings.pair_key if settings.cross_batch else None,
        "pairs": epochs.pair_stats,
        "teacher_temp": trainer.loss.teacher_temperature(max(settings.epochs - 1, 0)),
        "loss_state": {"center": trainer.loss.center.detach().cpu().clone()},
    }
