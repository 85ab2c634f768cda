"""A starting point pretrained on a corpus disjoint from the run: synthetic-labs, `hcibench
pretrain`, and `--pretrained` with the file it writes."""

import warnings

import pytest
import torch
from conftest import run_in_process

from hcibench.train.modality import backbone_settings, create_backbone
from hcibench_plugins.datasets import synthetic_render as render
from hcibench_plugins.datasets.synthetic import SyntheticDataset, SyntheticLabs


def test_synthetic_labs_are_their_own_labs_and_compounds():
    labs = SyntheticLabs(labs=3, scale=0.34)  # one site per well: fewer images, same labs
    assert labs.sources() == ["L1", "L2", "L3"]
    profiles = [labs._profile(source) for source in labs.sources()]
    assert len({p.zoom for p in profiles}) == 3  # each lab has its own microscope
    assert not set(profiles) & set(render.SOURCE_PROFILES.values())
    named = SyntheticDataset(scale=0.34)
    assert not set(labs.domain("L1").meta["plate"]) & set(named.domain("S8").meta["plate"])
    # Other compounds (seed 1) of the same mechanisms as the synthetic dataset's (seed 0).
    assert labs.classes() == named.classes()
    assert not torch.equal(labs._compound_table()[1], named._compound_table()[1])
    again = SyntheticLabs(labs=3)._profile("L2")
    assert again == profiles[1]  # drawn from the seed: the same every time


def test_pretrain_writes_weights_that_a_run_starts_from(tmp_path, capsys):
    out = tmp_path / "fe.pt"
    args = ["pretrain", "--dataset", "synthetic-labs", "--sources", "L1", "--out", str(out)]
    args += ["--set", "dataset.labs=1", "--set", "dataset.scale=0.34", "--set", "dino.epochs=1"]
    status, _, err = run_in_process(capsys, *args)
    assert status == 0, err
    saved = torch.load(out, weights_only=False)
    assert saved["corpus"]["sources"] == ["L1"] and saved["corpus"]["images"] == 180
    assert not any(p.name.endswith(".progress") for p in tmp_path.iterdir())  # no debris
    config = {"backbone": {**saved["backbone"], "pretrained": str(out)}}
    fe = create_backbone(config, 3)
    assert all(torch.equal(fe.state_dict()[k], v) for k, v in saved["teacher"].items())
    # A stage key names the file by its content, so the same file elsewhere keeps the stages.
    copy = tmp_path / "copy.pt"
    copy.write_bytes(out.read_bytes())
    key = backbone_settings(config)["pretrained"]
    assert (
        key == backbone_settings({"backbone": {**config["backbone"], "pretrained": str(copy)}})["pretrained"]
    )

    status, _, err = run_in_process(capsys, *args)
    assert status == 2 and err.count("\n") == 1 and "exists" in err


def test_the_quick_preset_starts_synthetic_backbones_from_the_shipped_fe(tmp_path):
    from hcibench.run.runner import Grid, RunSpec, prepare
    from hcibench_plugins.datasets.synthetic import PRETRAINED_QUICK

    def config(preset="quick", dataset="synthetic", sources=("S3",)):
        grid = Grid(["supervised"], list(sources), list(sources), [0])
        return prepare(RunSpec(grid, tmp_path, dataset=dataset, preset=preset)).config

    quick = config()
    assert quick["backbone"]["pretrained"] == str(PRETRAINED_QUICK)
    saved = torch.load(PRETRAINED_QUICK, weights_only=True)
    fe = create_backbone(quick, 3)
    assert all(torch.equal(fe.state_dict()[k], v) for k, v in saved["teacher"].items())
    # Not in the paper preset (another backbone), not for the corpus it was learned on.
    assert not config(preset="paper")["backbone"].get("pretrained")
    assert not config(dataset="synthetic-labs", sources=("L1",))["backbone"].get("pretrained")


def test_weights_for_other_channels_load_with_a_warning_naming_what_is_left_random(tmp_path):
    from hcibench.train.backbones import create_vit

    settings = {"model": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 4}
    settings.update(embed_dim=32, depth=1, num_heads=2)
    path = tmp_path / "fe.pt"
    trained = create_vit(settings, in_chans=3, num_classes=4)
    torch.save(trained.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # another number of classes alone: no warning
        same = create_vit({**settings, "pretrained": str(path)}, in_chans=3, num_classes=6)
    assert torch.equal(same.patch_embed.proj.weight, trained.patch_embed.proj.weight)
    with pytest.warns(UserWarning, match=r"patch_embed\.proj\.weight is \[32, 3, 4, 4\].*\[32, 5, 4, 4\]"):
        other = create_vit({**settings, "pretrained": str(path)}, in_chans=5)
    assert torch.equal(other.blocks[0].attn.qkv.weight, trained.blocks[0].attn.qkv.weight)
