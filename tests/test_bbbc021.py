"""The shipped BBBC021 profiles: offline loading, the NSC/NSCB reference checked by an independent
computation, profile models, and a tiny end-to-end run through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hcibench.run import presets
from hcibench.run.runner import scored_labels
from hcibench.run.splits import split_source
from hcibench.train import profiles
from hcibench_plugins.datasets.bbbc021 import BBBC021, DOMAINS, package_folder
from hcibench_plugins.evaluators.nsc import NSC, NSCB, nearest_neighbour_accuracy


@pytest.fixture(scope="module")
def dataset():
    return BBBC021()


def test_data_ship_inside_the_package(dataset):
    folder = package_folder()
    assert (
        folder.resolve()
        == (
            Path(__import__("hcibench_plugins.datasets").datasets.__file__).parent / "data" / "bbbc021"
        ).resolve()
    )
    for name in (
        "ljosa_jbiomolscreen_2013_per_well_mean.csv.gz",
        "BBBC021_v1_image.csv.gz",
        "BBBC021_v1_moa.csv",
        "README.md",
    ):
        assert (folder / name).is_file(), name
    assert "Broad Institute" in (folder / "README.md").read_text()
    assert dataset.folder == folder and "shared" not in folder.parts


def test_wells_domains_and_labels(dataset):
    wells = dataset.wells()
    assert len(wells) == 632 and tuple(wells.images[0].shape) == (516,)
    assert dataset.modality == "profile" and len(dataset.classes()) == 12
    dmso = wells.meta["base_compound"] == "DMSO"
    assert dmso.sum() == 330
    assert (wells.labels[torch.as_tensor(dmso.to_numpy().copy())] == -1).all()
    assert (wells.labels[torch.as_tensor(~dmso.to_numpy().copy())] >= 0).all()
    # Globally z-scored features: mean 0, population std 1 per column.
    x = wells.stack().double()
    assert torch.allclose(x.mean(0), torch.zeros(516, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x.std(0, correction=0), torch.ones(516, dtype=torch.float64), atol=1e-4)
    sizes = {}
    for source in dataset.sources():
        domain = dataset.domain(source)
        sizes[source] = len(domain)
        assert set(domain.meta["week"]) == set(DOMAINS[source])
        assert (domain.meta["source"] == source).all()
        split = split_source(domain, order="labelled")  # the bbbc021 preset's split
        assert domain.meta["plate"].nunique() >= 3
        assert (split.val.labels >= 0).sum() > 0 and (split.test.labels >= 0).sum() > 0
        train_classes = set(split.train.labels[split.train.labels >= 0].tolist())
        assert set(split.test.labels[split.test.labels >= 0].tolist()) <= train_classes
    assert sizes == {"W1-2": 147, "W3-6": 279, "W7-10": 206}


def test_every_pair_of_domains_shares_classes(dataset):
    for source in dataset.sources():
        train = split_source(dataset.domain(source), order="labelled").train
        seen = torch.unique(train.labels[train.labels >= 0])
        for target in dataset.sources():
            if target != source:
                _, scoring = scored_labels(dataset.domain(target), seen)
                assert scoring["scored"] >= 33 and scoring["unscored_classes"]


def _independent_nsc(folder: Path) -> dict[str, tuple[int, int]]:
    """The protocol written out with plain pandas/numpy loops from the CSV files."""
    wells = pd.read_csv(folder / "ljosa_jbiomolscreen_2013_per_well_mean.csv.gz")
    images = pd.read_csv(folder / "BBBC021_v1_image.csv.gz")
    moa = pd.read_csv(folder / "BBBC021_v1_moa.csv")
    per_well = images[
        [
            "Image_Metadata_Plate_DAPI",
            "Image_Metadata_Well_DAPI",
            "Image_Metadata_Compound",
            "Image_Metadata_Concentration",
        ]
    ]
    per_well = per_well.drop_duplicates().set_axis(["plate", "well", "cpd", "conc"], axis=1)
    features = [c for c in wells.columns if not c.startswith("Image_")]
    x = wells[features].to_numpy(float)
    z = (x - x.mean(axis=0)) / x.std(axis=0)  # population std; no constant column here
    keys = wells[["Image_Metadata_Plate", "Image_Metadata_Well"]].set_axis(["plate", "well"], axis=1)
    keys = keys.merge(per_well, on=["plate", "well"], how="left")
    profiles_by, weeks_by = {}, {}
    for (cpd, conc), rows in keys.groupby(["cpd", "conc"]).groups.items():
        if cpd == "DMSO":
            continue
        profiles_by[(cpd, conc)] = np.median(z[list(rows)], axis=0)
        weeks_by[(cpd, conc)] = {p.split("_")[0] for p in keys.loc[rows, "plate"]}
    label_of = {(r.compound, r.concentration): r.moa for r in moa.itertuples()}
    treatments = sorted(profiles_by)
    result = {}
    for name, other_week in (("nsc", False), ("nscb", True)):
        hits = queries = 0
        for query in treatments:
            best, best_sim = None, -2.0
            candidates = [
                t
                for t in treatments
                if t[0] != query[0] and not (other_week and weeks_by[t] & weeks_by[query])
            ]
            if not any(label_of[t] == label_of[query] for t in candidates):
                continue
            a = profiles_by[query]
            for t in candidates:
                b = profiles_by[t]
                sim = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
                if sim > best_sim:
                    best, best_sim = t, sim
            queries += 1
            hits += label_of[best] == label_of[query]
        result[name] = (hits, queries)
    return result


def test_nsc_reference_numbers_agree_with_an_independent_computation(dataset):
    reference = _independent_nsc(package_folder())
    assert reference["nsc"][1] == 103 and reference["nscb"][1] == 92
    assert round(100 * reference["nsc"][0] / 103, 1) == 88.3
    assert round(100 * reference["nscb"][0] / 92, 1) == 71.7
    wells = dataset.wells()
    features = wells.stack().double().numpy()
    for name, exclude_batch in (("nsc", False), ("nscb", True)):
        value, queries = nearest_neighbour_accuracy(features, wells.meta, exclude_batch)
        hits, expected_queries = reference[name]
        assert queries == expected_queries
        assert value == pytest.approx(hits / expected_queries)
    # Through the evaluator contract: raw features from the domain, embeddings if given.
    logits, labels = torch.zeros(len(wells), 12), wells.labels
    scores = NSC()(logits, labels, wells.meta, 12, embeddings=None, domain=wells)
    assert scores == {"nsc_raw": pytest.approx(91 / 103)}
    scores = NSCB()(logits, labels, wells.meta, 12, embeddings=torch.tensor(features), domain=wells)
    assert scores["nscb"] == pytest.approx(scores["nscb_raw"]) == pytest.approx(66 / 92)


def test_profile_models_and_views():
    config = {"modality": "profile", "profile": presets.profile_settings("quick")}
    from hcibench.train.modality import create_backbone, dino_views
    from hcibench_plugins.methods.dual.steps import create_task

    fe = create_backbone(config, 20, num_classes=3, drop_path=0.1)
    x = torch.randn(5, 20)
    assert fe(x).shape == (5, 3) and fe.forward_features(x).shape == (5, fe.embed_dim)
    assert create_task(config, fe.embed_dim, 3)(fe.forward_features(x)).shape == (5, 3)
    teacher = create_backbone(config, 20)
    teacher.load_state_dict(create_backbone(config, 20, drop_path=0.1).state_dict())
    views = dino_views(config, 4)(x, x + 1, torch.Generator().manual_seed(0))
    assert len(views) == 6 and all(v.shape == x.shape for v in views)
    assert dino_views({"modality": "image"}, 4) is None
    # Masked-feature MAE: exactly 75 % hidden per row; only hidden features enter the loss.
    noise = torch.rand(5, 20)
    mask = profiles.feature_mask(noise, 0.75)
    assert (mask.sum(1) == 15).all()
    decoder = profiles.ProfileDecoder(fe.embed_dim, 20)
    mae = profiles.ProfileMAE(create_backbone(config, 20), decoder, 0.75)
    assert mae.noise_size() == 20 and torch.isfinite(mae(x, noise))
    with torch.no_grad():  # a decoder that predicts 0: the loss is the mean square of the hidden
        decoder.pred.weight.zero_()
        decoder.pred.bias.zero_()
    assert torch.allclose(mae(x, noise), (x**2 * mask).sum() / mask.sum())


def test_tiny_cli_run_records_every_metric(cli, tmp_path):
    out = tmp_path / "run"
    tiny = [
        "supervised.epochs=2",
        "task.epochs=2",
        "dino.epochs=2",
        "adapt.epochs=1",
        "dino.head_out_dim=64",
        "dino.head_hidden_dim=32",
        "dino.head_bottleneck_dim=16",
        "profile.fe.hidden_dim=32",
        "profile.fe.embed_dim=16",
        "profile.task_model.hidden_dim=16",
    ]
    args = [
        "run",
        "--dataset",
        "bbbc021",
        "--methods",
        "supervised,coda",
        "--sources",
        "W1-2",
        "--targets",
        "W3-6",
        "--out",
        str(out),
    ]
    for item in tiny:
        args += ["--set", item]
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["evaluators"] == ["accuracy", "f1", "nsc", "nscb"]
    assert manifest["config"]["modality"] == "profile" and manifest["torch_threads"] == 1
    for method in ("supervised", "coda"):
        record = json.loads((out / "records" / method / "W1-2" / "W3-6" / "seed0.json").read_text())
        assert {"accuracy", "f1", "nsc", "nscb", "nsc_raw", "nscb_raw"} <= set(record["metrics"])
        scoring = record["info"]["scoring"]
        assert scoring["labelled"] == 135 and scoring["scored"] == 54
        assert "DNA damage" in scoring["unscored_classes"]


def test_presets_tune_only_the_sections_a_run_has():
    from hcibench.run.runner import Grid, RunSpec, prepare

    for preset in ("quick", "paper"):
        run = prepare(
            RunSpec(
                Grid(["coda"], ["W1-2"]),
                out=Path("unused"),
                dataset="bbbc021",
                preset=preset,
                overrides=["adapt.epochs=7"],
            )
        )
        config = run.config
        assert "supervised" not in config and config["split"]["order"] == "labelled"
        assert config["adapt"]["epochs"] == 7  # --set wins over the dataset's settings
        assert config["profile"]["fe"]["embed_dim"] == 128 and config["threads"] == 1
        assert list(run.evaluators) == ["accuracy", "f1", "nsc", "nscb"]
    run = prepare(RunSpec(Grid(["supervised"], ["S3"]), out=Path("unused")))
    assert "profile" not in run.config and run.config["modality"] == "image"
    assert run.config["threads"] is None and list(run.evaluators) == ["accuracy", "f1"]
