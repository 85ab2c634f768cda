"""Masked autoencoding (He et al. 2022) for the ViT feature extractor.

The encoder sees a random 25 % of the patches (with its class token); a small transformer decoder
fills in mask tokens and predicts the pixels of every patch; the loss is the mean squared error on
the *masked* patches only, against per-patch normalised pixels. Used to pretrain the FE of
Dual-model-MAE, to adapt it (ODA-MAE) and by test-time training (TTT).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hcibench.data import Domain
from hcibench.run import distributed
from hcibench.run.accelerator import device_of, prefetch, to_device
from hcibench.run.progress import Progress
from hcibench.train.backbones import timm
from hcibench.train.classifier import prepare_images
from hcibench.train.dino import cosine_schedule
from hcibench.train.loop import TrainingStep, optimise, parameter_groups, run_epochs, set_schedule

Block = timm.models.vision_transformer.Block
build_sincos2d_pos_embed = timm.layers.pos_embed_sincos.build_sincos2d_pos_embed


@dataclass
class MaeSettings:
    """MAE hyper-parameters; defaults follow He et al. (2022) scaled to a small decoder."""

    epochs: int = 300
    lr: float = 1.5e-4
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    batch_size: int = 128
    weight_decay: float = 0.05
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    decoder_dim: int = 256
    decoder_depth: int = 4
    decoder_heads: int = 8


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """B×C×H×W -> B×N×(patch·patch·C), patches in row-major order."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def masking_order(noise: torch.Tensor, mask_ratio: float):
    """From per-patch noise (B×N): the kept patch ids (lowest noise first), the ids that restore
    the original order, and the mask (B×N, 1.0 where a patch is hidden)."""
    n = noise.shape[1]
    keep = max(1, int(round(n * (1 - mask_ratio))))
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    mask = (restore >= keep).to(noise.dtype)
    return shuffle[:, :keep], restore, mask


def encode_visible(vit: nn.Module, images: torch.Tensor, noise: torch.Tensor, mask_ratio: float):
    """Run a timm ViT on the visible patches only. Returns (latent with prefix tokens first,
    restore ids, mask, patch grid shape)."""
    x = vit.patch_embed(images)
    grid = x.shape[1:3] if x.dim() == 4 else None  # dynamic_img_size keeps B×H×W×D
    x = vit.norm_pre(vit._pos_embed(x))
    prefix = vit.num_prefix_tokens
    kept_ids, restore, mask = masking_order(noise, mask_ratio)
    patches = x[:, prefix:]
    kept = torch.gather(patches, 1, kept_ids.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    latent = vit.norm(vit.blocks(torch.cat([x[:, :prefix], kept], dim=1)))
    return latent, restore, mask, tuple(grid) if grid is not None else None


class MAEDecoder(nn.Module):
    """Mask tokens + fixed 2-d sin-cos positions + transformer blocks -> pixels per patch."""

    def __init__(
        self,
        embed_dim: int,
        patch_size: int,
        in_chans: int,
        dim: int = 256,
        depth: int = 4,
        heads: int = 8,
        prefix_tokens: int = 1,
    ):
        super().__init__()
        self.patch_size, self.prefix_tokens, self.dim = patch_size, prefix_tokens, dim
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_size * patch_size * in_chans)

    def forward(self, latent: torch.Tensor, restore: torch.Tensor, grid) -> torch.Tensor:
        x = self.embed(latent)
        prefix, kept = x[:, : self.prefix_tokens], x[:, self.prefix_tokens :]
        b, n = restore.shape
        filled = torch.cat([kept, self.mask_token.expand(b, n - kept.shape[1], -1)], dim=1)
        filled = torch.gather(filled, 1, restore.unsqueeze(-1).expand(-1, -1, self.dim))
        positions = build_sincos2d_pos_embed(list(grid), dim=self.dim, device=x.device, dtype=x.dtype)
        x = torch.cat([prefix, filled + positions.unsqueeze(0)], dim=1)
        return self.pred(self.norm(self.blocks(x)))[:, self.prefix_tokens :]


def mae_loss(
    prediction: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, patch: int, norm_pix: bool = True
) -> torch.Tensor:
    """Mean squared error over the masked patches only (mask = 1), per-patch normalised targets."""
    target = patchify(images, patch)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = ((prediction - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class MaskedAutoencoder(nn.Module):
    """Encoder + decoder whose forward returns the MAE loss; one module so that it can also be
    called functionally (``torch.func.functional_call``) for batched test-time training."""

    def __init__(self, encoder: nn.Module, decoder: MAEDecoder, settings: MaeSettings):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.mask_ratio, self.norm_pix = settings.mask_ratio, settings.norm_pix_loss

    def noise_size(self, input_size: int) -> int:
        """Masking noise values per sample: one per patch of an ``input_size`` image."""
        return patch_count(self.encoder, input_size)

    def forward(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        latent, restore, mask, grid = encode_visible(self.encoder, images, noise, self.mask_ratio)
        prediction = self.decoder(latent, restore, grid)
        return mae_loss(prediction, images, mask, self.decoder.patch_size, self.norm_pix)


def patch_count(encoder: nn.Module, size: int) -> int:
    patch = encoder.patch_embed.patch_size[0]
    return (size // patch) ** 2


def build_decoder(encoder: nn.Module, settings: MaeSettings, in_chans: int) -> MAEDecoder:
    return MAEDecoder(
        encoder.embed_dim,
        encoder.patch_embed.patch_size[0],
        in_chans,
        settings.decoder_dim,
        settings.decoder_depth,
        settings.decoder_heads,
        encoder.num_prefix_tokens,
    )


class MaeStep(TrainingStep):
    """Masked reconstruction over a domain's images as :func:`hcibench.train.loop.run_epochs`
    drives it: random crops and flips, a fresh random mask per image, AdamW (betas 0.9, 0.95)
    on a warm-up then cosine rate."""

    def __init__(
        self,
        model: nn.Module,
        domain: Domain,
        settings: MaeSettings,
        input_size: int,
        precision: str,
        description: str,
    ):
        super().__init__(device_of(model), precision)
        self.model, self.domain, self.input_size, self.description = model, domain, input_size, description
        self.batch_size = min(settings.batch_size, len(domain))
        steps_per_epoch = max(1, len(domain) // self.batch_size)
        self.lr = cosine_schedule(
            settings.lr, settings.min_lr, settings.epochs, steps_per_epoch, settings.warmup_epochs
        )
        self.optimizer = torch.optim.AdamW(
            parameter_groups([model], settings.weight_decay), betas=(0.9, 0.95)
        )
        self.n_patches = model.noise_size(input_size)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def batches(self, epoch: int, generator: torch.Generator):
        self.generator = generator  # crops, flips and masks draw from the loop's stream too
        batches = self.domain.batches(self.batch_size, shuffle=True, generator=generator, drop_last=True)
        return prefetch(batches, self.device)

    def update(self, batch, epoch: int, step: int) -> dict[str, torch.Tensor]:
        images, _, _ = batch
        set_schedule(self.optimizer, float(self.lr[min(step, len(self.lr) - 1)]))
        x = prepare_images(to_device(images, self.device), self.input_size, True, self.generator)
        noise = torch.rand(len(x), self.n_patches, generator=self.generator).to(self.device)
        # Under torchrun: the global batch is drawn on every rank, each trains on its slice.
        x, noise = distributed.local_slice(x), distributed.local_slice(noise)
        with self.autocast():
            loss = self.model(x, noise).float()
        optimise(loss, self.optimizer, self.model.parameters())
        return {"loss": loss.detach()}


def train_mae(
    model: nn.Module,
    domain: Domain,
    settings: MaeSettings,
    input_size: int,
    progress: Progress | None = None,
    generator: torch.Generator | None = None,
    description: str = "MAE",
    on_epoch=None,
    precision: str = "fp32",
    keep_with_checkpoint: dict | None = None,
) -> dict:
    """Train encoder and decoder with the MAE loss on ``domain`` (no labels used). ``model`` is
    a :class:`MaskedAutoencoder` or any module with the same ``forward(x, noise) -> loss`` and
    ``noise_size(input_size)`` (e.g. ``hcibench.train.profiles.ProfileMAE``). ``on_epoch(k)`` is
    called after epoch ``k`` (counting from 1) with the model in eval mode. Training runs on the
    model's device, in ``precision`` (bf16: autocast, the loss in float32). Inside a stage, the
    progress is saved when due and a killed run goes on from it, as :func:`train_dino` does
    (with the ``state_dict()`` of the objects in ``keep_with_checkpoint``)."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    step = MaeStep(model, domain, settings, input_size, precision, description)
    figures = run_epochs(step, settings.epochs, generator, progress, on_epoch, keep_with_checkpoint)
    losses = figures.curve("loss")
    return {
        "loss": losses[-1] if losses else float("nan"),
        "epoch_losses": losses,
        "steps": figures.steps,
        "seconds": figures.seconds,
    }
