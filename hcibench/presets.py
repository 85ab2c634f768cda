"""Named settings bundles. ``quick`` runs the whole synthetic benchmark on a laptop CPU;
``paper`` carries the CODA paper's hyperparameters (DeiT-S, 224 px) and is meant for GPUs.

A preset is a nested dict; ``--set section.key=value`` overrides single entries. The core owns
the shared sections (backbone, split, the SSL objectives); a method plugin adds its own section,
named after the method, through ``Method.default_settings(preset)``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict

from .errors import UsageError
from .ssl.dino import DinoSettings
from .ssl.mae import MaeSettings

# Step 3 beyond the objective's own settings: which FE weights adapt ("all" as in the paper,
# "early": patch embedding, position embedding, class token and the first ``early_blocks``
# blocks, "norm": the normalisation layers' scales and shifts, as Tent), which adapted FE
# predicts, whether to record the label-free diagnostics of every epoch, and whether to move the
# FE's outputs on the target to the moments of its outputs on the source before the task model
# (hcibench.adaptation.AlignedFE; it applies to the dual models without adaptation too), and the
# weight of a loss that holds the FE's hidden features on the target at their step-1 moments on
# the source (hcibench.adaptation.FeatureAlignment; 0: off, as in the paper), and where the DINO
# centre starts: "zero" (the reference restarts it) or "source" (the step-1 teacher's mean output
# on the source's training images, where step 1's moving average had brought it).
ADAPT_SCOPE = {"trainable": "all", "early_blocks": 1, "predict_with": "teacher", "monitor": True,
               "align_tokens": False, "feature_alignment": 0.0, "center": "zero"}

# Where and in which precision every stage computes (hcibench.accelerator): ``auto`` takes
# the GPU when there is one. The quick preset stays in fp32: its models are too small for bf16
# to pay on a CPU (a DINO step 5 % faster on an AVX512-BF16 CPU, slower on others), and fp32
# keeps its figures comparable between machines. The paper preset takes bf16 where it pays.
# ``resources``: what each stage's job asks a cluster for (hcibench plan, the executors): GPUs
# (null: one where the run computes on a GPU, else none) and hours.
QUICK_RUNTIME = {"device": "auto", "precision": "fp32",
                 "resources": {"gpus": None, "hours": 1.0}}
PAPER_RUNTIME = {"device": "auto", "precision": "auto",
                 "resources": {"gpus": None, "hours": 24.0}}


def _dino_defaults() -> dict:
    """DINO's settings section: the run's ``precision`` applies to it, so it has none of its own."""
    section = asdict(DinoSettings())
    section.pop("precision")
    return section


QUICK = {
    **QUICK_RUNTIME,
    "backbone": {
        "model": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 4,
        "embed_dim": 128, "depth": 4, "num_heads": 4, "pretrained": None,
    },
    "input_size": 32,
    "eval_batch_size": 256,
    "split": {"val_plates": 1, "test_plates": 1},
    # Step 1 of the dual model: DINO on 32 px images, scaled down from the paper's 224 px.
    # With the reference head (no batch-norm, teacher temperature rising to 0.07) this small
    # model collapses onto uniform targets within a few epochs; a batch-normalised head, a
    # constant teacher temperature of 0.04 and 1024 prototypes keep the targets informative.
    # (warmup_teacher_temp_epochs no longer changes anything, the temperature being constant.)
    "dino": {
        **_dino_defaults(),
        "epochs": 15, "lr": 5e-4, "min_lr": 1e-5, "warmup_epochs": 2, "batch_size": 64,
        "weight_decay": 0.04, "weight_decay_end": 0.1, "momentum_teacher": 0.99,
        "n_local": 2, "global_size": 24, "local_size": 12, "head_hidden_dim": 256,
        "head_bottleneck_dim": 64, "head_out_dim": 1024, "head_batch_norm": True,
        "warmup_teacher_temp": 0.04, "teacher_temp": 0.04, "warmup_teacher_temp_epochs": 3,
        "drop_path": 0.1, "pair_key": "batch", "clip_mode": "parameter",
    },
    # Step 2: the task model on the frozen FE.
    "task": {
        "model": {"model": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 4,
                  "embed_dim": 128, "depth": 2, "num_heads": 4},
        "epochs": 15, "batch_size": 64, "lr": 1e-3, "min_lr": 1e-5, "weight_decay": 0.05,
        "warmup_epochs": 2, "patience": 3, "decay": 0.1, "cache_tokens": True,
    },
    # Step 1 with a masked autoencoder (Dual-model-MAE, ODA-MAE, TTT).
    "mae": {
        "epochs": 30, "lr": 1e-3, "min_lr": 1e-5, "warmup_epochs": 3, "batch_size": 64,
        "weight_decay": 0.05, "mask_ratio": 0.75, "norm_pix_loss": True,
        "decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 4,
        "adapt_lr": 1e-4,  # step 3 (ODA-MAE) unless adapt.lr is set
    },
    # Step 3: the step-1 objective on the target. Settings left at None are those of step 1.
    "adapt": {"epochs": 5, "warmup_epochs": 1, "lr": None, "momentum_teacher": None,
              "pair_key": None, "clip_mode": None, "clip_grad": None,
              **ADAPT_SCOPE, "granularity": "source", "eval_on": "subset"},
}

PAPER = {
    **PAPER_RUNTIME,
    "backbone": {
        "model": "deit_small_patch16_224", "img_size": 224, "pretrained": None,
    },
    "input_size": 224,
    "eval_batch_size": 128,
    "split": {"val_plates": 1, "test_plates": 1},
    "dino": _dino_defaults(),
    "task": {
        "model": {"model": "deit_small_patch16_224", "img_size": 224},
        "epochs": 50, "batch_size": 128, "lr": 1e-4, "min_lr": 1e-7, "weight_decay": 0.05,
        "warmup_epochs": 3, "patience": 3, "decay": 0.1, "cache_tokens": False,
    },
    "mae": {**asdict(MaeSettings()), "epochs": 300, "adapt_lr": None},
    "adapt": {"epochs": 300, "warmup_epochs": 10, "lr": None, "momentum_teacher": None,
              "pair_key": None, "clip_mode": None, "clip_grad": None,
              **ADAPT_SCOPE, "granularity": "source", "eval_on": "subset"},
}

PRESETS = {"quick": QUICK, "paper": PAPER}


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
