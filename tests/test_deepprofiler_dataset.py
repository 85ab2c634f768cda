"""The ``deepprofiler`` dataset on a miniature single-cell export: 8-bit PNG crops with 5
channels tiled side by side, ``sc-metadata.csv`` as DeepProfiler writes it, and the CODA code's
own metadata CSV."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_BACKBONE
from PIL import Image

import hcibench
from hcibench.run import runner
from hcibench_plugins.datasets.deepprofiler import DeepProfilerDataset

BOX = 32
TILES = 5
PLATES = {"source_3": {"B1": ["P1", "P2"], "B2": ["P3"]}, "source_7": {"B5": ["Q1", "Q2", "Q3"]}}
CLASSES = ["HDAC inhibitor", "CDK inhibitor"]


def make_export(root):
    """One crop per (plate, well, cell); returns the metadata and the strips written."""
    rng = np.random.default_rng(0)
    rows, strips = [], []
    for batches in PLATES.values():
        for plates in batches.values():
            for plate in plates:
                for w, well in enumerate(["A01", "B02"]):
                    for cell in range(3):
                        x, y = 40 + 30 * cell, 100 + w
                        target = w
                        name = f"{plate}/{well}/1/{target}@{x}x{y}.png"
                        strip = rng.integers(0, 255, (BOX, BOX * TILES), dtype=np.uint8)
                        (root / plate / well / "1").mkdir(parents=True, exist_ok=True)
                        Image.fromarray(strip).save(root / name)
                        rows.append(
                            {
                                "Nuclei_Location_Center_X": x,
                                "Nuclei_Location_Center_Y": y,
                                "Key": f"{plate}/{well}/1",
                                "Target": target,
                                "Class_Name": CLASSES[w],
                                "Image_Name": name,
                                "Treatment": f"cmpd{w}",
                            }
                        )
                        strips.append(strip)
    metadata = pd.DataFrame(rows)
    metadata.to_csv(root / "sc-metadata.csv", index=False)
    plates = pd.DataFrame(
        [(s, b, p) for s, batches in PLATES.items() for b, ps in batches.items() for p in ps],
        columns=["Metadata_Source", "Metadata_Batch", "Metadata_Plate"],
    )
    plates.to_csv(root / "plates.csv", index=False)
    return metadata, strips


def options(**changes):
    return {**DeepProfilerDataset.default_settings("quick"), "plates": "plates.csv", **changes}


def test_reads_an_export_with_five_tiled_channels(tmp_path):
    metadata, strips = make_export(tmp_path)
    dataset = DeepProfilerDataset(str(tmp_path), **options())
    assert dataset.sources() == ["S3", "S7"]
    assert dataset.classes() == sorted(CLASSES)
    domain = dataset.domain("S3")
    assert len(domain) == 18
    row = domain.meta.iloc[4]
    assert (row["source"], row["batch"], row["plate"], row["well"], row["site"]) == (
        "S3",
        "B1",
        "P1",
        "B02",
        "1",
    )
    assert (row["compound"], row["label"]) == ("cmpd1", CLASSES[1])
    image = domain.images[4]
    assert image.shape == (TILES, BOX, BOX)
    for tile in range(TILES):
        expected = strips[4][:, tile * BOX : (tile + 1) * BOX].astype(np.float32) / 255
        assert torch.equal(image[tile], torch.from_numpy(expected))

    coda = DeepProfilerDataset(str(tmp_path), **options(channels=[0, 1, 4]))
    image = coda.domain("S7").images[0]
    assert image.shape == (3, BOX, BOX)
    assert torch.equal(image[2], torch.from_numpy(strips[18][:, 4 * BOX :].astype(np.float32) / 255))


def test_reads_the_coda_metadata_csv_and_renamed_columns(tmp_path):
    metadata, strips = make_export(tmp_path)
    coda = pd.DataFrame(
        {
            "Metadata_Source": "source_3",
            "Metadata_Batch": "B1",
            "Metadata_Plate": metadata["Key"].str.split("/").str[0],
            "JCP2022_id": metadata["Treatment"],
            "Metadata_moa": metadata["Class_Name"],
            "moa_id": metadata["Target"],
            "paths": metadata["Image_Name"].str.split("/", n=1).str[1],  # relative to <root>/<plate>/
            "Metadata_Well": metadata["Key"].str.split("/").str[1],
        }
    )
    coda.rename(columns={"Metadata_moa": "mechanism"}).to_csv(tmp_path / "coda.csv", index=False)
    dataset = DeepProfilerDataset(
        str(tmp_path), **{**options(metadata="coda.csv", plates=None, columns={"label": "mechanism"})}
    )
    domain = dataset.domain("S3")
    assert len(domain) == 36 and domain.meta["compound"].iloc[3] == "cmpd1"
    assert domain.meta["label"].iloc[3] == CLASSES[1]
    assert torch.equal(domain.images[7][0], torch.from_numpy(strips[7][:, :BOX].astype(np.float32) / 255))


def test_bad_crops_are_named_and_skipped(tmp_path):
    metadata, _ = make_export(tmp_path)
    (tmp_path / metadata["Image_Name"][2]).unlink()
    path = tmp_path / metadata["Image_Name"][3]
    path.write_bytes(path.read_bytes()[:60])  # truncated PNG
    with pytest.raises(hcibench.UsageError, match=r"sc-metadata.csv, row 4, column Image_Name"):
        DeepProfilerDataset(str(tmp_path), **options())
    dataset = DeepProfilerDataset(str(tmp_path), **options(on_error="skip"))
    assert len(dataset.domain("S3")) == 16
    problems = dataset.problems()
    assert [p["skipped"] for p in problems] == [1, 1]
    assert "row 5, column Image_Name: cannot read image" in problems[1]["message"]


def test_runs_supervised_on_single_cells(tmp_path):
    make_export(tmp_path / "export")
    overrides = [
        *TINY_BACKBONE,
        "supervised.epochs=1",
        "dataset.plates=plates.csv",
        "dataset.channels=[0,1,4]",
    ]
    spec = runner.RunSpec(
        runner.Grid(["supervised"], ["S3"], ["S7"], [0]),
        tmp_path / "run",
        dataset="deepprofiler",
        data=str(tmp_path / "export"),
        overrides=overrides,
    )
    runner.execute(runner.prepare(spec))
    record = json.loads((tmp_path / "run/records/supervised/S3/S7/seed0.json").read_text())
    assert record["n_images"] == 18 and 0 <= record["metrics"]["accuracy"] <= 1
