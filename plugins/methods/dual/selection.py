"""Which epoch a DINO stage keeps.

Step 1: the last (``dino.select = "last"``) or, as the CODA authors' code does, the one whose
teacher FE has the best k-NN accuracy on the labelled source validation plates (``"knn"``).
Source labels only: nothing of any target is looked at.

Step 3: the last (``adapt.keep = "last"``, the paper) or the last epoch that a label-free rule
on the adaptation monitor's row still accepts, within ``adapt.keep_tolerance`` of step 1:
``"spread"``, predictions on the target that spread over the classes nearly as widely as step
1's did (an adaptation that drifts can narrow the frozen task model's predictions onto fewer
classes); ``"drift"``, class tokens on the target that stay close to step 1's (linear CKA to
step 1's of at least 1 - tolerance: the task model was trained on step 1's tokens, and an FE
that moves them far leaves it reading features it never saw). No labels: both come from the
target's images and predictions alone.

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

from .adaptation import AdaptationMonitor

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


class EpochKeeper:
    """A copy of the modules' weights at one epoch, loaded back by :meth:`keep_best`; kept with
    the stage's saved progress, so a resumed training keeps what an uninterrupted one does."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = modules
        self.best_epoch, self.best_state = 0, None

    def keep(self, epoch: int) -> None:
        self.best_epoch = epoch
        self.best_state = {name: cpu_state(module) for name, module in self.modules.items()}

    def keep_best(self) -> None:
        """Load the kept epoch's weights into the modules."""
        if self.best_state is None:
            return
        for name, module in self.modules.items():
            module.load_state_dict(self.best_state[name])

    def state_dict(self) -> dict:
        return {"best_epoch": self.best_epoch, "best_state": copy.deepcopy(self.best_state)}

    def load_state_dict(self, state: dict) -> None:
        self.best_epoch, self.best_state = state["best_epoch"], state["best_state"]


class KnnSelection(EpochKeeper):
    """Scores the teacher FE after each step-1 epoch and keeps the modules of the best epoch
    (the first of equals); ``val`` must hold labelled samples."""

    def __init__(
        self, modules: dict[str, nn.Module], train: Domain, val: Domain, batch_size: int, input_size: int
    ):
        super().__init__(modules)
        self.train, self.val = train, val
        self.batch_size, self.input_size = batch_size, input_size
        self.curve: list[float] = []

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
            self.keep(epoch)

    def result(self) -> dict:
        return {"knn_accuracy": list(self.curve), "selected_epoch": self.best_epoch}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "curve": list(self.curve)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.curve = list(state["curve"])


class MonitorRule(EpochKeeper):
    """Keeps the modules of the last adaptation epoch whose monitor row :meth:`accepts`, against
    the start's row. Call :meth:`record` after the monitor has recorded the epoch, from epoch 0
    (before any update), which always qualifies: an adaptation that the rule rejects from its
    first epoch keeps step 1's FE."""

    def __init__(self, modules: dict[str, nn.Module], monitor: AdaptationMonitor, tolerance: float):
        super().__init__(modules)
        self.monitor, self.tolerance = monitor, tolerance

    def accepts(self, start: dict, now: dict) -> bool:
        raise NotImplementedError

    def record(self, epoch: int) -> None:
        if self.accepts(self.monitor.rows[0], self.monitor.rows[-1]):
            self.keep(epoch)

    def result(self) -> dict:
        return {"kept_epoch": self.best_epoch}


class SpreadSelection(MonitorRule):
    """The predicted-class spread on the target (the monitor's ``predicted_classes``) is at
    least the start's minus the tolerance."""

    def accepts(self, start: dict, now: dict) -> bool:
        return now["predicted_classes"] >= start["predicted_classes"] - self.tolerance - 1e-12


class DriftSelection(MonitorRule):
    """The class tokens on the target keep a linear CKA to the start's (the monitor's
    ``cka_to_start``) of at least 1 minus the tolerance."""

    def accepts(self, start: dict, now: dict) -> bool:
        return now["cka_to_start"] >= 1 - self.tolerance - 1e-12


# adapt.keep's rules, by name ("last" needs none).
KEEP_RULES: dict[str, type[MonitorRule]] = {"spread": SpreadSelection, "drift": DriftSelection}
