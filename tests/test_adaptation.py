"""Step 3 without labels: its diagnostics, what adapts, and which FE predicts."""

import pytest
import torch
from test_dual import _domain, _tiny_config

from hcibench import plugins
from hcibench.errors import UsageError
from hcibench.run import presets
from hcibench.run.stages import Context, StageCache
from hcibench.train.modality import create_backbone
from hcibench_plugins.methods.dual.adaptation import effective_classes, restrict_to_scope, weight_movement


def _fitted(method_name="oda", overrides=()):
    config = _tiny_config()
    for item in overrides:
        presets.apply_override(config, item)
    context = Context(config, seed=0, source="A", stages=StageCache(None, keep_in_memory=100))
    method = plugins.methods().get(method_name)(context)
    method.fit(_domain("A", 3), _domain("A-val", 2, n=16))
    return method, context


def _shuffled_labels(domain, seed=0):
    labels = domain.meta["label"].sample(frac=1, random_state=seed).to_numpy()
    meta = domain.meta.assign(label=labels)
    assert not (meta["label"] == domain.meta["label"]).all()
    return type(domain)(domain.name, meta, domain.images, domain.classes)


def test_diagnostics_and_predictions_do_not_depend_on_target_labels():
    target = _domain("B", 2, seed=1)
    results = []
    for domain in (target, _shuffled_labels(target)):
        method, _ = _fitted(overrides=["adapt.epochs=2"])
        results.append(method.predict(domain))
    first, second = results
    assert torch.equal(first.logits, second.logits)
    diag_a = first.info["adaptations"][0]["diagnostics"]
    diag_b = second.info["adaptations"][0]["diagnostics"]
    assert diag_a == diag_b
    rows = diag_a["epochs"]
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert rows[0]["changed_predictions"] == 0 and rows[0]["weight_movement_total"] == 0
    assert rows[-1]["weight_movement_total"] > 0 and rows[-1]["cka_to_start"] < 1
    assert len(diag_a["loss"]) == 2
    # The oracle curve: one logits variant per epoch, the last one the prediction itself.
    assert sorted(first.variants) == ["adapt_epoch=0", "adapt_epoch=1", "adapt_epoch=2"]
    assert torch.equal(first.variants["adapt_epoch=2"], first.logits)


@pytest.mark.parametrize(
    "rule, tolerance, diagnostic, floor",
    [
        ("spread", 0.0, "predicted_classes", lambda start: start),
        ("drift", 0.002, "cka_to_start", lambda _: 0.998),
    ],
)
def test_an_epoch_rule_predicts_with_its_kept_epoch_and_reads_no_target_label(
    rule, tolerance, diagnostic, floor
):
    target = _domain("B", 2, seed=1)
    settings = ["adapt.epochs=3", f"adapt.keep={rule}", f"adapt.keep_tolerance={tolerance}"]
    first, second = (_fitted(overrides=settings)[0].predict(d) for d in (target, _shuffled_labels(target)))
    assert torch.equal(first.logits, second.logits)
    adaptation = first.info["adaptations"][0]
    kept = adaptation["kept_epoch"]
    values = [row[diagnostic] for row in adaptation["diagnostics"]["epochs"]]
    least = floor(values[0]) - 1e-12
    assert values[kept] >= least and all(value < least for value in values[kept + 1 :])
    assert torch.equal(first.logits, first.variants[f"adapt_epoch={kept}"])
    assert adaptation == second.info["adaptations"][0]


def test_norm_scope_moves_only_the_normalisation_layers_of_the_teacher_that_predicts():
    method, context = _fitted(overrides=["adapt.trainable=norm", "adapt.epochs=2"])
    method.predict(_domain("B", 2, seed=1))
    adapted = next(v for k, v in context.stages.memory.items() if k.startswith("adapt"))
    step1 = method.fe_stage["teacher"]
    changed = {k for k in step1 if not torch.equal(step1[k], adapted["teacher"][k])}
    assert changed, "nothing adapted"
    assert all(".norm" in k or k.startswith("norm") for k in changed), sorted(changed)


def test_early_scope_keeps_later_blocks_and_student_predicts_when_asked():
    method, context = _fitted(
        overrides=[
            "adapt.trainable=early",
            "adapt.early_blocks=1",
            "adapt.predict_with=student",
            "adapt.epochs=2",
        ]
    )
    method.predict(_domain("B", 2, seed=1))
    adapted = next(v for k, v in context.stages.memory.items() if k.startswith("adapt"))
    assert adapted["predictor"] == "student"
    before = method.fe_stage["student"]
    changed = {k for k in before if not torch.equal(before[k], adapted["student"][k])}
    assert changed and all(
        k.startswith(("patch_embed", "pos_embed", "cls_token", "blocks.0.")) for k in changed
    ), sorted(changed)


def test_scope_selection_and_its_errors():
    config = presets.build("quick")
    fe = create_backbone(config, 3)
    total = sum(p.numel() for p in fe.parameters())
    assert restrict_to_scope(fe, "all") == total
    norm = restrict_to_scope(fe, "norm")
    assert 0 < norm < total // 20
    assert all(p.requires_grad == (p.ndim == 1 and ("norm" in n)) for n, p in fe.named_parameters())
    early = restrict_to_scope(fe, "early", 2)
    assert norm < early < total
    with pytest.raises(UsageError, match="adapt.trainable must be one of"):
        restrict_to_scope(fe, "late")
    with pytest.raises(UsageError, match="needs a ViT"):
        restrict_to_scope(torch.nn.Sequential(torch.nn.Linear(3, 3)), "early")


def test_weight_movement_and_effective_classes():
    start = {"blocks.0.w": torch.ones(4), "patch_embed.w": torch.ones(4)}
    now = {"blocks.0.w": torch.full((4,), 1.5), "patch_embed.w": torch.ones(4)}
    assert weight_movement(start, now) == {"blocks.0": pytest.approx(0.5), "patch_embed": 0.0}
    assert effective_classes(torch.tensor([0, 1, 2, 3]), 4) == pytest.approx(4)
    assert effective_classes(torch.tensor([2, 2, 2, 2]), 4) == pytest.approx(1)


def test_monitor_is_off_without_the_setting():
    method, _ = _fitted(overrides=["adapt.monitor=false"])
    prediction = method.predict(_domain("B", 2, seed=1))
    assert prediction.variants == {}
    assert prediction.info["adaptations"][0]["diagnostics"]["epochs"] == []


def test_aligned_fe_gives_the_target_the_source_moments():
    from hcibench_plugins.methods.dual.adaptation import AlignedFE, token_moments

    class Shifted(torch.nn.Module):
        embed_dim = 4

        def forward_features(self, x):
            return x

    generator = torch.Generator().manual_seed(0)
    source = torch.randn(200, 5, 4, generator=generator)
    target = 3 * torch.randn(100, 5, 4, generator=generator) + 2
    fe = AlignedFE(Shifted(), token_moments(source), token_moments(target))
    moved = token_moments(fe.forward_features(target))
    for key, value in token_moments(source).items():
        assert torch.allclose(moved[key], value, atol=1e-4), key


def test_token_alignment_changes_the_prediction_of_a_dual_model_without_labels():
    target = _domain("B", 2, seed=1)
    plain, _ = _fitted("dual-dino")
    aligned, _ = _fitted("dual-dino", ["adapt.align_tokens=true"])
    a, b = plain.predict(target), aligned.predict(target)
    assert not torch.equal(a.logits, b.logits)
    again, _ = _fitted("dual-dino", ["adapt.align_tokens=true"])
    assert torch.equal(again.predict(_shuffled_labels(target)).logits, b.logits)


def test_feature_alignment_pulls_the_target_features_towards_the_source_moments():
    method, _ = _fitted(overrides=["adapt.feature_alignment=10", "adapt.epochs=3", "adapt.trainable=norm"])
    prediction = method.predict(_domain("B", 2, seed=1))
    losses = prediction.info["adaptations"][0]["diagnostics"]["feature_alignment_loss"]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_mae_adaptation_records_the_same_diagnostics():
    method, _ = _fitted(
        "oda-mae", ["mae.epochs=1", "mae.decoder_dim=16", "mae.decoder_heads=2", "adapt.epochs=2"]
    )
    prediction = method.predict(_domain("B", 2, seed=1))
    rows = prediction.info["adaptations"][0]["diagnostics"]["epochs"]
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert sorted(prediction.variants) == ["adapt_epoch=0", "adapt_epoch=1", "adapt_epoch=2"]


def test_coda_align_shares_every_stage_with_coda_and_only_aligns_its_prediction():
    from pathlib import Path

    from test_method_contract import _tiny_settings

    from hcibench.run import runner
    from hcibench.run.stages import Context, StageCache

    def fitted(name, cache, *extra):
        spec = runner.RunSpec(
            runner.Grid([name], ["S8"], ["S11"]), Path("unused"), overrides=[*_tiny_settings(name), *extra]
        )
        run = runner.prepare(spec)
        domains = runner.DomainCache(run)
        split, target = domains.split("S8"), domains.target("S8", "S11")
        method = run.method_classes[name](Context(run.config, seed=0, source="S8", stages=cache))
        method.fit(split.train, split.val)
        return method, method.predict(target)

    cache = StageCache(None, keep_in_memory=50)
    coda, plain = fitted("coda", cache)
    stages = set(cache.memory)
    aligned_method, aligned = fitted("coda-align", cache)
    assert set(cache.memory) == stages  # nothing computed anew: the same steps 1, 2 and 3
    assert aligned_method.config["adapt"]["align_tokens"] and not coda.config["adapt"]["align_tokens"]
    _, by_setting = fitted("coda", cache, "adapt.align_tokens=true")
    assert torch.equal(aligned.logits, by_setting.logits)
    assert not torch.equal(aligned.logits, plain.logits)


def test_alignment_is_checked_on_the_source_validation_images_and_skipped_past_the_guard(monkeypatch):
    from hcibench.run.progress import Progress
    from hcibench_plugins.methods.dual import steps

    logged = []
    monkeypatch.setattr(Progress, "log", lambda self, message: logged.append(message))

    target = _domain("B", 2, seed=1)
    plain, _ = _fitted("dual-dino")
    kept, _ = _fitted("dual-dino", ["adapt.align_tokens=true"])  # guard 1: never skipped
    check = kept.info["alignment_on_source_val"]
    assert check["images"] == 16 and 0 <= check["plain"] <= 1 and 0 <= check["aligned"] <= 1
    assert not check["skipped"]
    assert not torch.equal(kept.predict(target).logits, plain.predict(target).logits)

    # An alignment that costs the source's validation images 40 points is skipped at a guard of 5.
    monkeypatch.setattr(steps, "alignment_check", lambda *a: {"images": 16, "plain": 0.9, "aligned": 0.5})
    guarded, _ = _fitted("dual-dino", ["adapt.align_tokens=true", "adapt.align_guard=0.05"])
    assert guarded.info["alignment_on_source_val"]["skipped"]
    assert any("from 90.0% to 50.0% (16 images)" in line for line in logged)
    logged.clear()
    assert torch.equal(guarded.predict(target).logits, plain.predict(target).logits)
    # One that costs 2 points is kept.
    monkeypatch.setattr(steps, "alignment_check", lambda *a: {"images": 16, "plain": 0.9, "aligned": 0.88})
    within, _ = _fitted("dual-dino", ["adapt.align_tokens=true", "adapt.align_guard=0.05"])
    assert not within.info["alignment_on_source_val"]["skipped"]
    assert not any("token alignment" in line for line in logged)
    assert torch.equal(within.predict(target).logits, kept.predict(target).logits)


def test_alignment_check_needs_labelled_validation_images():
    from hcibench_plugins.methods.dual import steps

    method, _ = _fitted("dual-dino", ["adapt.align_tokens=true"])
    val = _domain("A-val", 2, n=16)
    unlabelled = type(val)(val.name, val.meta.assign(label=None), val.images, val.classes)
    assert (
        steps.alignment_check(method.config, method.fe, method.task, method.source_moments, unlabelled)
        is None
    )


@pytest.mark.parametrize("method_name, crossed", [("oda", True), ("coda", False)])
def test_adapt_cross_batch_crosses_a_methods_step_3_and_keeps_its_step_1(method_name, crossed):
    method, context = _fitted(
        method_name, overrides=["adapt.epochs=1", f"adapt.cross_batch={str(crossed).lower()}"]
    )
    method.predict(_domain("B", 2, seed=1))
    names = [key.split("-")[0:2] for key in context.stages.memory]
    step1 = next(k for k in context.stages.memory if k.startswith("fe-"))
    step3 = next(k for k in context.stages.memory if k.startswith("adapt"))
    assert step1.startswith("fe-dino-cb") == (method_name == "coda"), names
    assert step3.startswith("adapt-cb") == crossed, names
    assert context.stages.memory[step3]["stats"]["cross_batch"] == crossed
