"""The dual model's stages with a masked-autoencoder feature extractor (Dual-model-MAE, ODA-MAE,
TTT): step 1 pretrains the FE as an MAE on the source; step 3 adapts it with MAE on the target.
Step 2 is ``steps.train_task``, shared with the DINO variants. On profile data the MAE
is masked-feature reconstruction (``hcibench.train.profiles.ProfileMAE``)."""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from hcibench.data import Domain
from hcibench.run.accelerator import cpu_state, precision_key
from hcibench.run.stages import Context
from hcibench.train.mae import MaeSettings, train_mae
from hcibench.train.modality import backbone_settings, create_backbone, modality_of

from .adaptation import AdaptationMonitor
from .settings import from_section
from .steps import predict_with_embeddings


def mae_settings(section: dict, **changes) -> MaeSettings:
    """MaeSettings from a config section (see :func:`.settings.from_section`)."""
    return from_section(MaeSettings, section, **changes)


def build_mae(config: dict, channels: int, settings: MaeSettings, init: dict | None = None) -> nn.Module:
    """Encoder (the run's FE) + decoder; for profiles ``decoder_dim`` and ``decoder_depth`` size
    the MLP decoder."""
    encoder = create_backbone(config, channels)
    model = modality_of(config).masked_autoencoder(encoder, channels, settings)
    if init is not None:
        model.encoder.load_state_dict(init["encoder"])
        model.decoder.load_state_dict(init["decoder"])
    return model


def _run_mae(config, channels, domain, settings, context, init, description, watch=None) -> dict:
    """MAE from ``init`` (or random weights); ``watch(fe) -> (logits, tokens)`` turns on the
    adaptation monitor of the encoder (see :class:`adaptation.AdaptationMonitor`)."""
    model = build_mae(config, channels, settings, init).to(context.device)
    monitor, on_epoch = None, None
    if watch is not None:
        monitor = AdaptationMonitor(watch, num_classes=len(domain.classes))
        monitor.record(0, model.encoder.eval())

        def on_epoch(epoch: int) -> None:
            monitor.record(epoch, model.encoder)

    generator = torch.Generator().manual_seed(context.seed)
    stats = train_mae(
        model,
        domain,
        settings,
        config["input_size"],
        context.progress,
        generator,
        description,
        on_epoch=on_epoch,
        precision=context.precision,
        keep_with_checkpoint={"monitor": monitor} if monitor else None,
    )
    result = {
        "encoder": cpu_state(model.encoder),
        "decoder": cpu_state(model.decoder),
        "predictor": "encoder",
        "stats": stats,
    }
    if monitor is not None:
        result["monitor"] = monitor.result()
    return result


def mae_fe_stage(context: Context) -> tuple[str, dict]:
    """Step 1's stage name and key."""
    config = context.config
    return "fe-mae", {
        "backbone": backbone_settings(config),
        "mae": asdict(mae_settings(config["mae"])),
        "input_size": config["input_size"],
        **precision_key(context.precision),
    }


def mae_adapt_settings(config: dict) -> MaeSettings:
    # Re-using step 1's learning rate from a trained encoder wrecks it (every prediction
    # collapses to one class in the quick preset), so MAE adaptation has its own default.
    lr = config["adapt"].get("lr") or config["mae"].get("adapt_lr")
    return mae_settings(config["mae"], **{**config["adapt"], "lr": lr})


def mae_adapt_stage(
    context: Context, target: Domain, fe_key: dict, monitor_task_key: dict | None
) -> tuple[str, dict]:
    """Step 3's stage name and key for one target (part)."""
    key = {
        "fe": fe_key,
        "adapt": asdict(mae_adapt_settings(context.config)),
        "target": target.name,
        "n": len(target),
        **precision_key(context.precision),
    }
    if monitor_task_key is not None:
        key["monitor"] = {"task": monitor_task_key}
    return "adapt-mae", key


def pretrain_mae(context: Context, train: Domain) -> tuple[dict, dict]:
    """Step 1: the FE trained as a masked autoencoder on the source images."""
    config = context.config
    settings = mae_settings(config["mae"])
    name, key = mae_fe_stage(context)
    channels = train.images[0].shape[0]
    result = context.stage(
        name,
        key,
        lambda: _run_mae(config, channels, train, settings, context, None, f"step 1 MAE {context.source}"),
    )
    return result, key


def adapt_mae(
    context: Context, target: Domain, fe_state: dict, fe_key: dict, task=None, task_key: dict | None = None
) -> dict:
    """Step 3 of ODA-MAE: MAE on the whole unlabelled target, from the step-1 encoder+decoder.
    With ``task`` and ``adapt.monitor``, the stage keeps the label-free diagnostics and logits
    of every epoch, as the DINO adaptation does."""
    config = context.config
    settings = mae_adapt_settings(config)
    channels = target.images[0].shape[0]
    watching = bool(config["adapt"].get("monitor")) and task is not None
    name, key = mae_adapt_stage(context, target, fe_key, task_key if watching else None)
    watch = None
    if watching:

        def watch(fe):
            return predict_with_embeddings(config, fe, task, target)

    return context.stage(
        name,
        key,
        lambda: _run_mae(
            config, channels, target, settings, context, fe_state, f"step 3 MAE on {target.name}", watch
        ),
    )
