"""Masked-autoencoder methods: Dual-model-MAE, ODA-MAE and test-time training (TTT-MAE)."""

from __future__ import annotations

from dataclasses import asdict

import hcibench

from . import mae_steps as dual_mae
from . import settings
from .dino_methods import DualModel
from .settings import from_section
from .ttt import TTTSettings, ttt_predict


class DualMAE(DualModel):
    name = "dual-mae"
    description = "dual model, FE pretrained as a masked autoencoder on the source, no adaptation"
    sections = settings.MAE_SECTIONS

    def pretrain(self, train, val):
        return dual_mae.pretrain_mae(self.context, train)

    def adapt(self, part):
        return dual_mae.adapt_mae(
            self.context, part, self.fe_stage, self.fe_key, task=self.task, task_key=self.task_key
        )

    def pretrain_stage(self):
        return dual_mae.mae_fe_stage(self.context)

    def adapt_stage(self, part, fe_key, monitor_task_key, source_n):
        return dual_mae.mae_adapt_stage(self.context, part, fe_key, monitor_task_key)


class ODAMAE(DualMAE):
    name = "oda-mae"
    description = "the dual-mae FE adapted with MAE on the whole unlabelled target"
    adapts = True


class TTT(DualMAE):
    name = "ttt"
    description = "test-time training: the dual-mae FE adapted with MAE on each test image alone, then reset"

    @classmethod
    def default_settings(cls, preset: str) -> dict:
        settings = asdict(TTTSettings())
        return settings if preset == "paper" else {**settings, "steps": 3, "copies": 8}

    def predict(self, target: hcibench.Domain) -> hcibench.Prediction:
        settings = from_section(TTTSettings, self.config[self.name])
        model = dual_mae.build_mae(
            self.config, self.channels, dual_mae.mae_settings(self.config["mae"]), self.fe_stage
        )
        model.to(self.context.device)
        model.decoder.requires_grad_(False)  # only the encoder adapts at test time
        images = (x for x, _, _ in target.batches(settings.chunk))
        output = ttt_predict(
            model,
            self.task,
            images,
            settings,
            self.config["input_size"],
            seed=self.context.seed,
            progress=self.context.progress,
            total=-(-len(target) // settings.chunk),
        )
        variants = {f"steps={k}": logits for k, logits in enumerate(output.logits)}
        return hcibench.Prediction(
            output.logits[-1],
            variants=variants,
            info={**self.info, "ttt": asdict(settings)},
            embeddings=output.embeddings,
        )
