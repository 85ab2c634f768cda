"""The dual model of the CODA paper: a self-supervised feature extractor (FE) plus a task model.

    image -> FE (ViT, all tokens after its final norm) -> Linear -> task transformer blocks
          -> class token -> classifier

Step 1 trains the FE without labels on the source (``pretrain_fe``); step 2 freezes it and trains
projection + task blocks + classifier with source labels (``train_task``); step 3 adapts the FE to
an unlabelled target with the same objective, starting from step 1's student, teacher and heads
(``adapt_fe``), and predicts with the adapted *teacher* FE and the untouched task model.

On profile data (``config["modality"] == "profile"``) the FE is the profile MLP, the task model
an MLP on its output and the DINO views are feature noise and dropout (``hcibench.train.profiles``).
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from hcibench.data import Domain, TensorImages
from hcibench.errors import UsageError
from hcibench.run.accelerator import cpu_state, device_of, precision_key
from hcibench.run.stages import Context
from hcibench.train.backbones import create_vit
from hcibench.train.classifier import evaluate, predict_logits, predict_outputs, train_classifier
from hcibench.train.dino import DinoSettings, MultiCropWrapper, as_float, default_views, train_dino
from hcibench.train.modality import backbone_settings, create_backbone, dino_views, modality_of
from hcibench.train.profiles import TaskMLP

from .adaptation import AdaptationMonitor, AlignedFE, FeatureAlignment, restrict_to_scope, token_moments
from .selection import KEEP_RULES, KnnSelection
from .settings import from_section


class TaskModel(nn.Module):
    """Projection of FE tokens, transformer blocks without patch embedding, classifier.

    The blocks come from a timm ViT whose patch embedding, class token and position embedding
    are not used: the FE's tokens (its class token first) already carry position information.
    """

    def __init__(self, token_dim: int, settings: dict, num_classes: int):
        super().__init__()
        vit = create_vit(settings, num_classes=num_classes)
        self.project = nn.Linear(token_dim, vit.embed_dim)
        self.blocks = vit.blocks
        self.norm = vit.norm
        self.head = vit.head

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.blocks(self.project(tokens)))
        return self.head(x[:, 0])


def create_task(config: dict, token_dim: int, num_classes: int) -> nn.Module:
    """The task model for this run's modality: :class:`TaskModel` on ViT tokens, or an MLP
    (``profile.task_model``) on profile embeddings."""
    if modality_of(config).name == "profile":
        return TaskMLP(token_dim, config["profile"]["task_model"], num_classes)
    return TaskModel(token_dim, config["task"]["model"], num_classes)


def dino_settings(section: dict, **changes) -> DinoSettings:
    """DinoSettings from a config section, ignoring keys that are not DINO settings (pass the
    run's resolved ``precision`` as a change: the section has none)."""
    return from_section(DinoSettings, section, **changes)


def build_fe_pair(config: dict, channels: int, settings: DinoSettings):
    """Student and teacher FEs (same init) and their DINO heads."""
    student = create_backbone(config, channels, drop_path=settings.drop_path)
    teacher = create_backbone(config, channels)
    teacher.load_state_dict(student.state_dict())
    student_head = settings.build_head(student.embed_dim)
    teacher_head = settings.build_head(student.embed_dim)
    teacher_head.load_state_dict(student_head.state_dict())
    return student, teacher, student_head, teacher_head


def _state(modules) -> dict:
    return {name: cpu_state(module) for name, module in modules.items()}


def _alignment(config, settings, student, source: Domain, weight: float, seed: int):
    """The feature-alignment loss of step 3, with the moments of the step-1 student's blocks
    on the source's images under the first global view."""
    make_views = dino_views(config, settings.n_local) or default_views(settings)
    generator = torch.Generator().manual_seed(seed)  # its own stream: training's is untouched
    batches = (
        make_views(as_float(images, device_of(student)), None, generator)[0]
        for images, _, _ in source.batches(settings.batch_size)
    )
    return FeatureAlignment(student, FeatureAlignment.measure(student, batches), weight)


@torch.no_grad()
def source_center(config, settings, teacher, teacher_head, source: Domain, seed: int):
    """The DINO centre the step-1 teacher has on the source: its mean head output over the
    source's training images under the global views (what the centre's moving average tracked
    at the end of step 1)."""
    make_views = dino_views(config, settings.n_local) or default_views(settings)
    generator = torch.Generator().manual_seed(seed)  # its own stream: training's is untouched
    device = device_of(teacher)
    wrapper = MultiCropWrapper(teacher, teacher_head).eval()
    total, count = None, 0
    for images, _, _ in source.batches(settings.batch_size):
        views = make_views(as_float(images, device), None, generator)[:2]
        out = wrapper(views).float()
        total = out.sum(0, keepdim=True) if total is None else total + out.sum(0, keepdim=True)
        count += len(out)
    return {"center": (total / max(count, 1)).cpu()}


def run_dino(
    config,
    channels,
    domain,
    settings,
    context,
    init,
    description,
    scope=None,
    watch=None,
    align_to: Domain | None = None,
    center_from: Domain | None = None,
    select_on: Domain | None = None,
):
    """DINO from ``init`` (or random weights); ``scope`` = (trainable, early_blocks) freezes the
    rest of the student FE; ``watch(fe) -> (logits, tokens)`` turns on the adaptation monitor,
    which follows the FE that predicts (``adapt.predict_with``); ``align_to`` (a source domain)
    adds the feature-alignment loss weighted by ``adapt.feature_alignment``; ``select_on`` (the
    source's validation plates) keeps the epoch of the best k-NN accuracy on them; with the
    monitor on, ``adapt.keep`` = "spread" or "drift" keeps the last epoch that its rule on the
    monitor's rows accepts (:data:`.selection.KEEP_RULES`)."""
    student, teacher, student_head, teacher_head = build_fe_pair(config, channels, settings)
    modules = {
        "student": student,
        "teacher": teacher,
        "student_head": student_head,
        "teacher_head": teacher_head,
    }
    for name, module in modules.items():
        if init is not None:
            module.load_state_dict(init[name])
        module.to(context.device)
    if scope is not None:
        restrict_to_scope(student, *scope)
    predictor = config["adapt"].get("predict_with", "teacher")
    # What runs after each epoch: the monitor first, then the epoch rules that read it.
    monitor, rule, selection, after_epoch = None, None, None, []
    if watch is not None:
        monitor = AdaptationMonitor(watch, num_classes=len(domain.classes))
        watched = modules[predictor]
        was_training = watched.training
        monitor.record(0, watched.eval())
        watched.train(was_training)
        after_epoch.append(lambda epoch: monitor.record(epoch, watched))
        keep = config["adapt"].get("keep", "last")
        if keep != "last":
            rule = KEEP_RULES[keep](modules, monitor, float(config["adapt"]["keep_tolerance"]))
            rule.record(0)
            after_epoch.append(rule.record)
    if select_on is not None:
        selection = KnnSelection(modules, domain, select_on, config["eval_batch_size"], config["input_size"])
        after_epoch.append(selection.record)
    kept = {"monitor": monitor, "selection": selection, "keep_rule": rule}
    kept = {name: keeper for name, keeper in kept.items() if keeper is not None}

    def on_epoch(epoch: int) -> None:
        for record in after_epoch:
            record(epoch)

    alignment = None
    if align_to is not None:
        alignment = _alignment(
            config, settings, student, align_to, float(config["adapt"]["feature_alignment"]), context.seed + 1
        )
    loss_state = None
    if center_from is not None:
        loss_state = source_center(config, settings, teacher, teacher_head, center_from, context.seed + 2)
    generator = torch.Generator().manual_seed(context.seed)
    try:
        stats = train_dino(
            student,
            teacher,
            student_head,
            teacher_head,
            domain,
            settings,
            context.progress,
            generator,
            loss_state,
            views=dino_views(config, settings.n_local),
            description=description,
            on_epoch=on_epoch if after_epoch else None,
            extra_loss=alignment,
            keep_with_checkpoint=kept or None,
        )
    finally:
        if alignment is not None:
            alignment.remove()
    stats.pop("loss_state", None)
    for keeper in (selection, rule):
        if keeper is not None:
            keeper.keep_best()
            stats.update(keeper.result())
    result = {**_state(modules), "stats": stats}
    if init is not None:
        result["predictor"] = predictor
    if monitor is not None:
        result["monitor"] = monitor.result()
    return result


def fe_stage(context: Context, cross_batch: bool) -> tuple[str, dict]:
    """Step 1's stage name and key (computed from the settings alone, so a plan can name it)."""
    settings = dino_settings(context.config["dino"], cross_batch=cross_batch, precision=context.precision)
    key = {"backbone": backbone_settings(context.config), "dino": asdict(settings)}
    select = context.config["dino"].get("select", "last")
    if select != "last":
        key["select"] = select
    return ("fe-dino-cb" if cross_batch else "fe-dino"), key


def pretrain_fe(
    context: Context, train: Domain, cross_batch: bool, val: Domain | None = None
) -> tuple[dict, dict]:
    """Step 1: the FE trained with DINO (with cross-batch pairs if asked) on the source; with
    ``dino.select = "knn"``, the epoch whose teacher has the best k-NN accuracy on the source's
    validation plates ``val`` (see :mod:`.selection`).

    Returns the stage result and the stage settings (the key that step 2 and 3 build on)."""
    config = context.config
    settings = dino_settings(config["dino"], cross_batch=cross_batch, precision=context.precision)
    name, key = fe_stage(context, cross_batch)
    channels = train.images[0].shape[0]
    select_on = None
    if key.get("select") == "knn":
        if val is None or not bool((val.labels >= 0).any()):
            raise UsageError(
                "dino.select=knn chooses step 1's epoch on the source's labelled "
                "validation plates: set split.val_plates to 1 or more, or "
                "dino.select=last"
            )
        select_on = val
    result = context.stage(
        name,
        key,
        lambda: run_dino(
            config,
            channels,
            train,
            settings,
            context,
            None,
            f"step 1 {'DINO+CB' if cross_batch else 'DINO'} {context.source}",
            select_on=select_on,
        ),
    )
    return result, key


def load_fe(config: dict, channels: int, state: dict, device: torch.device | None = None) -> nn.Module:
    """A frozen FE in eval mode (on ``device``, default the CPU) from a stage result: its
    ``predictor`` entry names the weights that predict (the DINO teacher by default, the MAE
    encoder)."""
    fe = create_backbone(config, channels)
    fe.load_state_dict(state[state.get("predictor", "teacher")])
    fe.eval().requires_grad_(False)
    return fe.to(device or torch.device("cpu"))


def tokens_forward(fe: nn.Module, task: TaskModel):
    """Image batch -> logits, with the FE frozen (no graph through it)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            tokens = fe.forward_features(x)
        return task(tokens)

    return forward


def train_task(context: Context, train: Domain, val: Domain, fe_state: dict, fe_key: dict) -> dict:
    """Step 2: projection + task model + classifier on the frozen step-1 teacher FE."""
    config = context.config
    channels = train.images[0].shape[0]

    def compute():
        fe = load_fe(config, channels, fe_state, context.device)
        task = create_task(config, fe.embed_dim, len(train.classes))
        description = f"step 2 task model {context.source}"
        if config["task"].get("cache_tokens"):
            # The FE is frozen: computing its tokens once instead of every epoch is exact
            # (apart from giving up flip augmentation) and much faster on a CPU.
            result = train_classifier(
                task,
                task,
                token_domain(fe, train, config),
                token_domain(fe, val, config),
                config["task"],
                context,
                config["input_size"],
                description=description,
            )
        else:
            result = train_classifier(
                task,
                tokens_forward(fe, task),
                train,
                val,
                config["task"],
                context,
                config["input_size"],
                description=description,
            )
        return {
            "state": result["state"],
            "val_accuracy": result["val_accuracy"],
            "best_epoch": result["best_epoch"],
        }

    return context.stage(*task_stage(context, fe_key), compute)


def task_key(config: dict, fe_key: dict) -> dict:
    """The settings the step-2 stage depends on."""
    return {"fe": fe_key, "task": config["task"], "input_size": config["input_size"]}


def task_stage(context: Context, fe_key: dict) -> tuple[str, dict]:
    """Step 2's stage name and key."""
    return "task", {**task_key(context.config, fe_key), **precision_key(context.precision)}


def fe_moments(config: dict, fe: nn.Module, domain: Domain) -> dict[str, torch.Tensor]:
    """The FE's output moments on a domain (see :func:`adaptation.token_moments`)."""
    return token_moments(
        predict_logits(
            fe.forward_features, domain, config["eval_batch_size"], config["input_size"], device_of(fe)
        )
    )


def token_domain(fe: nn.Module, domain: Domain, config: dict) -> Domain:
    """The same samples with the frozen FE's tokens (N×T×D) in place of the images."""
    tokens = predict_logits(
        fe.forward_features, domain, config["eval_batch_size"], config["input_size"], device_of(fe)
    )
    return Domain(domain.name, domain.meta, TensorImages(tokens), domain.classes)


def load_task(
    config: dict, token_dim: int, num_classes: int, state: dict, device: torch.device | None = None
) -> nn.Module:
    task = create_task(config, token_dim, num_classes)
    task.load_state_dict(state)
    task.eval().requires_grad_(False)
    return task.to(device or torch.device("cpu"))


def adapt_settings(context: Context, cross_batch: bool) -> DinoSettings:
    """Step 3's DINO settings: step 1's, with the ``adapt`` section's where it sets them;
    ``cross_batch`` is the method's, unless ``adapt.cross_batch`` sets it."""
    adapt = dict(context.config["adapt"])
    own = adapt.pop("cross_batch", None)
    return dino_settings(
        context.config["dino"],
        cross_batch=cross_batch if own is None else bool(own),
        **adapt,
        precision=context.precision,
    )


def adapt_stage(
    context: Context,
    target: Domain,
    fe_key: dict,
    cross_batch: bool,
    monitor_task_key: dict | None,
    source_n: int,
) -> tuple[str, dict]:
    """Step 3's stage name and key for one target (part); ``monitor_task_key`` when the stage
    keeps the diagnostics (which need the step-2 model), ``source_n`` the source's training
    images (measured by feature alignment)."""
    adapt = context.config["adapt"]
    settings = adapt_settings(context, cross_batch)
    key = {
        "fe": fe_key,
        "adapt": asdict(settings),
        "target": target.name,
        "n": len(target),
    }
    scope = (adapt.get("trainable", "all"), int(adapt.get("early_blocks", 1)))
    if scope[0] != "all":
        key["scope"] = scope
    if adapt.get("predict_with", "teacher") != "teacher":
        key["predict_with"] = adapt["predict_with"]
    if monitor_task_key is not None:
        key["monitor"] = {"task": monitor_task_key}
    align_weight = float(adapt.get("feature_alignment") or 0)
    if align_weight > 0:
        key["feature_alignment"] = {"weight": align_weight, "source_n": source_n}
    if adapt.get("center", "zero") != "zero":
        key["center"] = {"from": adapt["center"], "source_n": source_n}
    if adapt.get("keep", "last") != "last":
        key["keep"] = {"rule": adapt["keep"], "tolerance": float(adapt["keep_tolerance"])}
    return ("adapt-cb" if settings.cross_batch else "adapt"), key


def adapt_fe(
    context: Context,
    target: Domain,
    fe_state: dict,
    fe_key: dict,
    cross_batch: bool,
    task: nn.Module | None = None,
    task_key: dict | None = None,
    source: Domain | None = None,
) -> dict:
    """Step 3: the FE adapted with DINO (+ CB pairs) on the unlabelled target, from step 1.

    ``adapt.trainable`` limits what adapts (see :mod:`adaptation`). With ``task`` (the
    frozen step-2 model, keyed by ``task_key``) and ``adapt.monitor``, the stage also keeps the
    label-free diagnostics and logits of every epoch. With ``adapt.feature_alignment`` > 0,
    the FE's hidden features are also held at their step-1 moments on ``source`` (the source's
    training images; see :class:`adaptation.FeatureAlignment`)."""
    config = context.config
    adapt = config["adapt"]
    settings = adapt_settings(context, cross_batch)
    channels = target.images[0].shape[0]
    scope = (adapt.get("trainable", "all"), int(adapt.get("early_blocks", 1)))
    watching = bool(adapt.get("monitor")) and task is not None
    align_weight = float(adapt.get("feature_alignment") or 0)
    center = adapt.get("center", "zero")
    if (align_weight > 0 or center == "source") and source is None:
        raise ValueError("feature alignment and the source centre need the source's images")
    name, key = adapt_stage(
        context,
        target,
        fe_key,
        cross_batch,
        task_key if watching else None,
        len(source) if source is not None else 0,
    )
    watch = (lambda fe: predict_with_embeddings(config, fe, task, target)) if watching else None
    return context.stage(
        name,
        key,
        lambda: run_dino(
            config,
            channels,
            target,
            settings,
            context,
            fe_state,
            f"step 3 adapt to {target.name}",
            scope,
            watch,
            source if align_weight > 0 else None,
            source if center == "source" else None,
        ),
    )


def aligned(config: dict, fe: nn.Module, source_moments: dict | None, target: Domain) -> nn.Module:
    """``fe`` with its outputs on ``target`` moved to the source's moments when
    ``adapt.align_tokens`` is on (``source_moments`` given), else ``fe`` itself."""
    if source_moments is None:
        return fe
    return AlignedFE(fe, source_moments, fe_moments(config, fe, target))


def alignment_check(
    config: dict, fe: nn.Module, task: nn.Module, source_moments: dict, val: Domain
) -> dict | None:
    """The task model's accuracy on the source's labelled validation images as they are and with
    the token alignment moving them to the training images' moments; None without labels.

    Source data only. The alignment takes whatever differs between two sets of images as a whole
    for the shift to undo; where the class mix differs between plates (as on plates that each
    hold other compounds), it moves the classes too, and a validation plate shows that cost."""
    scored = val.labels >= 0
    if not bool(scored.any()):
        return None

    def accuracy(model: nn.Module) -> float:
        forward = tokens_forward(model, task)
        return evaluate(forward, val, config["eval_batch_size"], config["input_size"], device_of(model))[1]

    return {
        "images": int(scored.sum()),
        "plain": accuracy(fe),
        "aligned": accuracy(aligned(config, fe, source_moments, val)),
    }


def predict(config: dict, fe: nn.Module, task: TaskModel, target: Domain) -> torch.Tensor:
    return predict_logits(
        tokens_forward(fe, task), target, config["eval_batch_size"], config["input_size"], device_of(fe)
    )


def embedding(features: torch.Tensor) -> torch.Tensor:
    """One vector per sample from FE output: the class token of ViT tokens, a profile
    embedding as it is."""
    return features[:, 0] if features.dim() == 3 else features


def predict_with_embeddings(
    config: dict, fe: nn.Module, task: nn.Module, target: Domain
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and FE embeddings (:func:`embedding`) of every target sample, in one pass."""

    def forward(x: torch.Tensor):
        features = fe.forward_features(x)
        return task(features), embedding(features)

    return predict_outputs(forward, target, config["eval_batch_size"], config["input_size"], device_of(fe))
