"""Make timm and torchmetrics importable when torchvision's compiled extension cannot load.

A CUDA build of torchvision installed beside a CPU build of torch (a common mismatch, and the
only pairing pip offers on some machines) fails at import with
``RuntimeError: operator torchvision::nms does not exist``: torchvision registers fake kernels
for operators its extension should have defined. timm and torchmetrics import torchvision, so
they fail too. Defining the two missing operator schemas before torchvision is imported lets it
load; only its compiled ops (nms, roi_align, image decoding) stay unavailable, and hcibench
uses none of them.

``ensure_torchvision_importable()`` is called once, from ``hcibench.train.backbones`` and the metric
plugin, before anything imports timm or torchmetrics. Where torchvision is healthy, or absent,
it does nothing.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

import torch

_MISSING_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the torch.library registration alive for the process lifetime
_state: str | None = None


def torchvision_extension_loads() -> bool:
    """True when torchvision's compiled extension loads against this torch (or no torchvision)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True
    folder = list(spec.submodule_search_locations)[0]
    candidates = glob.glob(os.path.join(folder, "_C*.so")) + glob.glob(os.path.join(folder, "_C*.pyd"))
    if not candidates:
        return False
    try:
        torch.ops.load_library(candidates[0])
    except (OSError, RuntimeError):
        return False
    return True


def ensure_torchvision_importable() -> str:
    """Patch the missing torchvision operator schemas if needed; return what was done.

    Returns ``"absent"`` (no torchvision), ``"healthy"`` (nothing to do), ``"patched"`` or
    ``"already-imported"`` (too late to help: torchvision was imported before this call).
    """
    global _library, _state
    if _state is not None:
        return _state
    if "torchvision" in sys.modules:
        _state = "already-imported"
    elif importlib.util.find_spec("torchvision") is None:
        _state = "absent"
    elif torchvision_extension_loads():
        _state = "healthy"
    else:
        _library = torch.library.Library("torchvision", "DEF")
        for schema in _MISSING_SCHEMAS.values():
            _library.define(schema)
        _state = "patched"
    return _state
