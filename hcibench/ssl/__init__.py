"""Self-supervised objectives shared by the methods (DINO; cross-batch pairs live in ``pairs``)."""

from .dino import (
    DINOHead,
    DINOLoss,
    DinoSettings,
    DinoTrainer,
    MultiCropWrapper,
    class_token,
    cosine_schedule,
    dino_loss,
    params_groups,
    train_dino,
)

__all__ = [
    "DINOHead", "DINOLoss", "DinoSettings", "DinoTrainer", "MultiCropWrapper", "class_token",
    "cosine_schedule", "dino_loss", "params_groups", "train_dino",
]
