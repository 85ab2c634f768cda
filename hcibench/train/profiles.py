"""Models and augmentations for *profile* data: one feature vector per sample (e.g. per-well
CellProfiler features) instead of an image.

A dataset whose ``modality`` is ``"profile"`` runs the same methods as an image dataset; only
the pieces that touch the raw sample change, and the run's modality object chooses them
(:mod:`hcibench.train.modality`, from ``config["modality"]``, set by the runner from the
dataset), never the dataset's name:

* feature extractor: :class:`MLPEncoder` (F -> D: blocks of Linear + GELU + LayerNorm), with the
  ``forward_features`` / ``forward_head`` / ``embed_dim`` interface of a timm ViT;
* task model of the dual model: :class:`TaskMLP` on the FE output;
* DINO views (:func:`profile_views`): Gaussian feature noise plus feature dropout (features set to
  0, the mean of standardised features); 2 global views and ``n_local`` stronger local views,
  the cross-batch variant taking global 2 and half the locals from the partner;
* MAE (:class:`ProfileMAE`): a random 75 % of the features replaced by a learned mask value, the
  encoder + an MLP decoder reconstruct them, mean squared error on the masked features only.

Settings live in the ``profile`` section (``hcibench.run.presets.profile_settings``); the
training schedules (epochs, batch sizes) stay in the usual sections and a dataset tunes them
through ``Dataset.preset_settings``.
"""

from __future__ import annotations

import torch
from torch import nn


def _mlp(in_dim: int, hidden_dim: int, depth: int, dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for _ in range(depth):
        # Dropout is always a layer (identity at 0) so that the student (with dropout) and the
        # teacher (without) of DINO share parameter names.
        layers += [nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.LayerNorm(hidden_dim), nn.Dropout(dropout)]
        in_dim = hidden_dim
    return layers


class MLPEncoder(nn.Module):
    """F -> D feature extractor for profiles, with an optional linear classifier head.

    ``depth`` blocks Linear(hidden) + GELU + LayerNorm + Dropout (``dropout``, the profile
    counterpart of a ViT's drop-path), then Linear(embed_dim) + LayerNorm.
    """

    def __init__(
        self,
        in_features: int,
        hidden_dim: int = 512,
        embed_dim: int = 128,
        depth: int = 2,
        num_classes: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.in_features, self.embed_dim, self.num_features = in_features, embed_dim, embed_dim
        layers = _mlp(in_features, hidden_dim, depth, dropout)
        layers += [nn.Linear(hidden_dim if depth else in_features, embed_dim), nn.LayerNorm(embed_dim)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def create_mlp(settings: dict, in_features: int, num_classes: int = 0, dropout: float = 0.0) -> MLPEncoder:
    """An :class:`MLPEncoder` from the ``profile.fe`` settings."""
    return MLPEncoder(
        in_features, settings["hidden_dim"], settings["embed_dim"], settings["depth"], num_classes, dropout
    )


class TaskMLP(nn.Module):
    """The dual model's task model for profiles: an MLP on the FE output, then a classifier."""

    def __init__(self, in_dim: int, settings: dict, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(*_mlp(in_dim, settings["hidden_dim"], settings["depth"], 0.0))
        self.head = nn.Linear(settings["hidden_dim"] if settings["depth"] else in_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


# ----------------------------------------------------------------------------- augmentation


def perturb(
    x: torch.Tensor, noise_std: float, dropout: float, generator: torch.Generator | None
) -> torch.Tensor:
    """``x`` with each feature zeroed with probability ``dropout`` and Gaussian noise added.
    The numbers are drawn on the generator's device (a CPU generator gives the same
    perturbations whatever device ``x`` is on)."""
    draw_on = generator.device if generator is not None else x.device
    out = x
    if dropout > 0:
        keep = torch.rand(x.shape, generator=generator, device=draw_on).to(x.device) >= dropout
        out = out * keep
    if noise_std > 0:
        noise = torch.randn(x.shape, generator=generator, device=draw_on).to(x.device)
        out = out + noise_std * noise
    return out


def profile_views(augment: dict, n_local: int):
    """A DINO ``views(anchor, partner_or_None, generator)`` function for profiles: 2 global views
    (global 2 from the partner when one is given) and ``n_local`` stronger views (half of them
    from the partner), all B×F."""

    def views(anchor: torch.Tensor, partner: torch.Tensor | None, generator: torch.Generator):
        other = anchor if partner is None else partner
        out = [
            perturb(anchor, augment["noise_std"], augment["dropout"], generator),
            perturb(other, augment["noise_std"], augment["dropout"], generator),
        ]
        for i in range(n_local):
            source = anchor if i < n_local // 2 or partner is None else partner
            out.append(perturb(source, augment["local_noise_std"], augment["local_dropout"], generator))
        return out

    return views


# ----------------------------------------------------------------------------- masked features


def feature_mask(noise: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """B×F mask (1.0 = hidden) hiding the ``mask_ratio`` share of features with the highest
    noise, exactly ``round(F · mask_ratio)`` per row."""
    n = noise.shape[-1]
    keep = max(1, int(round(n * (1 - mask_ratio))))
    rank = noise.argsort(dim=-1).argsort(dim=-1)
    return (rank >= keep).to(noise.dtype)


class ProfileDecoder(nn.Module):
    """The learned mask value per feature and an MLP from the FE output back to the features."""

    def __init__(self, embed_dim: int, in_features: int, hidden_dim: int = 256, depth: int = 1):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(in_features))
        self.body = nn.Sequential(*_mlp(embed_dim, hidden_dim, depth, 0.0))
        self.pred = nn.Linear(hidden_dim if depth else embed_dim, in_features)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.pred(self.body(latent))


class ProfileMAE(nn.Module):
    """Masked-feature reconstruction with the interface of :class:`hcibench.train.mae.
    MaskedAutoencoder`: ``forward(x, noise)`` returns the loss, ``noise_size`` the width of the
    noise it needs (one value per feature)."""

    def __init__(self, encoder: MLPEncoder, decoder: ProfileDecoder, mask_ratio: float = 0.75):
        super().__init__()
        self.encoder, self.decoder, self.mask_ratio = encoder, decoder, mask_ratio

    def noise_size(self, input_size: int | None = None) -> int:
        return self.encoder.in_features

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        mask = feature_mask(noise, self.mask_ratio)
        visible = x * (1 - mask) + mask * self.decoder.mask_token
        prediction = self.decoder(self.encoder.forward_features(visible))
        return (((prediction - x) ** 2) * mask).sum() / mask.sum()
