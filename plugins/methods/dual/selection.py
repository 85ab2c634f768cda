"""Which step-1 epoch the dual model keeps: the last (``dino.select = "last"``) or, as the CODA
authors' code does, the one whose teacher FE has the best k-NN accuracy on the labelled source
validation plates (``"knn"``). Source labels only: nothing of any target is looked at.

The k-NN classifier is DINO's weighted one (Wu et al. 2018; Caron et al. 2021): the cosine
similarities to the ``k`` nearest training embeddings vote for their classes with weight
``exp(similarity / temperature)``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from hcibench.data import Domain
from hcibench.run.accelerator import cpu_state, device_of
from hcibench.train.classifier import predict_logits
from hcibench.train.dino import class_token

K, TEMPERATURE = 20, 0.07


def embeddings(fe: nn.Module, domain: Domain, batch_size: int, input_size: int) -> torch.Tensor:
    """One L2-normalised vector per sample: the class token of ViT tokens, a profile embedding
    as it is."""

    tokens = predict_logits(lambda x: class_token(fe, x), domain, batch_size, input_size, device_of(fe))
    return F.normalize(tokens.float(), dim=1)


def knn_accuracy(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    query: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    k: int = K,
    temperature: float = TEMPERATURE,
) -> float:
    """Weighted k-NN accuracy of ``query`` against ``train`` (normalised embeddings); samples
    without a label (-1) take part on neither side."""
    known, asked = train_labels >= 0, query_labels >= 0
    train, train_labels = train[known], train_labels[known]
    query, query_labels = query[asked], query_labels[asked]
    if len(train) == 0 or len(query) == 0:
        return float("nan")
    similarity, index = (query @ train.T).topk(min(k, len(train)), dim=1)
    votes = torch.zeros(len(query), num_classes).scatter_add_(
        1, train_labels[index], (similarity / temperature).exp()
    )
    return float((votes.argmax(1) == query_labels).float().mean())


class KnnSelection:
    """Scores the teacher FE after each step-1 epoch and keeps the modules of the best epoch
    (the first of equals); ``val`` must hold labelled samples. Kept with the stage's saved
    progress, so a resumed step 1 selects as an uninterrupted one does."""

    def __init__(
        self, modules: dict[str, nn.Module], train: Domain, val: Domain, batch_size: int, input_size: int
    ):
        self.modules, self.train, self.val = modules, train, val
        self.batch_size, self.input_size = batch_size, input_size
        self.curve: list[float] = []
        self.best_epoch, self.best_state = 0, None

    def record(self, epoch: int) -> None:
        fe = self.modules["teacher"]
        score = knn_accuracy(
            embeddings(fe, self.train, self.batch_size, self.input_size),
            self.train.labels,
            embeddings(fe, self.val, self.batch_size, self.input_size),
            self.val.labels,
            len(self.train.classes),
        )
        self.curve.append(score)
        if self.best_state is None or score > max(self.curve[:-1]):
            self.best_epoch = epoch
            self.best_state = {name: cpu_state(module) for name, module in self.modules.items()}

    def keep_best(self) -> None:
        """Load the best epoch's weights into the modules."""
        if self.best_state is None:
            return
        for name, module in self.modules.items():
            module.load_state_dict(self.best_state[name])

    def result(self) -> dict:
        return {"knn_accuracy": list(self.curve), "selected_epoch": self.best_epoch}

    def state_dict(self) -> dict:
        return {
            "curve": list(self.curve),
            "best_epoch": self.best_epoch,
            "best_state": copy.deepcopy(self.best_state),
        }

    def load_state_dict(self, state: dict) -> None:
        self.curve, self.best_epoch = list(state["curve"]), state["best_epoch"]
        self.best_state = state["best_state"]
