import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import hcibench
from hcibench.compat import ensure_torchvision_importable
from hcibench.run.progress import Progress
from hcibench.train.dino import (
    DINOHead,
    DINOLoss,
    DinoSettings,
    DinoTrainer,
    MultiCropWrapper,
    collapse_epoch,
    cosine_schedule,
    dino_loss,
    lr_schedule,
    target_spread,
    train_dino,
)
from hcibench.train.loop import clip_gradients, parameter_groups


def tiny_vit(**kwargs):
    ensure_torchvision_importable()
    import timm

    options = dict(
        img_size=16,
        patch_size=4,
        embed_dim=32,
        depth=1,
        num_heads=2,
        num_classes=0,
        dynamic_img_size=True,
        in_chans=3,
    )
    options.update(kwargs)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **options)


def tiny_settings(**kwargs):
    options = dict(
        epochs=2,
        batch_size=8,
        warmup_epochs=1,
        n_local=2,
        global_size=16,
        local_size=8,
        head_hidden_dim=32,
        head_bottleneck_dim=16,
        head_out_dim=64,
        warmup_teacher_temp_epochs=1,
        lr=1e-3,
    )
    options.update(kwargs)
    return DinoSettings(**options)


def models(settings, seed=0):
    torch.manual_seed(seed)
    student = tiny_vit()
    head = settings.build_head(32)
    return student, copy.deepcopy(student), head, copy.deepcopy(head)


def domain(n=24, compounds=3, batches=2, size=16, single_batch_compound=True, seed=0):
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, batches, n)
    compound = rng.integers(0, compounds, n)
    if single_batch_compound:  # compound 0 only in batch 0: it must fall back
        batch[compound == 0] = 0
    meta = pd.DataFrame(
        {
            "source": "S1",
            "batch": [f"b{b}" for b in batch],
            "plate": [f"b{b}-p{i % 2}" for i, b in enumerate(batch)],
            "well": "A01",
            "compound": [f"c{c}" for c in compound],
            "label": "moa",
        }
    )
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return hcibench.Domain("tiny", meta, hcibench.TensorImages(images), ["moa"])


# ------------------------------------------------------------------------------------ loss


def _log_softmax(row):
    m = max(row)
    z = math.log(sum(math.exp(v - m) for v in row))
    return [v - m - z for v in row]


def test_dino_loss_equals_the_formula_computed_by_hand():
    # 2 globals + 1 local, batch 2, out_dim 3
    student = torch.tensor(
        [
            [0.1, 0.5, -0.3],
            [1.0, -1.0, 0.0],  # global 1
            [0.3, 0.2, 0.1],
            [-0.5, 0.4, 0.9],  # global 2
            [0.0, 0.0, 1.0],
            [0.7, -0.2, 0.3],
        ]
    )  # local
    teacher = torch.tensor([[0.2, -0.1, 0.4], [0.9, 0.1, -0.6], [-0.3, 0.8, 0.05], [0.0, 0.5, 0.5]])
    center = torch.tensor([[0.05, -0.02, 0.1]])
    tau_s, tau_t, batch = 0.1, 0.04, 2

    def view(rows, v):
        return [r.tolist() for r in rows[v * batch : (v + 1) * batch]]

    total, terms = 0.0, 0
    for g in range(2):
        for v in range(3):
            if v == g:
                continue
            per_image = []
            for t_row, s_row in zip(view(teacher, g), view(student, v)):
                q = [
                    math.exp(x)
                    for x in _log_softmax([(a - c) / tau_t for a, c in zip(t_row, center[0].tolist())])
                ]
                p = _log_softmax([a / tau_s for a in s_row])
                per_image.append(-sum(qk * pk for qk, pk in zip(q, p)))
            total += sum(per_image) / batch
            terms += 1
    expected = total / terms
    assert terms == 4
    got = dino_loss(student, teacher, center, tau_s, tau_t, n_crops=3)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # in float64 (a float32 centre, as DINOLoss keeps it), the same loss, kept in float64
    double = dino_loss(student.double(), teacher.double(), center, tau_s, tau_t, n_crops=3)
    assert double.dtype == torch.float64 and double.item() == pytest.approx(expected, rel=1e-12)

    loss = DINOLoss(
        3,
        3,
        warmup_teacher_temp=0.04,
        teacher_temp=0.07,
        warmup_teacher_temp_epochs=5,
        n_epochs=10,
        student_temp=tau_s,
    )
    loss.center.copy_(center)
    assert loss(student, teacher, epoch=0).item() == pytest.approx(expected, rel=1e-5)


def test_center_is_an_ema_of_the_teacher_batch_mean():
    loss = DINOLoss(4, 3, center_momentum=0.9)
    assert torch.equal(loss.center, torch.zeros(1, 4))
    t1, t2 = torch.randn(6, 4), torch.randn(6, 4)
    student = torch.randn(9, 4, requires_grad=True)
    loss(student, t1, 0)
    assert torch.allclose(loss.center, 0.1 * t1.mean(0, keepdim=True))
    loss(student, t2, 0)
    expected = 0.9 * 0.1 * t1.mean(0, keepdim=True) + 0.1 * t2.mean(0, keepdim=True)
    assert torch.allclose(loss.center, expected, atol=1e-6)
    assert not loss.center.requires_grad


def test_teacher_temperature_warms_up_linearly_then_stays():
    loss = DINOLoss(
        4, 3, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30, n_epochs=300
    )
    assert loss.teacher_temperature(0) == pytest.approx(0.04)
    assert loss.teacher_temperature(29) == pytest.approx(0.07)
    assert 0.04 < loss.teacher_temperature(15) < 0.07
    assert loss.teacher_temperature(299) == pytest.approx(0.07)
    assert loss.teacher_temperature(10_000) == pytest.approx(0.07)
    short = DINOLoss(4, 3, warmup_teacher_temp_epochs=30, n_epochs=3)  # warm-up cut short
    assert short.teacher_temperature(2) < 0.07


def test_cosine_schedule_warmup_and_end_points():
    s = cosine_schedule(1e-4, 1e-6, epochs=10, steps_per_epoch=5, warmup_epochs=2)
    assert len(s) == 50
    assert s[0] == 0 and s[9] == pytest.approx(1e-4)
    assert s[10] == pytest.approx(1e-4) and 1e-6 < s[-1] < 1.2e-6
    assert np.all(np.diff(s[10:]) <= 0)
    m = cosine_schedule(0.996, 1.0, epochs=3, steps_per_epoch=4)
    assert m[0] == pytest.approx(0.996) and np.all(np.diff(m) >= 0) and m[-1] < 1
    assert len(cosine_schedule(1.0, 0.0, epochs=2, steps_per_epoch=3, warmup_epochs=5)) == 6


def test_lr_warmup_from_zero_or_from_the_first_step():
    options = dict(epochs=10, lr=1e-4, min_lr=1e-6, warmup_epochs=2)
    zero = lr_schedule(DinoSettings(**options, lr_warmup="zero"), steps_per_epoch=5)
    assert np.array_equal(zero, cosine_schedule(1e-4, 1e-6, 10, 5, warmup_epochs=2))
    first = lr_schedule(DinoSettings(**options, lr_warmup="first-step"), steps_per_epoch=5)
    # As the CODA authors' code: the first step at lr / W, then W more steps lr / W higher each
    # (W = 10 warm-up steps), the last one step past lr; the cosine falls from there.
    assert len(first) == 50
    assert np.allclose(first[:11], 1e-4 * np.arange(1, 12) / 10)
    assert first[10] > 1e-4 and first[11] < first[10]
    assert np.all(np.diff(first[10:]) < 0) and 1e-6 < first[-1] < 1.5e-6
    short = DinoSettings(**{**options, "epochs": 1}, lr_warmup="first-step")
    assert len(lr_schedule(short, steps_per_epoch=5)) == 5  # a warm-up longer than the run is cut
    with pytest.raises(ValueError, match="lr_warmup"):
        lr_schedule(DinoSettings(lr_warmup="linear"), steps_per_epoch=5)


# ------------------------------------------------------------------------------------ head


def test_head_shapes_and_frozen_unit_norm():
    head = DINOHead(12, hidden_dim=20, bottleneck_dim=8, out_dim=30, n_layers=3)
    x = torch.randn(5, 12)
    assert head(x).shape == (5, 30)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in head.modules())
    assert not head.weight_norm.requires_grad
    optimiser = torch.optim.AdamW(parameter_groups([head]), lr=0.1)
    for _ in range(3):
        optimiser.zero_grad()
        head(x).square().sum().backward()
        optimiser.step()
    assert torch.equal(head.weight_norm, torch.ones(30, 1))
    rows = head.last_layer.weight.norm(dim=1)
    assert torch.allclose(rows, torch.ones(30), atol=1e-5)
    assert head.last_layer.bias is None
    assert DINOHead(12, 20, 8, 30, n_layers=1)(x).shape == (5, 30)


def test_param_groups_exclude_biases_and_norms_from_weight_decay():
    vit = tiny_vit()
    decay, no_decay = parameter_groups([vit])
    names = {id(p): n for n, p in vit.named_parameters()}
    assert no_decay["weight_decay"] == 0
    assert all(names[id(p)].endswith(".bias") or p.ndim == 1 for p in no_decay["params"])
    assert any(names[id(p)] == "norm.weight" for p in no_decay["params"])
    assert all(p.ndim > 1 for p in decay["params"])


def test_clip_gradients_per_parameter():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    a.grad, b.grad = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.3, 0.4])
    clip_gradients([a, b], 1.0)
    assert a.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(b.grad, torch.tensor([0.3, 0.4]))


def test_multicrop_wrapper_runs_the_backbone_once_per_resolution():
    vit, head = tiny_vit(), DINOHead(32, 16, 8, 10)
    calls = []
    wrapper = MultiCropWrapper(vit, head, lambda b, x: calls.append(x.shape) or b.forward_features(x)[:, 0])
    views = [torch.randn(2, 3, 16, 16)] * 2 + [torch.randn(2, 3, 8, 8)] * 3
    out = wrapper(views)
    assert out.shape == (10, 10)
    assert calls == [(4, 3, 16, 16), (6, 3, 8, 8)]
    # the default feature function is the class token after the final norm
    default = MultiCropWrapper(vit, head)(views[:1])
    assert torch.allclose(default, head(vit.forward_features(views[0])[:, 0]))


# ------------------------------------------------------------------------------------ trainer


def _views(settings, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return hcibench.train.augment.multi_crop(
        torch.rand(batch, 3, 16, 16), settings.global_size, settings.local_size, settings.n_local, g
    )


@pytest.mark.parametrize("ahead", [False, True])
def test_teacher_gets_no_gradient_and_moves_only_by_ema(ahead):
    settings = tiny_settings(freeze_last_layer_epochs=0, momentum_ahead=ahead)
    student, teacher, s_head, t_head = models(settings)
    trainer = DinoTrainer(student, teacher, s_head, t_head, settings, steps_per_epoch=3)
    teacher_params = list(teacher.parameters()) + list(t_head.parameters())
    assert not any(p.requires_grad for p in teacher_params)
    before = [p.detach().clone() for p in teacher_params]
    trainer.step(_views(settings), epoch=0, step=0)
    assert all(p.grad is None for p in teacher_params)
    # The momentum of this step's schedule value (DINO), or of the next (the CODA authors' code).
    m = trainer.momentum_schedule[1 if ahead else 0]
    assert trainer.momentum_schedule[1] != trainer.momentum_schedule[0]
    student_params = list(student.parameters()) + list(s_head.parameters())
    for old, new, s in zip(before, teacher_params, student_params):
        assert torch.allclose(new, m * old + (1 - m) * s.detach(), atol=1e-6)
    assert any(not torch.equal(old, new) for old, new in zip(before, teacher_params))


def test_last_layer_is_frozen_during_the_first_epoch_only():
    settings = tiny_settings(freeze_last_layer_epochs=1, lr=1e-2, warmup_epochs=0)
    student, teacher, s_head, t_head = models(settings)
    trainer = DinoTrainer(student, teacher, s_head, t_head, settings, steps_per_epoch=2)
    direction = s_head.last_layer.parametrizations.weight.original1
    first = direction.detach().clone()
    mlp_before = s_head.mlp[0].weight.detach().clone()
    trainer.step(_views(settings), epoch=0, step=0)
    trainer.step(_views(settings, seed=1), epoch=0, step=1)
    assert torch.equal(direction, first)
    assert not torch.equal(s_head.mlp[0].weight, mlp_before)
    trainer.step(_views(settings, seed=2), epoch=1, step=2)
    assert not torch.equal(direction, first)
    assert torch.equal(s_head.weight_norm, torch.ones_like(s_head.weight_norm))


def test_schedules_drive_the_optimiser():
    settings = tiny_settings(epochs=4, warmup_epochs=1, lr=1e-3, min_lr=1e-5)
    student, teacher, s_head, t_head = models(settings)
    trainer = DinoTrainer(student, teacher, s_head, t_head, settings, steps_per_epoch=2)
    trainer.step(_views(settings), epoch=1, step=3)
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["lr"] == pytest.approx(trainer.lr_schedule[3])
    assert decay["weight_decay"] == pytest.approx(trainer.wd_schedule[3])
    assert no_decay["weight_decay"] == 0
    assert 1e-5 < trainer.wd_schedule[3] < 1e-4


def test_train_dino_end_to_end_with_cross_batch_pairs():
    settings = tiny_settings(epochs=3, cross_batch=True, pair_key="batch")
    student, teacher, s_head, t_head = models(settings)
    data = domain(n=24)
    logged = []

    class Recorder(Progress):
        def log(self, message):
            logged.append(message)

    teacher_before = [p.detach().clone() for p in teacher.parameters()]
    stats = train_dino(
        student, teacher, s_head, t_head, data, settings, Recorder(), torch.Generator().manual_seed(0)
    )
    assert stats["steps"] == 3 * 3 and stats["images"] == 72 and stats["epochs"] == 3
    assert math.isfinite(stats["loss"]) and len(stats["epoch_losses"]) == 3
    assert stats["cross_batch"] and stats["pair_key"] == "batch"
    pairs = stats["pairs"]
    n_single = int((data.meta["compound"] == "c0").sum())
    assert pairs["fallback_plate"] + pairs["fallback_self"] == n_single > 0
    assert pairs["cross"] == 24 - n_single
    assert logged and "another plate" in logged[0]
    assert stats["loss_state"]["center"].shape == (1, settings.head_out_dim)
    assert stats["loss_state"]["center"].abs().sum() > 0
    assert any(not torch.equal(a, b) for a, b in zip(teacher_before, teacher.parameters()))
    assert all(p.grad is None for p in teacher.parameters())
    assert student.training and not any(p.requires_grad for p in teacher.parameters())


def test_train_dino_on_a_domain_smaller_than_the_batch():
    settings = tiny_settings(epochs=2, batch_size=64)
    student, teacher, s_head, t_head = models(settings)
    stats = train_dino(
        student, teacher, s_head, t_head, domain(n=5), settings, Progress(), torch.Generator().manual_seed(1)
    )
    assert stats["batch_size"] == 5 and stats["steps"] == 2 and stats["pairs"] is None
    assert math.isfinite(stats["loss"])


def test_train_dino_restarts_center_and_is_reproducible():
    settings = tiny_settings(epochs=1)

    def run():
        student, teacher, s_head, t_head = models(settings, seed=3)
        stats = train_dino(
            student,
            teacher,
            s_head,
            t_head,
            domain(n=16),
            settings,
            Progress(),
            torch.Generator().manual_seed(2),
        )
        return stats, teacher

    (a, ta), (b, tb) = run(), run()
    assert a["epoch_losses"] == b["epoch_losses"]
    assert all(torch.equal(x, y) for x, y in zip(ta.parameters(), tb.parameters()))


def test_views_lying_back_to_back_are_joined_without_a_copy():
    from hcibench.train.dino import _join

    stacked = torch.randn(3, 2, 3, 4, 4)
    views = list(stacked.unbind(0))
    joined = _join(views)
    assert torch.equal(joined, torch.cat(views))
    assert joined.data_ptr() == stacked.data_ptr()
    assert torch.equal(_join(views[1:]), torch.cat(views[1:]))
    shuffled = [views[1], views[0]]
    assert torch.equal(_join(shuffled), torch.cat(shuffled))
    separate = [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)]
    assert torch.equal(_join(separate), torch.cat(separate))


def test_target_spread_tells_uniform_from_informative_and_single_prototype_targets():
    center = torch.zeros(1, 8)
    uniform = target_spread(torch.full((4, 8), 0.3), center, teacher_temp=0.04)
    assert uniform["entropy"] == pytest.approx(1.0) and uniform["usage"] == pytest.approx(1.0)
    distinct = target_spread(10 * torch.eye(8)[:4], center, teacher_temp=0.04)
    assert distinct["entropy"] < 0.01 and distinct["usage"] == pytest.approx(2 / 3, abs=0.01)  # 4 of 8
    same = target_spread(10 * torch.eye(8)[[2, 2, 2, 2]], center, teacher_temp=0.04)
    assert same["entropy"] < 0.01 and same["usage"] < 0.01


def test_collapse_epoch_is_where_uniform_targets_start_for_good():
    assert collapse_epoch([0.5, 0.97, 0.99]) == 2
    assert collapse_epoch([0.97, 0.5, 0.6]) is None
    assert collapse_epoch([0.99, 0.5, 0.96, 0.98]) == 3
    assert collapse_epoch([]) is None


def test_train_dino_reports_and_logs_a_collapse():
    logged = []

    class Recorder(Progress):
        def log(self, message):
            logged.append(message)

    # A teacher temperature this high makes every target uniform: the collapsed state.
    collapsing = tiny_settings(epochs=2, teacher_temp=100.0, warmup_teacher_temp=100.0)
    stats = train_dino(
        *models(collapsing),
        domain(n=16),
        collapsing,
        Recorder(),
        torch.Generator().manual_seed(0),
        description="step 1 DINO S3",
    )
    assert stats["collapsed_from_epoch"] == 1 and len(stats["target_entropy"]) == 2
    assert any("step 1 DINO S3 collapsed from epoch 1" in line for line in logged)

    healthy = tiny_settings(epochs=2)
    stats = train_dino(*models(healthy), domain(n=16), healthy, Progress(), torch.Generator().manual_seed(0))
    assert stats["collapsed_from_epoch"] is None and max(stats["target_entropy"]) < 0.95


def test_head_batch_norm_normalises_with_each_batchs_statistics_in_both_heads():
    settings = tiny_settings(epochs=2, head_batch_norm=True)
    student, teacher, s_head, t_head = models(settings)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in s_head.modules()) == 2
    assert not any(isinstance(m, nn.BatchNorm1d) for m in tiny_settings().build_head(32).modules())
    trainer = DinoTrainer(student, teacher, s_head, t_head, settings, steps_per_epoch=2)
    trainer.step(_views(settings), epoch=0, step=0)
    # Running statistics are buffers, which the EMA does not carry over: the teacher's head
    # must use the batch's statistics, not its never-updated running ones.
    assert t_head.training and not teacher.training
    stats = train_dino(
        student, teacher, s_head, t_head, domain(n=16), settings, Progress(), torch.Generator().manual_seed(0)
    )
    assert math.isfinite(stats["loss"])


def stripes(n: int, size: int = 32, seed: int = 0):
    """Eight kinds of stripe images (four periods × two orientations, each kind brightest in
    one channel) with random phases: a domain DINO has no excuse not to learn."""
    generator = torch.Generator().manual_seed(seed)
    kinds = torch.arange(n) % 8
    rows, cols = torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij")
    coordinate = torch.where((kinds < 4).view(n, 1, 1), cols, rows)
    period = (3 + (kinds % 4) * 2).float().view(n, 1, 1)
    phase = 6 * torch.rand(n, 1, 1, generator=generator)
    pattern = torch.sin(2 * math.pi / period * coordinate + phase)
    gain = torch.full((n, 3), 0.2)
    gain[torch.arange(n), kinds % 3] += 1
    images = (0.5 + 0.4 * pattern[:, None] * gain[:, :, None, None]).clamp(0, 1)
    meta = pd.DataFrame(
        {
            "source": "X",
            "batch": "b0",
            "plate": "p0",
            "well": "A01",
            "compound": [f"k{k}" for k in kinds.tolist()],
            "label": [str(k) for k in kinds.tolist()],
        }
    )
    return hcibench.Domain("X", meta, hcibench.TensorImages(images), [str(k) for k in range(8)])


def test_quick_preset_dino_keeps_informative_targets_where_the_reference_head_collapses():
    from hcibench_plugins.methods.dual import settings as dual_settings
    from hcibench_plugins.methods.dual import steps as dual

    config = dual_settings.config("quick")
    patterns = stripes(384)
    entropy = {}
    for name, changes in [
        ("quick", {}),
        (
            "reference head",
            dict(head_batch_norm=False, warmup_teacher_temp=0.04, teacher_temp=0.07, head_out_dim=256),
        ),
    ]:
        settings = dual.dino_settings(config["dino"], epochs=5, **changes)
        torch.manual_seed(0)
        stats = train_dino(
            *dual.build_fe_pair(config, 3, settings),
            patterns,
            settings,
            Progress(),
            torch.Generator().manual_seed(0),
        )
        entropy[name] = stats["target_entropy"]
    assert max(entropy["quick"][1:]) < 0.9, entropy
    assert entropy["reference head"][-1] > 0.95, entropy


def test_a_dino_stage_killed_mid_training_goes_on_from_its_saved_progress(tmp_path, monkeypatch):
    from hcibench.run.stages import StageCache

    monkeypatch.setenv("HCIBENCH_CHECKPOINT_SECONDS", "0")  # save after every epoch
    settings = tiny_settings(epochs=4, cross_batch=True)

    def compute(kill_after=None):
        student, teacher, student_head, teacher_head = models(settings)

        def on_epoch(epoch):
            if epoch == kill_after:
                raise KeyboardInterrupt  # as a kill would, before this epoch's save

        stats = train_dino(
            student,
            teacher,
            student_head,
            teacher_head,
            domain(),
            settings,
            generator=torch.Generator().manual_seed(3),
            on_epoch=on_epoch,
        )
        return {"teacher": teacher.state_dict(), "losses": stats["epoch_losses"]}

    reference = StageCache(tmp_path / "whole").get("fe", {"k": 1}, compute)
    with pytest.raises(KeyboardInterrupt):
        StageCache(tmp_path / "killed").get("fe", {"k": 1}, lambda: compute(kill_after=3))
    partial = list((tmp_path / "killed" / "stages").glob(".*.partial.pt"))
    assert len(partial) == 1  # the progress of epochs 1 and 2
    resumed = StageCache(tmp_path / "killed").get("fe", {"k": 1}, compute)
    assert resumed["losses"] == reference["losses"]
    for name, value in reference["teacher"].items():
        assert torch.equal(resumed["teacher"][name], value), name
    assert not partial[0].exists()  # gone once the stage's file is written
