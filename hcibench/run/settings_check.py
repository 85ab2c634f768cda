"""Checked settings: every value of a resolved configuration has a type and a range, known before
anything is written.

The type of a setting is that of its default (a preset's, a dataset's or a method's section):
an integer stays an integer, a number a number, a switch true or false, a name a string. A default
of ``None`` ("inherit", "off") admits ``None`` or the type named in ``NULLABLE``. Ranges and
choices are keyed by the setting's own name (its last key), since the same names mean the same
thing in every section (``epochs``, ``lr``, ``batch_size``, ...). Shape constraints between
settings (heads dividing the embedding width, crops no larger than the input) are checked last.
"""

from __future__ import annotations

import math
from typing import Any

from hcibench.errors import UsageError

INT, FLOAT = "an integer", "a number"

# name -> (kind, lowest, highest).
RANGES: dict[str, tuple[str, float, float]] = {
    "epochs": (INT, 1, 100_000),
    "warmup_epochs": (INT, 0, 100_000),
    "warmup_teacher_temp_epochs": (INT, 0, 100_000),
    "freeze_last_layer_epochs": (INT, 0, 100_000),
    "batch_size": (INT, 1, 1_000_000),
    "eval_batch_size": (INT, 1, 1_000_000),
    "patience": (INT, 1, 100_000),
    "depth": (INT, 1, 1_000),
    "embed_dim": (INT, 1, 100_000),
    "num_heads": (INT, 1, 1_000),
    "img_size": (INT, 4, 100_000),
    "patch_size": (INT, 1, 10_000),
    "input_size": (INT, 4, 100_000),
    "global_size": (INT, 2, 100_000),
    "local_size": (INT, 2, 100_000),
    "n_local": (INT, 0, 1_000),
    "head_layers": (INT, 1, 100),
    "head_hidden_dim": (INT, 1, 1_000_000),
    "head_bottleneck_dim": (INT, 1, 1_000_000),
    "head_out_dim": (INT, 2, 10_000_000),
    "early_blocks": (INT, 0, 1_000),
    "decoder_dim": (INT, 1, 100_000),
    "decoder_depth": (INT, 1, 1_000),
    "decoder_heads": (INT, 1, 1_000),
    "threads": (INT, 1, 4_096),
    "steps": (INT, 0, 100_000),
    "copies": (INT, 1, 100_000),
    "chunk": (INT, 1, 100_000),
    "val_plates": (INT, 0, 10_000),
    "test_plates": (INT, 1, 10_000),
    "lr": (FLOAT, 0, 10),
    "min_lr": (FLOAT, 0, 10),
    "adapt_lr": (FLOAT, 0, 10),
    "weight_decay": (FLOAT, 0, 10),
    "weight_decay_end": (FLOAT, 0, 10),
    "momentum_teacher": (FLOAT, 0, 1),
    "center_momentum": (FLOAT, 0, 1),
    "drop_path": (FLOAT, 0, 1),
    "decay": (FLOAT, 0, 1),
    "mask_ratio": (FLOAT, 0, 0.99),
    "teacher_temp": (FLOAT, 0, 100),
    "warmup_teacher_temp": (FLOAT, 0, 100),
    "student_temp": (FLOAT, 0, 100),
    "clip_grad": (FLOAT, 0, 1e6),
    "shift_std": (FLOAT, 0, 10),
    "gamma_std": (FLOAT, 0, 10),
    "jitter_p": (FLOAT, 0, 1),
    "gamma_clip": (FLOAT, 0, 10),
    "crop_region": (INT, 0, 100_000),
    "feature_alignment": (FLOAT, 0, 1e6),
    "align_guard": (FLOAT, 0, 1),
    "keep_tolerance": (FLOAT, 0, 1),
    "gpus": (INT, 0, 1_024),
    "hours": (FLOAT, 0, 100_000),
}

CHOICES: dict[str, tuple[str, ...]] = {
    "clip_mode": ("global", "parameter"),
    "trainable": ("all", "early", "norm"),
    "predict_with": ("teacher", "student"),
    "granularity": ("source", "batch", "plate"),
    "eval_on": ("subset", "full"),
    "precision": ("auto", "fp32", "bf16"),
    "pair_key": ("batch", "plate", "same-batch"),
    "center": ("zero", "source"),
    "select": ("last", "knn"),
    "lr_warmup": ("zero", "first-step"),
    "keep": ("last", "spread", "drift"),
}

# Settings whose default is None and what else they admit.
NULLABLE: dict[str, str] = {
    "lr": FLOAT,
    "adapt_lr": FLOAT,
    "momentum_teacher": FLOAT,
    "threads": INT,
    "clip_grad": FLOAT,
    "epochs": INT,
    "steps": INT,
    "pair_key": "a name",
    "cross_batch": "true or false",
    "clip_mode": "a name",
    "pretrained": "a name",
    "gpus": INT,
}


def _kind_of(default: Any) -> str | None:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return INT
    if isinstance(default, float):
        return FLOAT
    if isinstance(default, str):
        return "a name"
    return None  # lists, dicts, None: checked by name only


def _matches(value: Any, kind: str) -> bool:
    if kind == "true or false":
        return isinstance(value, bool)
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == FLOAT:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "a name":
        return isinstance(value, str)
    return True


# Settings that may be null whatever their default (a weights file, or null for random weights).
ALWAYS_NULLABLE = {"pretrained"}

# Settings whose lowest value is excluded (a learning rate or temperature of 0 is no setting).
ABOVE_LOWEST = {"lr", "adapt_lr", "teacher_temp", "warmup_teacher_temp", "student_temp", "hours"}


def _number(value: float) -> str:
    return f"{int(value):,}".replace(",", "_") if float(value).is_integer() else f"{value:g}"


def _allowed(name: str, kind: str | None, nullable: bool) -> str:
    parts = []
    if name in CHOICES:
        parts.append("one of " + ", ".join(CHOICES[name]))
    elif name in RANGES:
        rkind, low, high = RANGES[name]
        span = (
            f"above {_number(low)} and at most {_number(high)}"
            if name in ABOVE_LOWEST
            else f"from {_number(low)} to {_number(high)}"
        )
        parts.append(f"{rkind} {span}")
    elif kind:
        parts.append(kind)
    if nullable:
        parts.append("null")
    return " or ".join(parts) or "any value"


def _kind_for(name: str, default: Any) -> str | None:
    kind = _kind_of(default) or (NULLABLE.get(name) if default is None else None)
    if name in RANGES and kind in (INT, FLOAT, None):
        kind = RANGES[name][0]
    return kind


def describe(path: str, default: Any) -> str:
    """What a setting may be, in words (as the error for a bad value says it)."""
    name = path.rsplit(".", 1)[-1]
    return _allowed(name, _kind_for(name, default), default is None or name in ALWAYS_NULLABLE)


def check_value(path: str, value: Any, default: Any) -> None:
    """Raise UsageError naming ``path``, ``value`` and what is allowed when ``value`` is wrong."""
    name = path.rsplit(".", 1)[-1]
    nullable = default is None or name in ALWAYS_NULLABLE
    kind = _kind_for(name, default)
    if value is None and nullable:
        return
    problem = None
    if value is None or (kind and not _matches(value, kind)):
        problem = True
    elif name in CHOICES and value not in CHOICES[name]:
        problem = True
    elif name in RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
        _, low, high = RANGES[name]
        problem = value < low or value > high or (name in ABOVE_LOWEST and value == low)
    if problem:
        raise UsageError(f"bad setting {path}={_show(value)}: expected {_allowed(name, kind, nullable)}")


def _show(value: Any) -> str:
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)


def check_config(config: dict, defaults: dict, prefix: str = "") -> None:
    """Check every value of ``config`` against the default at the same place in ``defaults``,
    then the shape constraints between settings."""
    for key, value in config.items():
        path = f"{prefix}{key}"
        default = defaults.get(key) if isinstance(defaults, dict) else None
        if isinstance(default, dict) and not isinstance(value, dict):
            raise UsageError(
                f"bad setting {path}={_show(value)}: {path} is a section of "
                f"settings; set one of them, e.g. {path}.{next(iter(default), 'key')}=..."
            )
        if isinstance(value, dict):
            check_config(value, default if isinstance(default, dict) else {}, f"{path}.")
        else:
            check_value(path, value, default)
    if not prefix:
        check_shapes(config)


def normalise_numbers(config: dict, defaults: dict) -> None:
    """Whole numbers given where a setting is a number (``--set dataset.culture=1`` for a
    default of 1.0) become floats, in place: equal settings then have equal digests, so that
    the runs and stages they describe are recognised as the same."""
    for key, value in config.items():
        default = defaults.get(key) if isinstance(defaults, dict) else None
        if isinstance(value, dict):
            normalise_numbers(value, default if isinstance(default, dict) else {})
        elif isinstance(value, int) and not isinstance(value, bool) and (_kind_for(key, default) == FLOAT):
            config[key] = float(value)


def _vit_shape(section: dict | None, where: str) -> None:
    if not isinstance(section, dict):
        return
    dim, heads = section.get("embed_dim"), section.get("num_heads")
    if isinstance(dim, int) and isinstance(heads, int) and dim % heads:
        raise UsageError(
            f"bad setting {where}.embed_dim={dim}: it must be a multiple of {where}.num_heads={heads}"
        )


def check_device(value: Any) -> None:
    """``device``: auto, cpu, cuda or cuda:N (whether that GPU exists is checked when a run
    starts, on the machine that computes)."""
    if value is None:
        return
    ok = isinstance(value, str) and (
        value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())
    )
    if not ok:
        raise UsageError(f"bad setting device={_show(value)}: expected auto, cpu, cuda or cuda:N")


def check_shapes(config: dict) -> None:
    """Constraints between settings that would otherwise fail deep inside model building."""
    check_device(config.get("device"))
    _vit_shape(config.get("backbone"), "backbone")
    _vit_shape((config.get("task") or {}).get("model"), "task.model")
    dino, size = config.get("dino") or {}, config.get("input_size")
    if isinstance(size, int) and isinstance(dino.get("global_size"), int) and dino["global_size"] > size:
        raise UsageError(
            f"bad setting dino.global_size={dino['global_size']}: a crop cannot be "
            f"larger than input_size={size}"
        )
    if dino.get("select") == "knn" and (config.get("split") or {}).get("val_plates") == 0:
        raise UsageError(
            "bad setting dino.select=knn: it chooses step 1's epoch on the source's "
            "validation plates, and split.val_plates is 0 (set it to 1 or more)"
        )
    if (
        isinstance(dino.get("local_size"), int)
        and isinstance(dino.get("global_size"), int)
        and dino["local_size"] > dino["global_size"]
    ):
        raise UsageError(
            f"bad setting dino.local_size={dino['local_size']}: local crops must not "
            f"be larger than dino.global_size={dino['global_size']}"
        )
