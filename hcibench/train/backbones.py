"""Vision Transformer backbones through timm, created by name with keyword overrides.

Importing this module first makes torchvision importable on CPU-only torch builds (see
``hcibench.compat``), because timm imports torchvision. Nothing is ever downloaded: weights are
random unless a local file is given.
"""

from __future__ import annotations

import warnings
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

    Tensors whose shape does not fit are skipped: a classifier head for another number of
    classes silently, anything else (a patch embedding made for other channels, position
    embeddings for another image size) with a warning, since the model then starts partly from
    random weights. A file that matches nothing at all is an error: it is surely the wrong file.
    """
    fitting, mismatched = _fitting(read_weights(path), model, path)
    if mismatched:
        warnings.warn(
            f"pretrained weights {path}: {'; '.join(mismatched)}; "
            "left at random initialisation (do the data's channels or image size differ from "
            "those the file was made for?)",
            stacklevel=2,
        )
    model.load_state_dict(fitting, strict=False)


def check_weights(settings: dict) -> None:
    """Raise UsageError unless ``settings["pretrained"]`` (if any) fits the backbone ``settings``
    describe: a run checks this before its folder is written, not when the first model loads.
    The model is built on the meta device (no memory, no computation) with the file's own
    number of input channels, which the dataset decides and a run does not know yet."""
    path = settings.get("pretrained")
    if not path:
        return
    state = read_weights(path)
    embedding = state.get("patch_embed.proj.weight")
    in_chans = embedding.shape[1] if embedding is not None and embedding.dim() == 4 else 3
    with torch.device("meta"):
        model = create_vit({**settings, "pretrained": None}, in_chans=in_chans)
    _fitting(state, model, path)


def read_weights(path: str | Path) -> dict:
    """The state dict in a local weights file (unwrapped from 'model', 'state_dict', 'teacher')."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"pretrained weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    return state


def _fitting(state: dict, model: nn.Module, path: str | Path) -> tuple[dict, list[str]]:
    """The tensors of ``state`` that ``model`` has with the same shape, and 'name is [file
    shape], the backbone needs [shape]' for each it has with another shape outside its
    classifier head. UsageError when nothing fits."""
    own = model.state_dict()
    shared = [name for name in state if name in own]
    fitting = {name: state[name] for name in shared if own[name].shape == state[name].shape}
    if not fitting:
        raise UsageError(
            f"no tensor in {path} fits backbone {type(model).__name__}: give weights made for "
            f"this backbone's settings, or --set backbone.pretrained=null for random weights"
        )
    mismatched = [
        f"{name} is {list(state[name].shape)}, the backbone needs {list(own[name].shape)}"
        for name in shared
        if name not in fitting and not name.startswith("head.")
    ]
    return fitting, mismatched


def token_dim(model: nn.Module) -> int:
    """Width of the tokens a ViT produces."""
    return int(model.embed_dim)
