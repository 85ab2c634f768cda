"""The supervised baseline: a ViT with a linear head fine-tuned end to end with cross-entropy
(on profile datasets, the profile MLP feature extractor with a linear head)."""

from __future__ import annotations

import hcibench
from hcibench.run.accelerator import precision_key
from hcibench.train.classifier import predict_outputs, train_classifier
from hcibench.train.modality import backbone_settings, check_fe_settings, create_backbone

SETTINGS = {
    "quick": {
        "epochs": 20,
        "batch_size": 64,
        "lr": 1e-3,
        "min_lr": 1e-5,
        "weight_decay": 0.05,
        "warmup_epochs": 2,
        "patience": 3,
        "decay": 0.1,
        "drop_path": 0.1,
    },
    # The paper: AdamW 1e-4, 3 warm-up epochs, step-wise decay x0.1 when validation saturates.
    "paper": {
        "epochs": 50,
        "batch_size": 128,
        "lr": 1e-4,
        "min_lr": 1e-7,
        "weight_decay": 0.05,
        "warmup_epochs": 3,
        "patience": 3,
        "decay": 0.1,
        "drop_path": 0.1,
    },
}


class Supervised(hcibench.Method):
    name = "supervised"
    description = "ViT + linear head trained with cross-entropy on the source (the paper's baseline)"
    baseline = True

    @classmethod
    def default_settings(cls, preset: str) -> dict:
        return SETTINGS.get(preset, SETTINGS["quick"])

    @classmethod
    def check_settings(cls, config: dict) -> None:
        check_fe_settings(config)

    def fit(self, train: hcibench.Domain, val: hcibench.Domain) -> None:
        settings = self.config[self.name]
        channels = train.images[0].shape[0]
        self.model = create_backbone(
            self.config, channels, num_classes=len(train.classes), drop_path=settings["drop_path"]
        )

        def compute():
            result = train_classifier(
                self.model,
                self.model,
                train,
                val,
                settings,
                self.context,
                self.config["input_size"],
                description=f"supervised {self.context.source}",
            )
            return {
                "state": result["state"],
                "val_accuracy": result["val_accuracy"],
                "best_epoch": result["best_epoch"],
            }

        trained = self.context.stage("supervised", self.stage_key(), compute)
        self.model.load_state_dict(trained["state"])
        self.model.to(self.context.device).eval()
        self.fit_info = {"val_accuracy": trained["val_accuracy"], "best_epoch": trained["best_epoch"]}

    def stage_key(self) -> dict:
        return {
            "backbone": backbone_settings(self.config),
            "train": self.config[self.name],
            "input_size": self.config["input_size"],
            **precision_key(self.context.precision),
        }

    def stages(self, train, val, targets):
        return [hcibench.StageSpec("supervised", self.stage_key(), lambda: self.fit(train, val))]

    def predict(self, target: hcibench.Domain) -> hcibench.Prediction:
        model = self.model

        def forward(x):
            features = model.forward_features(x)
            return model.forward_head(features), model.forward_head(features, pre_logits=True)

        logits, embeddings = predict_outputs(
            forward, target, self.config["eval_batch_size"], self.config["input_size"], self.context.device
        )
        return hcibench.Prediction(logits, info=self.fit_info, embeddings=embeddings)


@hcibench.hookimpl
def register_methods(register):
    register(Supervised)
