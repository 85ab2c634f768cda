"""Accuracy and macro-F1 per image, as the paper defines them."""

import pandas as pd
import pytest
import torch

from hcibench import plugins


def _logits(predicted, classes):
    return torch.nn.functional.one_hot(torch.tensor(predicted), classes).float()


def test_accuracy_and_macro_f1_match_hand_computation():
    accuracy = plugins.evaluators().get("accuracy")()
    f1 = plugins.evaluators().get("f1")()
    labels = torch.tensor([0, 0, 1, 1, 2, -1])
    predicted = [0, 1, 1, 1, 0, 2]
    logits = _logits(predicted, 4)  # class 3 appears nowhere: left out of the macro average
    meta = pd.DataFrame(index=range(6))
    # the unlabelled row is skipped
    assert accuracy(logits, labels, meta, 4)["accuracy"] == pytest.approx(3 / 5)
    # per class F1: class 0 -> 2*1/(2*1+1+1)=0.5, class 1 -> 2*2/(2*2+1+0)=0.8, class 2 -> 0
    assert abs(f1(logits, labels, meta, 4)["f1"] - (0.5 + 0.8 + 0.0) / 3) < 1e-6


def test_spread_tells_predictions_that_fall_onto_few_classes():
    spread = plugins.evaluators().get("spread")()
    labels = torch.tensor([0, 1, 2, 3] * 5 + [-1])
    meta = pd.DataFrame(index=range(21))
    varied = _logits([1, 2, 3, 0] * 5 + [0], 4)  # all wrong, but as varied as the labels
    assert spread(varied, labels, meta, 4)["spread"] == pytest.approx(1.0)
    collapsed = _logits([2] * 21, 4)
    assert spread(collapsed, labels, meta, 4)["spread"] == pytest.approx(1 / 4)
    halves = _logits([0, 1] * 10 + [3], 4)  # two classes used equally; the unlabelled row skipped
    assert spread(halves, labels, meta, 4)["spread"] == pytest.approx(2 / 4)
