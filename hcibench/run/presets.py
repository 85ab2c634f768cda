"""Named settings bundles. ``quick`` runs the whole synthetic benchmark on a laptop CPU;
``paper`` carries the CODA paper's hyperparameters (DeiT-S, 224 px) and is meant for GPUs.

A preset is a nested dict; ``--set section.key=value`` overrides single entries. The core owns
what every method shares (where it computes, the backbone, the input size, the split); a method
plugin adds the sections it reads through ``Method.settings_sections(preset)`` (a family's shared
objectives) and ``Method.default_settings(preset)`` (its own, named after the method).
"""

from __future__ import annotations

import copy
import json

from hcibench.errors import UsageError

# Where and in which precision every stage computes (hcibench.run.accelerator): ``auto`` takes
# the GPU when there is one. The quick preset stays in fp32: its models are too small for bf16
# to pay on a CPU (a DINO step 5 % faster on an AVX512-BF16 CPU, slower on others), and fp32
# keeps its figures comparable between machines. The paper preset takes bf16 where it pays.
# ``resources``: what each stage's job asks a cluster for (hcibench plan, the executors): GPUs
# (null: one where the run computes on a GPU, else none) and hours.
QUICK_RUNTIME = {"device": "auto", "precision": "fp32", "resources": {"gpus": None, "hours": 1.0}}
PAPER_RUNTIME = {"device": "auto", "precision": "auto", "resources": {"gpus": None, "hours": 24.0}}

QUICK = {
    **QUICK_RUNTIME,
    "backbone": {
        "model": "vit_tiny_patch16_224",
        "img_size": 32,
        "patch_size": 4,
        "embed_dim": 128,
        "depth": 4,
        "num_heads": 4,
        "pretrained": None,
    },
    "input_size": 32,
    "eval_batch_size": 256,
    "split": {"val_plates": 1, "test_plates": 1},
}

PAPER = {
    **PAPER_RUNTIME,
    "backbone": {
        "model": "deit_small_patch16_224",
        "img_size": 224,
        "pretrained": None,
    },
    "input_size": 224,
    "eval_batch_size": 128,
    "split": {"val_plates": 1, "test_plates": 1},
}

PRESETS = {"quick": QUICK, "paper": PAPER}

# The ``profile`` section, for datasets of one feature vector per sample
# (hcibench.train.profiles); the same for every preset: profiles are small.
PROFILE = {
    "fe": {"hidden_dim": 512, "embed_dim": 128, "depth": 2},
    "task_model": {"hidden_dim": 128, "depth": 1},
    "augment": {"noise_std": 0.2, "dropout": 0.1, "local_noise_std": 0.3, "local_dropout": 0.4},
}


def profile_settings(preset: str) -> dict:
    """The ``profile`` section of a preset."""
    return copy.deepcopy(PROFILE)


def build(name: str, overrides: list[str] = (), sections: dict[str, dict] | None = None) -> dict:
    """A deep copy of preset ``name``, plus plugin ``sections``, with ``section.key=value``
    overrides applied."""
    if name not in PRESETS:
        raise UsageError(f"unknown preset '{name}'. Available: {', '.join(PRESETS)}.")
    config = copy.deepcopy(PRESETS[name])
    config["preset"] = name
    for section, values in (sections or {}).items():
        config.setdefault(section, copy.deepcopy(values))
    for item in overrides:
        apply_override(config, item)
    return config


def apply_override(config: dict, item: str) -> None:
    """Set ``a.b.c=value``; the value is parsed as JSON when it can be (numbers, true, null)."""
    if "=" not in item:
        raise UsageError(f"bad --set '{item}': expected section.key=value, e.g. supervised.epochs=5")
    path, raw = item.split("=", 1)
    keys = path.strip().split(".")
    node = config
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            raise UsageError(f"bad --set '{item}': '{key}' is not a settings section")
        node = node[key]
    if keys[-1] not in node:
        known = ", ".join(sorted(node)) if isinstance(node, dict) else ""
        raise UsageError(f"bad --set '{item}': unknown setting '{path}'. Known here: {known}")
    try:
        node[keys[-1]] = json.loads(raw)
    except json.JSONDecodeError:
        node[keys[-1]] = raw
