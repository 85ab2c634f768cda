"""The synthetic dataset: layout, determinism, image format, domain shift, folder round trip."""

from __future__ import annotations

import click
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import hcibench
from hcibench_plugins.datasets import synthetic
from hcibench_plugins.datasets.files.folder_format import read_folder, write_folder
from hcibench_plugins.datasets.synthetic import SyntheticDataset, SyntheticLabs

SMALL = {"scale": 0.34}  # one site per well: 60 images per plate


@pytest.fixture(scope="module")
def small():
    return SyntheticDataset(seed=0, **SMALL)


@pytest.fixture(scope="module")
def full():
    return SyntheticDataset(seed=0)


def standardise(x: torch.Tensor) -> torch.Tensor:
    """What every method does to its inputs: per image, per channel."""
    return (x - x.mean((2, 3), keepdim=True)) / (x.std((2, 3), keepdim=True) + 1e-6)


def spectrum_features(x: torch.Tensor) -> torch.Tensor:
    """Per channel: radially binned power spectrum of the standardised image, and intensity
    quantiles. Invariant to orientation, position, gain and offset."""
    z = standardise(x)
    power = torch.fft.fft2(z).abs().pow(2).log1p()
    size = x.shape[-1]
    freq = torch.fft.fftfreq(size)
    radius = torch.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2)
    bins = torch.clamp((radius / radius.max() * 8).long(), max=7)
    rings = torch.stack([power[..., bins == b].mean(-1) for b in range(8)], -1)
    quantiles = torch.quantile(z.flatten(2), torch.tensor([0.1, 0.5, 0.9, 0.99]), dim=2)
    return torch.cat([rings.flatten(1), quantiles.permute(1, 2, 0).flatten(1)], 1)


def test_sources_and_classes(small):
    assert small.sources() == ["S3", "S5", "S8", "S11", "S7", "S10"]
    assert len(small.classes()) == len(set(small.classes())) == 10
    assert small.name == "synthetic" and small.description


def test_same_seed_same_images_other_seed_other_images():
    first = SyntheticDataset(seed=3, **SMALL).domain("S8")
    again = SyntheticDataset(seed=3, **SMALL).domain("S8")
    other = SyntheticDataset(seed=4, **SMALL).domain("S8")
    assert torch.equal(first.images.tensor, again.images.tensor)
    pd.testing.assert_frame_equal(first.meta, again.meta)
    assert not torch.equal(first.images.tensor, other.images.tensor)


def test_generation_does_not_depend_on_source_order():
    forward = SyntheticDataset(seed=1, **SMALL)
    backward = SyntheticDataset(seed=1, **SMALL)
    a = [forward.domain(s).images.tensor for s in ("S8", "S10")]
    b = [backward.domain(s).images.tensor for s in ("S10", "S8")][::-1]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_domains_are_cached(small):
    assert small.domain("S7") is small.domain("S7")


def test_images_are_three_channel_16_bit_levels(small):
    x = small.domain("S11").images.tensor
    assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
    assert x.min() >= 0 and x.max() <= 1
    levels = x * 65535
    assert torch.equal(levels, torch.round(levels))
    assert (x.std((2, 3)) > 0.01).all()  # no blank channel


def test_image_size_option_renders_at_that_size():
    x = SyntheticDataset(image_size=48, scale=0.34).domain("S8").images[0]
    assert x.shape == (3, 48, 48)


def test_layout_every_compound_on_every_plate_in_several_batches(small):
    expected = {"S3": (4, 6), "S5": (6, 6), "S8": (3, 3), "S11": (2, 4), "S7": (3, 3), "S10": (3, 3)}
    compounds = None
    for source in small.sources():
        meta = small.domain(source).meta
        assert list(meta.columns) == [*hcibench.META_COLUMNS, "site"]
        assert (meta["source"] == source).all()
        assert (meta["batch"].nunique(), meta["plate"].nunique()) == expected[source]
        assert meta.groupby("plate")["batch"].nunique().max() == 1  # a plate is in one batch
        per_plate = meta.groupby("compound")["plate"].nunique()
        assert (per_plate == meta["plate"].nunique()).all()
        assert (meta.groupby("compound")["batch"].nunique() >= 2).all()
        assert (meta.groupby("compound")["label"].nunique() == 1).all()
        assert set(meta["label"]) == set(small.classes())
        pairs = set(zip(meta["compound"], meta["label"]))
        compounds = compounds or pairs
        assert pairs == compounds  # the same compounds and MoAs everywhere


def test_scale_multiplies_images_per_plate():
    per_plate = [len(SyntheticDataset(scale=s).domain("S8").meta) / 3 for s in (0.34, 1.0, 2.0)]
    assert per_plate == [60, 180, 360]


def test_unknown_source_lists_the_available_ones(small):
    with pytest.raises(hcibench.UsageError) as error:
        small.domain("S4")
    for source in small.sources():
        assert source in str(error.value)


def test_unknown_option_is_named():
    with pytest.raises(hcibench.UsageError, match="colour"):
        SyntheticDataset(colour="red")


def test_bad_option_values_and_a_data_path_are_usage_errors():
    with pytest.raises(hcibench.UsageError, match="image_size"):
        SyntheticDataset(image_size="large")
    with pytest.raises(hcibench.UsageError, match="scale"):
        SyntheticDataset(scale=0)
    with pytest.raises(hcibench.UsageError, match="data path"):
        SyntheticDataset(data="/some/folder")


def test_default_settings_construct_the_dataset():
    for preset in ("quick", "paper"):
        settings = SyntheticDataset.default_settings(preset)
        assert SyntheticDataset(**settings).image_size == settings["image_size"]


def test_sources_differ_after_standardisation(full):
    """Each source's look survives per-image standardisation: its images are recognised from
    orientation-, gain- and offset-invariant statistics alone. S5 and S10 (the same confocal
    model) are the likeliest to be taken for one another."""
    features = {s: spectrum_features(full.domain(s).images.tensor) for s in full.sources()}
    centroids = torch.stack([f.mean(0) for f in features.values()])
    scale = torch.cat(list(features.values())).std(0) + 1e-6
    recognised = {}
    for expected, (source, f) in enumerate(features.items()):
        nearest = torch.cdist(f / scale, centroids / scale).argmin(1)
        recognised[source] = (nearest == expected).float().mean().item()
    assert min(recognised.values()) > 0.6, recognised
    assert min(recognised[s] for s in ("S3", "S8", "S11")) > 0.9, recognised


def ridge_classifier(x: torch.Tensor, y: torch.Tensor, classes: int, penalty: float = 1.0):
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = torch.cat([(x - mean) / scale, torch.ones(len(x), 1)], 1)
    targets = torch.nn.functional.one_hot(y, classes).float()
    weights = torch.linalg.solve(z.T @ z + penalty * torch.eye(z.shape[1]), z.T @ targets)
    return lambda u: (torch.cat([(u - mean) / scale, torch.ones(len(u), 1)], 1) @ weights).argmax(1)


def test_signal_is_learnable_in_domain_and_shifts_across_sources(full):
    """A linear model on invariant statistics does far better on a held-out plate of its own
    source than on the other sources (a cheap stand-in for the ViT check)."""
    s3 = full.domain("S3")
    plates = sorted(s3.meta["plate"].unique())
    train = s3.subset(s3.meta["plate"] != plates[-1])
    test = s3.subset(s3.meta["plate"] == plates[-1])
    predict = ridge_classifier(spectrum_features(train.stack()), train.labels, 10)

    def accuracy(domain):
        return (predict(spectrum_features(domain.stack())) == domain.labels).float().mean()

    in_domain = accuracy(test)
    cross = torch.stack([accuracy(full.domain(s)) for s in full.sources() if s != "S3"])
    assert in_domain > 0.3
    assert cross.mean() < 0.6 * in_domain


def test_folder_round_trip_is_exact(tmp_path, small):
    out = tmp_path / "synth"
    index = write_folder(small, out, ["S8", "S11"])
    assert list(index.columns) == ["path", "source", "batch", "plate", "well", "compound", "label", "site"]
    assert index["path"][0].startswith("images/S8/S8-P01/")
    meta, images = read_folder(out)
    expected = pd.concat([small.domain(s).meta for s in ("S8", "S11")], ignore_index=True)
    pd.testing.assert_frame_equal(meta, expected)
    tensors = torch.cat([small.domain(s).images.tensor for s in ("S8", "S11")])
    assert len(images) == len(tensors)
    assert all(torch.equal(images[i], tensors[i]) for i in range(len(images)))
    assert images[0].dtype == torch.float32
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_folder_refuses_a_non_empty_target_and_unknown_sources(tmp_path, small):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("x")
    with pytest.raises(hcibench.UsageError, match="not empty"):
        write_folder(small, tmp_path / "taken", ["S8"])
    with pytest.raises(hcibench.UsageError, match="S4"):
        write_folder(small, tmp_path / "new", ["S4"])
    with pytest.raises(hcibench.UsageError, match="index.csv"):
        read_folder(tmp_path / "taken")


def test_hooks_register_the_dataset_and_the_synth_command(tmp_path):
    registered = []
    synthetic.register_datasets(registered.append)
    assert registered == [SyntheticDataset, SyntheticLabs]

    data = click.Group("data")  # the core's group that dataset commands join
    root = click.Group("hcibench", commands=[data])
    synthetic.register_commands(root)
    assert "synth" in data.commands

    out = tmp_path / "cli"
    result = CliRunner().invoke(
        root,
        [
            "data",
            "synth",
            "--out",
            str(out),
            "--sources",
            "S8",
            "--scale",
            "0.34",
            "--seed",
            "2",
            "--image-size",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "180 images" in result.output and len(result.output.strip().splitlines()) == 1
    meta, images = read_folder(out)
    assert len(meta) == 180 and images[0].shape == (3, 16, 16)


def test_artifacts_option_adds_batch_specific_artifacts_and_nothing_else():
    clean = SyntheticDataset(seed=0, **SMALL).domain("S5")
    dirty = SyntheticDataset(seed=0, artifacts=1.0, **SMALL).domain("S5")
    pd.testing.assert_frame_equal(clean.meta, dirty.meta)
    difference = (dirty.images.tensor - clean.images.tensor).abs().mean((1, 2, 3))
    assert (difference > 0).float().mean() > 0.5  # most fields carry some debris
    # The default is the clean dataset, image for image.
    assert torch.equal(SyntheticDataset(seed=0, **SMALL).domain("S5").images.tensor, clean.images.tensor)


def test_each_batch_draws_its_own_artifact_look_from_its_sources_kinds():
    from hcibench_plugins.datasets import synthetic_artifacts as artifacts

    for source, kinds in artifacts.SOURCE_ARTIFACTS.items():
        looks = artifacts.batch_artifacts(kinds, 6, synthetic.generator(0, source, "artifacts"))
        assert set(looks["kind"].tolist()) <= set(kinds)
        assert looks["angle"].unique().numel() == 6  # no two batches look alike
        assert torch.allclose(looks["channels"].sum(1), torch.ones(6))
    looks = artifacts.batch_artifacts((artifacts.BANDING,), 2, torch.Generator().manual_seed(0))
    batch = torch.tensor([0, 0, 1, 1])
    pattern = artifacts.render_artifacts(looks, batch, 32, 1.0, torch.Generator().manual_seed(1))
    assert pattern.shape == (4, 3, 32, 32) and pattern.min() >= 0
    # Channel shares follow the batch's mix, whatever the field.
    shares = pattern.sum((2, 3)) / pattern.sum((1, 2, 3))[:, None]
    assert torch.allclose(shares, looks["channels"][batch], atol=1e-5)


def test_culture_zero_removes_the_labs_morphology_shift():
    from hcibench_plugins.datasets import synthetic_render as render

    morph = torch.tensor([render.MOA_TABLE["EGFR inhibitor"]])
    profile = render.SOURCE_PROFILES["S5"]
    assert torch.equal(render._cultured(morph, profile, 0.0), morph)
    shifted = render._cultured(morph, profile, 1.0)
    radius = render.MORPHOLOGY.index("cell_radius")
    assert shifted[0, radius] == morph[0, radius] * profile.spread  # exactly: culture 1 is the default
    with pytest.raises(hcibench.UsageError, match="culture"):
        SyntheticDataset(culture="none")
    with pytest.raises(hcibench.UsageError, match="'artifacts' is a strength >= 0"):
        SyntheticDataset(artifacts=-1)
