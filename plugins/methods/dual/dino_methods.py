"""Dual-model methods of the CODA paper: Dual-model-DINO, Dual-model-CB, ODA and CODA, and
ODA and CODA with the FE's outputs aligned to the source (``oda-align``, ``coda-align``).

They differ in two switches: cross-batch pairs in the DINO objective (CB, CODA) and adaptation of
the feature extractor to the target (ODA, CODA). Steps 1-2 of ODA are those of Dual-model-DINO
and steps 1-2 of CODA those of Dual-model-CB: they are the same stages, computed once. The
aligned variants share every stage with ODA and CODA; they differ only in prediction.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

import hcibench
from hcibench.train.modality import check_fe_settings

from . import settings
from . import steps as dual


class DualModel(hcibench.Method):
    """Steps 1-2 in ``fit``; step 3 (when ``adapts``) per target in ``predict``. Subclasses with
    another self-supervised objective override ``pretrain`` and ``adapt``."""

    cross_batch = False
    adapts = False
    sections = settings.DINO_SECTIONS  # the settings sections this family member reads

    #: ``adapt`` settings a named variant fixes: they form its own settings section
    #: (``--set <name>.<key>=...`` changes them) and replace the ``adapt`` section's for it.
    adapt_changes: dict = {}

    @classmethod
    def check_settings(cls, config: dict) -> None:
        check_fe_settings(config)
        settings.check_step_settings(config)

    def __init__(self, context: hcibench.Context):
        if self.adapt_changes:
            own = context.config.get(self.name) or self.adapt_changes
            config = {**context.config, "adapt": {**context.config["adapt"], **own}}
            context = dataclasses.replace(context, config=config)
        super().__init__(context)

    @classmethod
    def settings_sections(cls, preset: str) -> dict[str, dict]:
        return settings.sections(preset, cls.sections)

    @classmethod
    def default_settings(cls, preset: str) -> dict:
        return dict(cls.adapt_changes)

    def pretrain(self, train: hcibench.Domain, val: hcibench.Domain) -> tuple[dict, dict]:
        return dual.pretrain_fe(self.context, train, self.cross_batch, val)

    def adapt(self, part: hcibench.Domain) -> dict:
        return dual.adapt_fe(
            self.context,
            part,
            self.fe_stage,
            self.fe_key,
            self.cross_batch,
            task=self.task,
            task_key=self.task_key,
            source=self.source,
        )

    # The names and keys of the stages above, from the settings alone (for ``stages``).
    def pretrain_stage(self) -> tuple[str, dict]:
        return dual.fe_stage(self.context, self.cross_batch)

    def adapt_stage(
        self, part: hcibench.Domain, fe_key: dict, monitor_task_key: dict | None, source_n: int
    ) -> tuple[str, dict]:
        return dual.adapt_stage(self.context, part, fe_key, self.cross_batch, monitor_task_key, source_n)

    def stages(self, train, val, targets):
        """Step 1, step 2 and, for a method that adapts, step 3 on each target part."""
        fe_name, fe_key = self.pretrain_stage()
        fe = hcibench.StageSpec(fe_name, fe_key, lambda: self.pretrain(train, val))
        task = hcibench.StageSpec(
            *dual.task_stage(self.context, fe_key), lambda: self.fit(train, val), needs=[fe]
        )
        specs = [fe, task]
        if not self.adapts:
            return specs
        monitor = dual.task_key(self.config, fe_key) if self.config["adapt"].get("monitor") else None
        for target in targets:
            for part in self.parts(target).values():
                specs.append(
                    hcibench.StageSpec(
                        *self.adapt_stage(part, fe_key, monitor, len(train)),
                        lambda part=part: (self.fit(train, val), self.adapt(part)),
                        needs=[task],
                    )
                )
        return specs

    def parts(self, target: hcibench.Domain) -> dict[str, hcibench.Domain]:
        """The parts of ``target`` that get an FE each (``adapt.granularity``), by name."""
        granularity = self.config["adapt"]["granularity"]
        if granularity == "source":
            return {target.name: target}
        return {
            name: target.subset(positions, f"{target.name}/{name}")
            for name, positions in target.positions_by(granularity).items()
        }

    def fit(self, train: hcibench.Domain, val: hcibench.Domain) -> None:
        self.channels = train.images[0].shape[0]
        self.source = train  # for step-3 settings that measure the source (feature alignment)
        self.fe_stage, self.fe_key = self.pretrain(train, val)
        task_stage = dual.train_task(self.context, train, val, self.fe_stage, self.fe_key)
        self.task_key = dual.task_key(self.config, self.fe_key)
        device = self.context.device
        self.fe = dual.load_fe(self.config, self.channels, self.fe_stage, device)
        self.task = dual.load_task(
            self.config, self.fe.embed_dim, len(train.classes), task_stage["state"], device
        )
        # Moments of what the task model was trained on: the step-1 FE on the source.
        self.source_moments = (
            dual.fe_moments(self.config, self.fe, train) if self.config["adapt"].get("align_tokens") else None
        )
        self.info = {
            "fe_pairs": self.fe_stage["stats"].get("pairs"),
            "fe_collapsed_from_epoch": self.fe_stage["stats"].get("collapsed_from_epoch"),
            "task_val_accuracy": task_stage["val_accuracy"],
        }
        if self.source_moments is not None:
            self._guard_alignment(val)
        if "selected_epoch" in self.fe_stage["stats"]:  # dino.select=knn
            self.info["fe_selected_epoch"] = self.fe_stage["stats"]["selected_epoch"]

    def _guard_alignment(self, val: hcibench.Domain) -> None:
        """Turn the token alignment off when, on the source's labelled validation images, it costs
        more than ``adapt.align_guard`` of the accuracy (source data only; recorded either way)."""
        check = dual.alignment_check(self.config, self.fe, self.task, self.source_moments, val)
        guard = float(self.config["adapt"]["align_guard"])
        cost = check["plain"] - check["aligned"] if check is not None else 0.0
        skipped = cost > guard + 1e-9
        self.info["alignment_on_source_val"] = {**(check or {}), "guard": guard, "skipped": skipped}
        if skipped:
            self.source_moments = None
        if cost > ALIGNMENT_COST_TO_REPORT:
            self.context.log(
                f"token alignment lowers the accuracy on {self.context.source}'s validation images "
                f"from {check['plain']:.1%} to {check['aligned']:.1%} ({check['images']} images): "
                "it may move classes as well as the shift where plates hold other classes; "
                + ("skipped (adapt.align_guard)" if skipped else "adapt.align_guard=0.05 would skip it")
            )

    def predict(self, target: hcibench.Domain) -> hcibench.Prediction:
        if not self.adapts:
            fe = dual.aligned(self.config, self.fe, self.source_moments, target)
            logits, embeddings = dual.predict_with_embeddings(self.config, fe, self.task, target)
            return hcibench.Prediction(logits, info=self.info, embeddings=embeddings)
        return self._adapted_prediction(target)

    def _adapted_prediction(self, target: hcibench.Domain) -> hcibench.Prediction:
        """Adapt one FE per target part (the whole source, each batch or each plate)."""
        granularity = self.config["adapt"]["granularity"]
        eval_on = self.config["adapt"]["eval_on"]
        groups = (
            {target.name: np.arange(len(target))}
            if granularity == "source"
            else target.positions_by(granularity)
        )
        parts = self.parts(target)
        logits = torch.empty(len(target), len(target.classes))
        embeddings = None
        variants, adaptations = {}, []
        epoch_logits: list[torch.Tensor] = []
        for name, positions in groups.items():
            part = parts[name]
            adapted = self.adapt(part)
            fe = dual.aligned(
                self.config,
                dual.load_fe(self.config, self.channels, adapted, self.context.device),
                self.source_moments,
                part,
            )
            part_logits, part_embeddings = dual.predict_with_embeddings(self.config, fe, self.task, part)
            if embeddings is None:
                embeddings = torch.empty(len(target), part_embeddings.shape[1])
            logits[torch.as_tensor(positions)] = part_logits
            embeddings[torch.as_tensor(positions)] = part_embeddings
            if eval_on == "full" and granularity != "source":
                # Figure 4 of the paper: a part's FE scored on the whole target.
                variants[f"{granularity}={name}"] = dual.predict(self.config, fe, self.task, target)
            monitor = adapted.get("monitor") or {}
            for epoch, part_epoch_logits in enumerate(monitor.get("epoch_logits", [])):
                if epoch == len(epoch_logits):
                    epoch_logits.append(torch.zeros(len(target), len(target.classes)))
                epoch_logits[epoch][torch.as_tensor(positions)] = part_epoch_logits
            adaptations.append(
                {
                    "part": part.name,
                    "images": len(part),
                    "pairs": adapted["stats"].get("pairs"),
                    "loss": adapted["stats"].get("loss"),
                    "collapsed_from_epoch": adapted["stats"].get("collapsed_from_epoch"),
                    "kept_epoch": adapted["stats"].get("kept_epoch"),
                    "diagnostics": _diagnostics(adapted),
                }
            )
        # The oracle curve: target accuracy after each adaptation epoch, scored by the runner
        # for analysis only (nothing chooses a setting or an epoch from it).
        for epoch, part_logits in enumerate(epoch_logits):
            variants[f"{ORACLE_EPOCH}={epoch}"] = part_logits
        info = {**self.info, "granularity": granularity, "eval_on": eval_on, "adaptations": adaptations}
        return hcibench.Prediction(logits, variants=variants, info=info, embeddings=embeddings)


ORACLE_EPOCH = "adapt_epoch"
# A cost of the token alignment on the source's validation images worth a line in the run's log.
ALIGNMENT_COST_TO_REPORT = 0.05


def _diagnostics(adapted: dict) -> dict:
    """Label-free per-epoch facts of one adaptation: the objective's own (loss, target entropy
    and prototype usage, one value per epoch) and the monitor's (one row per epoch, the first
    before any update)."""
    stats = adapted["stats"]
    monitor = adapted.get("monitor") or {}
    return {
        "loss": stats.get("epoch_losses"),
        "target_entropy": stats.get("target_entropy"),
        "target_usage": stats.get("target_usage"),
        "feature_alignment_loss": stats.get("extra_losses"),
        "epochs": monitor.get("diagnostics", []),
    }


class DualDino(DualModel):
    name = "dual-dino"
    description = "dual model, FE trained with DINO on the source, no adaptation"


class DualCB(DualModel):
    name = "dual-cb"
    description = "dual model, FE trained with DINO on cross-batch pairs, no adaptation"
    cross_batch = True


class ODA(DualModel):
    name = "oda"
    description = "online domain adaptation: the dual-dino FE adapted with DINO on the target"
    adapts = True


class CODA(DualModel):
    name = "coda"
    description = "cross-batch ODA: the dual-cb FE adapted with DINO + cross-batch pairs on the target"
    cross_batch = True
    adapts = True


class ODAAligned(ODA):
    name = "oda-align"
    description = (
        "ODA, then the adapted FE's outputs on the target moved to the step-1 FE's output "
        "moments on the source before the task model (label-free)"
    )
    adapt_changes = {"align_tokens": True}


class CODAAligned(CODA):
    name = "coda-align"
    description = (
        "CODA, then the adapted FE's outputs on the target moved to the step-1 FE's output "
        "moments on the source before the task model (label-free)"
    )
    adapt_changes = {"align_tokens": True}
