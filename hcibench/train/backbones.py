"""Vision Transformer backbones through timm, created by name with keyword overrides.

Importing this module first makes torchvision importable on CPU-only torch builds (see
``hcibench.compat``), because timm imports torchvision. Nothing is ever downloaded: weights are
random unless a local file is given.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hcibench.compat import ensure_torchvision_importable
from hcibench.errors import UsageError

ensure_torchvision_importable()

import timm  # noqa: E402  (must follow the torchvision fix)


def create_vit(settings: dict, in_chans: int = 3, num_classes: int = 0, drop_path: float = 0.0) -> nn.Module:
    """A timm ViT from ``settings`` (``model`` plus timm keyword overrides, ``pretrained`` file).

    ``dynamic_img_size`` is always on so one model takes global and local crops of any size
    divisible by the patch size.
    """
    options = dict(settings)
    name = options.pop("model")
    weights = options.pop("pretrained", None)
    try:
        model = timm.create_model(
            name,
            pretrained=False,
            in_chans=in_chans,
            num_classes=num_classes,
            drop_path_rate=drop_path,
            dynamic_img_size=True,
            **options,
        )
    except RuntimeError as error:  # timm's "Unknown model" is a RuntimeError
        raise UsageError(f"cannot create backbone '{name}': {error}") from error
    if weights:
        load_weights(model, weights)
    return model


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local state dict (or a checkpoint holding one under 'model'/'state_dict').

    Tensors whose shape does not fit (a classifier head for another number of classes) are
    skipped; a file that matches nothing at all is an error, since it is surely the wrong file.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"pretrained weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise UsageError(
            f"no tensor in {path} fits backbone {type(model).__name__}: give weights made for "
            f"this backbone's settings, or --set backbone.pretrained=null for random weights"
        )
    model.load_state_dict(fitting, strict=False)


def token_dim(model: nn.Module) -> int:
    """Width of the tokens a ViT produces."""
    return int(model.embed_dim)
