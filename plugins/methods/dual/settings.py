"""The settings sections of the dual-model family, per preset: ``dino`` (step 1 with DINO),
``mae`` (step 1 with a masked autoencoder), ``task`` (step 2) and ``adapt`` (step 3).

The DINO methods read ``dino``, ``task`` and ``adapt``; the MAE methods ``mae``, ``task`` and
``adapt``. A section belongs to the methods that declare it: changing it concerns their records
only, so other methods' work in the same run folder stays valid.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, fields

from hcibench.errors import UsageError
from hcibench.run import presets
from hcibench.train.dino import DinoSettings
from hcibench.train.mae import MaeSettings

# Step 3 beyond the objective's own settings: which FE weights adapt ("all" as in the paper,
# "early": patch embedding, position embedding, class token and the first ``early_blocks``
# blocks, "norm": the normalisation layers' scales and shifts, as Tent), which adapted FE
# predicts, whether to record the label-free diagnostics of every epoch, and whether to move the
# FE's outputs on the target to the moments of its outputs on the source before the task model
# (adaptation.AlignedFE; it applies to the dual models without adaptation too) unless that costs
# more than ``align_guard`` of the accuracy on the source's validation images (steps.alignment_check;
# 1: never skipped), and the weight of
# a loss that holds the FE's hidden features on the target at their step-1 moments on the source
# (adaptation.FeatureAlignment; 0: off, as in the paper), and where the DINO centre starts:
# "zero" (the reference restarts it) or "source" (the step-1 teacher's mean output on the
# source's training images, where step 1's moving average had brought it), and which epoch's FE
# predicts: the last (the paper) or, with "spread" or "drift" (both need the monitor), the last
# whose predicted classes on the target spread at least as widely as step 1's, less
# ``keep_tolerance``, or whose class tokens on the target keep a linear CKA to step 1's of at
# least 1 - ``keep_tolerance`` (selection.KEEP_RULES; label-free).
ADAPT_SCOPE = {
    "trainable": "all",
    "early_blocks": 1,
    "predict_with": "teacher",
    "monitor": True,
    "align_tokens": False,
    "align_guard": 1.0,
    "feature_alignment": 0.0,
    "center": "zero",
    "keep": "last",
    "keep_tolerance": 0.05,
}
# How step 3 meets the target: one FE per whole target ("source"), per batch or per plate, and
# scored on its part ("subset") or, as the paper's Figure 4, on the whole target ("full").
ADAPT_PARTS = {"granularity": "source", "eval_on": "subset"}


def _dino_defaults() -> dict:
    """DINO's settings section: the run's ``precision`` applies to it, so it has none of its own."""
    section = asdict(DinoSettings())
    section.pop("precision")
    return section


QUICK = {
    # Step 1 of the dual model: DINO on 32 px images, scaled down from the paper's 224 px.
    # With the reference head (no batch-norm, teacher temperature rising to 0.07) this small
    # model collapses onto uniform targets within a few epochs; a batch-normalised head, a
    # constant teacher temperature of 0.04 and 1024 prototypes keep the targets informative.
    # (warmup_teacher_temp_epochs no longer changes anything, the temperature being constant.)
    "dino": {
        **_dino_defaults(),
        "epochs": 15,
        "lr": 5e-4,
        "min_lr": 1e-5,
        "warmup_epochs": 2,
        "batch_size": 64,
        "weight_decay": 0.04,
        "weight_decay_end": 0.1,
        "momentum_teacher": 0.99,
        "n_local": 2,
        "global_size": 24,
        "local_size": 12,
        "head_hidden_dim": 256,
        "head_bottleneck_dim": 64,
        "head_out_dim": 1024,
        "head_batch_norm": True,
        "warmup_teacher_temp": 0.04,
        "teacher_temp": 0.04,
        "warmup_teacher_temp_epochs": 3,
        "drop_path": 0.1,
        "pair_key": "batch",
        "clip_mode": "parameter",
        "select": "last",
        # The DINO repository's lr warm-up from 0 and teacher momentum of the current step.
        "lr_warmup": "zero",
        "momentum_ahead": False,
        # The jitter on every global view, gamma first and unbounded; crops anywhere.
        "jitter_p": 1.0,
        "gamma_clip": 0.0,
        "shift_first": False,
        "crop_region": 0,
    },
    # Step 2: the task model on the frozen FE.
    "task": {
        "model": {
            "model": "vit_tiny_patch16_224",
            "img_size": 32,
            "patch_size": 4,
            "embed_dim": 128,
            "depth": 2,
            "num_heads": 4,
        },
        "epochs": 15,
        "batch_size": 64,
        "lr": 1e-3,
        "min_lr": 1e-5,
        "weight_decay": 0.05,
        "warmup_epochs": 2,
        "patience": 3,
        "decay": 0.1,
        "clip_grad": 0.0,
        "jitter": False,
        "cache_tokens": True,
    },
    # Step 1 with a masked autoencoder (Dual-model-MAE, ODA-MAE, TTT).
    "mae": {
        "epochs": 30,
        "lr": 1e-3,
        "min_lr": 1e-5,
        "warmup_epochs": 3,
        "batch_size": 64,
        "weight_decay": 0.05,
        "mask_ratio": 0.75,
        "norm_pix_loss": True,
        "decoder_dim": 64,
        "decoder_depth": 1,
        "decoder_heads": 4,
        "adapt_lr": 1e-4,  # step 3 (ODA-MAE) unless adapt.lr is set
    },
    # Step 3: the step-1 objective on the target. Settings left at None are those of step 1.
    "adapt": {
        "epochs": 5,
        "warmup_epochs": 1,
        "lr": None,
        "momentum_teacher": None,
        "pair_key": None,
        # Cross-batch pairs in step 3: None, the method's own (CODA's step 3 crosses batches as
        # its step 1 did; ODA's does not); true or false to cross a method's steps.
        "cross_batch": None,
        "clip_mode": None,
        "clip_grad": None,
        **ADAPT_SCOPE,
        **ADAPT_PARTS,
    },
}

PAPER = {
    # The step-1 epoch kept: the best k-NN accuracy on the source's validation plates, as the
    # CODA authors' code (selection.py); the quick preset keeps the last.
    "dino": {**_dino_defaults(), "select": "knn"},
    "task": {
        "model": {"model": "deit_small_patch16_224", "img_size": 224},
        "epochs": 50,
        "batch_size": 128,
        # The CODA authors' step 2: weight decay 1e-5, warm-up and no decay after it (decay 1),
        # the norm of all gradients clipped to 1, their intensity jitter on the training images.
        "lr": 1e-4,
        "min_lr": 1e-7,
        "weight_decay": 1e-5,
        "warmup_epochs": 3,
        "patience": 3,
        "decay": 1.0,
        "clip_grad": 1.0,
        "jitter": True,
        "cache_tokens": False,
    },
    "mae": {**asdict(MaeSettings()), "epochs": 300, "adapt_lr": None},
    "adapt": {
        "epochs": 300,
        "warmup_epochs": 10,
        "lr": None,
        "momentum_teacher": None,
        "pair_key": None,
        # Cross-batch pairs in step 3: None, the method's own (CODA's step 3 crosses batches as
        # its step 1 did; ODA's does not); true or false to cross a method's steps.
        "cross_batch": None,
        "clip_mode": None,
        "clip_grad": None,
        **ADAPT_SCOPE,
        **ADAPT_PARTS,
    },
}

SECTIONS = {"quick": QUICK, "paper": PAPER}


def check_step_settings(config: dict) -> None:
    """UsageError for a step-2 or step-3 section that cannot run as asked."""
    task, adapt = config["task"], config["adapt"]
    if task.get("jitter") and task.get("cache_tokens"):
        raise UsageError(
            "task.jitter=true needs task.cache_tokens=false: cached tokens are computed once, "
            "from unjittered images"
        )
    if adapt.get("keep", "last") != "last" and not adapt.get("monitor"):
        raise UsageError(
            f"adapt.keep={adapt['keep']} needs adapt.monitor=true: the rule reads the monitor's "
            "diagnostics of every epoch"
        )


DINO_SECTIONS = ("dino", "task", "adapt")
MAE_SECTIONS = ("mae", "task", "adapt")


def sections(preset: str, names=("dino", "task", "mae", "adapt")) -> dict[str, dict]:
    """The named sections for a preset (deep copies)."""
    if preset not in SECTIONS:
        raise KeyError(preset)
    return {name: copy.deepcopy(SECTIONS[preset][name]) for name in names}


def config(preset: str = "quick", overrides: list[str] = ()) -> dict:
    """A preset with every section of the family, and ``section.key=value`` overrides: the
    configuration a dual-family method sees (for scripts and tests that build models directly)."""
    return presets.build(preset, overrides, sections=sections(preset))


def from_section(cls, section: dict, **changes):
    """A settings dataclass ``cls`` from a config section: keys that are not fields of ``cls``
    are ignored, and ``changes`` whose value is None keep the section's value (``adapt``'s
    "inherit from step 1")."""
    names = {f.name for f in fields(cls)}
    changes = {k: v for k, v in changes.items() if v is not None}
    return cls(**{k: v for k, v in {**section, **changes}.items() if k in names})
