"""The dual model: frozen classifier during adaptation, shared stages, single-batch targets."""

import json

import pandas as pd
import pytest
import torch
from conftest import TINY_BACKBONE, tiny_args

import hcibench
from hcibench import plugins
from hcibench.data import TensorImages
from hcibench.run.stages import Context, StageCache
from hcibench.train.dino import MultiCropWrapper
from hcibench_plugins.methods.dual import settings as dual_settings
from hcibench_plugins.methods.dual import steps as dual

TINY_DUAL = [
    "dino.epochs=1",
    "dino.n_local=2",
    "dino.head_hidden_dim=32",
    "dino.head_bottleneck_dim=16",
    "dino.head_out_dim=64",
    "dino.batch_size=32",
    "task.epochs=1",
    "task.model.depth=1",
    "task.model.embed_dim=32",
    "task.model.num_heads=2",
    "adapt.epochs=1",
]


def _tiny_config():
    return dual_settings.config("quick", [*TINY_BACKBONE, *TINY_DUAL])


def _domain(name, batches, n=48, classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    meta = pd.DataFrame(
        {
            "source": name,
            "batch": [f"B{i % batches}" for i in range(n)],
            "plate": [f"P{i % (batches * 2)}" for i in range(n)],
            "well": "A01",
            "compound": [f"c{i % 8}" for i in range(n)],
            "label": [f"moa{(i % 8) % classes}" for i in range(n)],
        }
    )
    images = torch.rand(n, 3, 32, 32, generator=generator)
    return hcibench.Domain(name, meta, TensorImages(images), [f"moa{i}" for i in range(classes)])


def _coda(config):
    context = Context(config, seed=0, source="A", stages=StageCache(None, keep_in_memory=100))
    return plugins.methods().get("coda")(context), context


def test_adaptation_changes_the_fe_and_leaves_the_classifier_bit_for_bit():
    method, context = _coda(_tiny_config())
    method.fit(_domain("A", 3), _domain("A-val", 2, n=16))
    before = {k: v.clone() for k, v in method.task.state_dict().items()}
    method.predict(_domain("B", 2, seed=1))
    after = method.task.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    adapted = next(v for k, v in context.stages.memory.items() if k.startswith("adapt"))
    step1 = method.fe_stage["teacher"]
    assert any(not torch.equal(step1[k], adapted["teacher"][k]) for k in step1)
    assert all(not p.requires_grad for p in method.task.parameters())


def test_single_batch_target_runs_coda_and_records_the_fallback():
    method, _ = _coda(_tiny_config())
    method.fit(_domain("A", 3), _domain("A-val", 2, n=16))
    prediction = method.predict(_domain("C", batches=1, seed=2))
    assert prediction.logits.shape == (48, 4)
    pairs = prediction.info["adaptations"][0]["pairs"]
    assert pairs["fallback_plate"] + pairs["fallback_self"] == 48


def test_grid_computes_each_shared_stage_once(cli, tmp_path):
    out = tmp_path / "run"
    result = cli(
        "run",
        "--methods",
        "dual-dino,oda,dual-cb,coda",
        "--sources",
        "S8,S10",
        "--targets",
        "S8,S10",
        "--seeds",
        "0,1",
        "--out",
        str(out),
        *tiny_args(*TINY_DUAL, supervised=False),
    )
    assert result.returncode == 0, result.stderr
    stages = json.loads((out / "manifest.json").read_text())["stages"].values()
    by_name = {}
    for stage in stages:
        by_name.setdefault(stage["name"], []).append(stage)
    for name in ("fe-dino", "fe-dino-cb", "task"):
        assert all(s["computed"] == 1 for s in by_name[name]), name
    assert len(by_name["fe-dino"]) == len(by_name["fe-dino-cb"]) == 4  # 2 sources × 2 seeds
    assert len(by_name["task"]) == 8  # one per FE
    assert all(s["reused"] >= 1 for s in by_name["fe-dino"] + by_name["fe-dino-cb"])


def test_the_source_centre_starts_step_3_where_step_1_left_the_teacher():
    config = _tiny_config()
    config["adapt"]["center"] = "source"
    config["dino"]["batch_size"] = 64  # the 48 source images in one batch
    method, context = _coda(config)
    source = _domain("A", 3)
    method.fit(source, _domain("A-val", 2, n=16))
    settings = dual.adapt_settings(context, cross_batch=True)
    teacher = dual.load_fe(config, 3, method.fe_stage)
    head = settings.build_head(teacher.embed_dim)
    head.load_state_dict(method.fe_stage["teacher_head"])
    center = dual.source_center(config, settings, teacher, head, source, seed=5)["center"]
    assert center.shape == (1, settings.head_out_dim)
    # The mean head output over the source's images under the first two global views.
    views = dino_views_or_default(config, settings)(source.stack(), None, torch.Generator().manual_seed(5))[
        :2
    ]
    expected = MultiCropWrapper(teacher, head).eval()(views).mean(0, keepdim=True)
    torch.testing.assert_close(center, expected.detach(), atol=1e-5, rtol=1e-5)
    zero_key = dual.adapt_stage(Context(_tiny_config(), seed=0, source="A"), source, {}, True, None, 48)[1]
    source_key = dual.adapt_stage(context, source, {}, True, None, 48)[1]
    assert "center" not in zero_key and source_key["center"] == {"from": "source", "source_n": 48}
    prediction = method.predict(_domain("B", 2, seed=1))  # step 3 runs from that centre
    assert torch.isfinite(prediction.logits).all()


def dino_views_or_default(config, settings):
    from hcibench.train.dino import default_views
    from hcibench.train.modality import dino_views

    return dino_views(config, settings.n_local) or default_views(settings)


def test_a_classifier_stage_killed_mid_training_goes_on_from_its_saved_progress(tmp_path, monkeypatch):
    from hcibench.train import classifier as training
    from hcibench.train.modality import create_backbone

    monkeypatch.setenv("HCIBENCH_CHECKPOINT_SECONDS", "0")
    config = _tiny_config()
    settings = {**config["task"], "epochs": 4, "patience": 1}
    train, val = _domain("A", 3), _domain("A-val", 2, n=16)
    evaluate = training.evaluate

    def compute(cache, kill_at=None):
        calls = []

        def counted(*args, **kwargs):
            calls.append(1)
            if len(calls) == kill_at:
                raise KeyboardInterrupt  # as a kill would, before this epoch's save
            return evaluate(*args, **kwargs)

        monkeypatch.setattr(training, "evaluate", counted)
        torch.manual_seed(0)
        model = create_backbone(config, 3, num_classes=4, drop_path=0.1)
        context = Context(config, seed=0, source="A", stages=cache)
        result = training.train_classifier(model, model, train, val, settings, context, 32)
        return {"state": result["state"], "history": result["history"]}

    whole = StageCache(tmp_path / "whole")
    reference = whole.get("supervised", {"k": 1}, lambda: compute(whole))
    killed = StageCache(tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        killed.get("supervised", {"k": 1}, lambda: compute(killed, kill_at=3))
    again = StageCache(tmp_path / "killed")
    resumed = again.get("supervised", {"k": 1}, lambda: compute(again))
    assert resumed["history"] == reference["history"]
    assert all(torch.equal(resumed["state"][k], v) for k, v in reference["state"].items())


def _classifier_after_one_epoch(**changes):
    from hcibench.train import classifier as training
    from hcibench.train.modality import create_backbone

    config = _tiny_config()
    settings = {**config["task"], "epochs": 1, "warmup_epochs": 0, "lr": 1e-2, **changes}
    torch.manual_seed(0)
    model = create_backbone(config, 3, num_classes=4, drop_path=0.0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    context = Context(config, seed=0, source="A", stages=StageCache(None, keep_in_memory=10))
    result = training.train_classifier(
        model, model, _domain("A", 3), _domain("A-val", 2, n=16), settings, context, 32
    )
    moved = sum((result["state"][k].float() - v.float()).norm() ** 2 for k, v in start.items()) ** 0.5
    return result["state"], float(moved)


def test_the_reference_step_2_recipe_clips_the_gradient_norm_and_jitters_the_images():
    plain, moved = _classifier_after_one_epoch()
    clipped, moved_clipped = _classifier_after_one_epoch(clip_grad=1e-4)
    # AdamW normalises the step, so a clip changes the update's direction, not only its size:
    # the weights differ, and the run stays finite
    assert any(not torch.equal(plain[k], clipped[k]) for k in plain)
    assert moved_clipped > 0
    jittered, _ = _classifier_after_one_epoch(jitter=True)
    assert any(not torch.equal(plain[k], jittered[k]) for k in plain)
    again, _ = _classifier_after_one_epoch(jitter=True)
    assert all(torch.equal(again[k], jittered[k]) for k in again)  # the jitter draws from the seed


def test_jitter_with_cached_tokens_is_refused_before_anything_runs(cli, tmp_path):
    result = cli("run", "--methods", "dual-dino", "--set", "task.jitter=true", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "task.cache_tokens=false" in result.stderr
    assert not (tmp_path / "run").exists()
