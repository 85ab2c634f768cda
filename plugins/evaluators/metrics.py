"""Per-image classification metrics through torchmetrics, as the paper reports them, and how
varied the predictions are."""

from __future__ import annotations

import torch

import hcibench
from hcibench.compat import ensure_torchvision_importable

ensure_torchvision_importable()  # torchmetrics imports torchvision when it is installed

from torchmetrics.functional.classification import (  # noqa: E402
    multiclass_accuracy,
    multiclass_f1_score,
)


def _known(logits, labels):
    keep = labels >= 0
    return logits[keep], labels[keep]


class Accuracy(hcibench.Evaluator):
    name = "accuracy"
    description = "fraction of images whose predicted MoA is right (micro average, per image)"

    def __call__(self, logits, labels, meta, num_classes):
        logits, labels = _known(logits, labels)
        if len(labels) == 0:
            return {}
        value = multiclass_accuracy(logits.argmax(1), labels, num_classes=num_classes, average="micro")
        return {"accuracy": float(value)}


class MacroF1(hcibench.Evaluator):
    name = "f1"
    description = "macro-F1 over the classes present in labels or predictions (zero when undefined)"

    def __call__(self, logits, labels, meta, num_classes):
        logits, labels = _known(logits, labels)
        if len(labels) == 0:
            return {}
        # torchmetrics leaves classes absent from both labels and predictions out of the macro
        # average, as scikit-learn does.
        value = multiclass_f1_score(
            logits.argmax(1), labels, num_classes=num_classes, average="macro", zero_division=0
        )
        return {"f1": float(value)}


def _effective_classes(indices, num_classes):
    """exp(entropy) of the class histogram: the number of equally used classes it amounts to."""
    share = torch.bincount(indices, minlength=num_classes).float() / len(indices)
    share = share[share > 0]
    return float(torch.exp(-(share * share.log()).sum()))


class PredictionSpread(hcibench.Evaluator):
    name = "spread"
    description = (
        "effective number of predicted classes over that of the true classes: "
        "near 1 when predictions are as varied as the labels, low when they fall "
        "onto a few classes (a collapsed model or adaptation)"
    )

    def __call__(self, logits, labels, meta, num_classes):
        logits, labels = _known(logits, labels)
        if len(labels) == 0:
            return {}
        predicted = _effective_classes(logits.argmax(1), num_classes)
        return {"spread": predicted / _effective_classes(labels, num_classes)}


@hcibench.hookimpl
def register_evaluators(register):
    register(Accuracy)
    register(MacroF1)
    register(PredictionSpread)
