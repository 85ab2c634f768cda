"""Presets: the paper preset builds the paper's models and takes a training step here."""

import torch
import torch.nn.functional as F

from hcibench.run import presets
from hcibench.train import augment
from hcibench.train.backbones import create_vit
from hcibench.train.classifier import prepare_images
from hcibench.train.dino import DinoTrainer
from hcibench.train.loop import parameter_groups
from hcibench_plugins.methods.dual import settings as dual_settings
from hcibench_plugins.methods.dual.steps import build_fe_pair, dino_settings


def test_paper_preset_takes_one_supervised_step_with_deit_small():
    config = presets.build("paper")
    model = create_vit(config["backbone"], num_classes=4)
    assert model.embed_dim == 384 and len(model.blocks) == 12  # DeiT-S/16
    optimizer = torch.optim.AdamW(parameter_groups([model], 0.05), lr=1e-4)
    images = torch.rand(2, 3, 256, 256)
    x = prepare_images(images, config["input_size"], training=True)
    assert x.shape == (2, 3, 224, 224)
    before = model.head.weight.clone()
    loss = F.cross_entropy(model(x), torch.tensor([0, 3]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.head.weight)


def test_paper_preset_takes_one_dino_step_with_multi_crop():
    config = dual_settings.config("paper")
    settings = dino_settings(config["dino"])
    assert (settings.global_size, settings.local_size, settings.n_local) == (224, 96, 6)
    student, teacher, student_head, teacher_head = build_fe_pair(config, 3, settings)
    trainer = DinoTrainer(student, teacher, student_head, teacher_head, settings, steps_per_epoch=1)
    views = augment.multi_crop(
        torch.rand(2, 3, 256, 256),
        settings.global_size,
        settings.local_size,
        settings.n_local,
        torch.Generator(),
    )
    loss = trainer.step(views, epoch=0, step=0)
    assert loss > 0


def test_a_whole_number_for_a_number_setting_describes_the_same_run():
    from hcibench import plugins
    from hcibench.run.runner import Grid, RunSpec, prepare

    def digest(*overrides):
        """The run's shared digest and dual-dino's own (its sections, dino among them)."""
        spec = RunSpec(Grid(["dual-dino"], ["S3"], ["S3"], [0]), out="unused", overrides=list(overrides))
        run = prepare(spec)
        return run.settings_digest, run.method_digests["dual-dino"]

    plugins.reset()
    assert digest("dataset.culture=1") == digest("dataset.culture=1.0") == digest()
    assert digest("dino.lr=1") == digest("dino.lr=1.0") != digest()


def test_the_paper_preset_takes_the_authors_augmentation_and_step_2_recipe():
    paper, quick = dual_settings.config("paper"), dual_settings.config("quick")
    reference = {
        "jitter_p": 0.5,
        "shift_first": True,
        "gamma_clip": 0.005,
        "crop_region": 448,
        "lr_warmup": "first-step",
        "momentum_ahead": True,
    }
    assert {k: paper["dino"][k] for k in reference} == reference
    assert {k: quick["dino"][k] for k in reference} == {
        "jitter_p": 1.0,
        "shift_first": False,
        "gamma_clip": 0.0,
        "crop_region": 0,
        "lr_warmup": "zero",
        "momentum_ahead": False,
    }
    step_2 = {"weight_decay": 1e-5, "decay": 1.0, "clip_grad": 1.0, "jitter": True, "cache_tokens": False}
    assert {k: paper["task"][k] for k in step_2} == step_2
