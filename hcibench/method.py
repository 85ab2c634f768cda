"""The method contract: fit on a labelled source, optionally adapt to an unlabelled target, predict.

A method plugin subclasses ``Method``. The runner creates one instance per (method, source, seed),
calls ``fit`` once, then ``predict`` for every target. ``predict`` may adapt to the target first
(transductively, without its labels) but must leave the fitted state untouched for the next
target. Expensive training belongs in ``context.stage(...)`` so that it is saved to the run
folder, shared with other methods that need the same stage, and never recomputed on resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from hcibench.data import Domain
    from hcibench.run.stages import Context, StageSpec


@dataclass
class Prediction:
    """What a method returns for one target.

    ``logits`` (N×classes) are scored by every evaluator. ``variants`` are further named logits
    scored the same way and recorded as ``metric@variant`` (e.g. TTT after k steps).
    ``info`` holds JSON-serialisable facts worth keeping in the record (fallback counts, ...).
    ``embeddings`` (optional, N×D) are the feature extractor's outputs for the same samples, for
    evaluators that score representations (e.g. ``nsc``); they are not saved.
    """

    logits: torch.Tensor
    variants: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    embeddings: torch.Tensor | None = None


class Method:
    """Base class for method plugins (set ``name`` and ``description``)."""

    name: str = ""
    description: str = ""

    def __init__(self, context: Context):
        self.context = context
        self.config = context.config

    def fit(self, train: Domain, val: Domain) -> None:
        """Learn from the labelled source ``train``; ``val`` (held-out source plates) is for
        model selection only."""
        raise NotImplementedError

    def predict(self, target: Domain) -> Prediction:
        """Class scores for every sample of ``target`` (whose labels must not be used)."""
        raise NotImplementedError

    def stages(self, train: Domain, val: Domain, targets: list[Domain]) -> list[StageSpec] | None:
        """The stages ``fit`` and ``predict`` will ask for on these domains, in an order where
        each comes after those it ``needs``, for ``hcibench plan`` and the executors to run
        them as separate jobs. ``None`` (the default): the method's work is one job per
        (method, source, seed)."""
        return None

    @classmethod
    def default_settings(cls, preset: str) -> dict:
        """This method's settings section (``config[cls.name]``) for a preset; override to add one.

        Users change single entries with ``--set <method>.<key>=<value>``.
        """
        return {}

    @classmethod
    def settings_sections(cls, preset: str) -> dict[str, dict]:
        """Further settings sections this method reads, for a preset: ``{section: defaults}``.

        For sections that several methods of a family share (e.g. a self-supervised objective's
        settings); methods declaring one section must give it the same defaults. A declared
        section counts among the settings of the methods that declare it, so changing it leaves
        other methods' records in the same run folder valid."""
        return {}

    @classmethod
    def check_settings(cls, config: dict) -> None:
        """Raise UsageError for settings this method cannot run with (e.g. a pretrained weights
        file that fits no tensor of the backbone), so that a run stops before anything is written
        rather than when its first model is built. ``config``: the run's resolved settings."""

    #: The method that others are compared with by default in reports (``report --stats``,
    #: the HTML page) when it is among a run's methods.
    baseline: bool = False
