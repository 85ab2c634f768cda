"""Per-image classification metrics through torchmetrics, as the paper reports them."""

from __future__ import annotations

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
        value = multiclass_accuracy(logits.argmax(1), labels, num_classes=num_classes,
                                    average="micro")
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
        value = multiclass_f1_score(logits.argmax(1), labels, num_classes=num_classes,
                                    average="macro", zero_division=0)
        return {"f1": float(value)}


@hcibench.hookimpl
def register_evaluators(register):
    register(Accuracy)
    register(MacroF1)
