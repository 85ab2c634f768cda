"""What kind of sample a run learns from, as one object: an image (C×H×W, a timm ViT) or a
profile (a feature vector, an MLP; :mod:`hcibench.train.profiles`). Everything that depends on
the kind asks the run's modality (``modality_of(config)``, from ``config["modality"]``, which
the runner sets from the dataset) instead of testing the kind itself.
"""

from __future__ import annotations

from torch import nn

from hcibench.run.storage import weights_by_content
from hcibench.train import profiles
from hcibench.train.backbones import check_weights, create_vit


class ImageModality:
    name = "image"
    nouns = ("images", "image")  # plural, singular: how reports and figures name a sample
    # The first weight of a feature extractor, whose shape tells the input width (channels).
    first_weight = "patch_embed.proj.weight"

    def fe_settings(self, config: dict) -> dict:
        """The settings that define the feature extractor, for stage keys (a pretrained weights
        file named by its content, :func:`hcibench.run.storage.weights_by_content`)."""
        return weights_by_content(config["backbone"])

    def create_fe(
        self, config: dict, in_chans: int, num_classes: int = 0, drop_path: float = 0.0
    ) -> nn.Module:
        """A timm ViT on C×H×W images (``forward_features``, ``forward_head``, ``embed_dim``)."""
        return create_vit(config["backbone"], in_chans=in_chans, num_classes=num_classes, drop_path=drop_path)

    def check_fe_settings(self, config: dict) -> None:
        """UsageError when a pretrained weights file fits no tensor of the configured ViT."""
        check_weights(config["backbone"])

    def dino_views(self, config: dict, n_local: int):
        """The DINO view function (None: the image multi-crop of :mod:`hcibench.train.dino`)."""
        return None

    def masked_autoencoder(self, encoder: nn.Module, channels: int, settings) -> nn.Module:
        """Encoder + decoder of MAE (``settings``: a MaeSettings)."""
        from hcibench.train.mae import MaskedAutoencoder, build_decoder

        return MaskedAutoencoder(encoder, build_decoder(encoder, settings, channels), settings)


class ProfileModality:
    name = "profile"
    nouns = ("profiles", "profile")
    first_weight = "body.0.weight"

    def fe_settings(self, config: dict) -> dict:
        return {"modality": "profile", **config["profile"]}

    def create_fe(
        self, config: dict, in_chans: int, num_classes: int = 0, drop_path: float = 0.0
    ) -> nn.Module:
        """An MLP on F-feature profiles (``in_chans`` = F; ``drop_path`` becomes its dropout)."""
        return profiles.create_mlp(config["profile"]["fe"], in_chans, num_classes, dropout=drop_path)

    def check_fe_settings(self, config: dict) -> None:
        """Profile MLPs start from random weights: nothing to check."""

    def dino_views(self, config: dict, n_local: int):
        """Feature noise and dropout (:func:`hcibench.train.profiles.profile_views`)."""
        return profiles.profile_views(config["profile"]["augment"], n_local)

    def masked_autoencoder(self, encoder: nn.Module, channels: int, settings) -> nn.Module:
        decoder = profiles.ProfileDecoder(
            encoder.embed_dim, channels, settings.decoder_dim, settings.decoder_depth
        )
        return profiles.ProfileMAE(encoder, decoder, settings.mask_ratio)


MODALITIES = {"image": ImageModality(), "profile": ProfileModality()}


def modality_of(config: dict):
    """The run's modality (images unless the dataset says otherwise)."""
    return MODALITIES[config.get("modality", "image")]


def backbone_settings(config: dict) -> dict:
    """The settings that define this run's feature extractor, for stage keys."""
    return modality_of(config).fe_settings(config)


def create_backbone(config: dict, in_chans: int, num_classes: int = 0, drop_path: float = 0.0) -> nn.Module:
    """This run's feature extractor (``in_chans``: image channels or profile features)."""
    return modality_of(config).create_fe(config, in_chans, num_classes, drop_path)


def check_fe_settings(config: dict) -> None:
    """UsageError for feature-extractor settings that cannot be built (checked before a run)."""
    modality_of(config).check_fe_settings(config)


def dino_views(config: dict, n_local: int):
    """This run's DINO view function (None: the image multi-crop)."""
    return modality_of(config).dino_views(config, n_local)
