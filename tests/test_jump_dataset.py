"""The ``jump`` dataset on a miniature cpg0016 layout: load_data CSVs in both styles, per-channel
16-bit TIFFs, illumination functions, plate/well/compound tables and Drug Repurposing Hub MoAs."""

import gzip
import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from conftest import TINY_BACKBONE

import hcibench
from hcibench.run import runner
from hcibench_plugins.datasets.files.moa import link_moa
from hcibench_plugins.datasets.jump import JumpDataset

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
SITE = 64
DMSO = "JCP2022_033924"
# well -> (JCP2022 id, InChIKey): full-key match, 14-character match, two MoAs, not in the Hub
WELLS = {
    "A01": (DMSO, "IAZDPXIOMUYVGZ-UHFFFAOYSA-N"),
    "A02": ("JCP2022_000001", "AAAAAAAAAAAAAA-BBBBBBBBBB-N"),
    "A03": ("JCP2022_000002", "CCCCCCCCCCCCCC-XXXXXXXXXX-N"),
    "A04": ("JCP2022_000003", "DDDDDDDDDDDDDD-EEEEEEEEEE-N"),
    "A05": ("JCP2022_000004", "FFFFFFFFFFFFFF-GGGGGGGGGG-N"),
    "A06": ("JCP2022_UNKNOWN", None),
}
PLATES = {"source_3": {"B1": ["P1", "P2"], "B2": ["P3"]}, "source_5": {"B7": ["Q1"], "B8": ["Q2", "Q3"]}}


def write_hub(folder):
    folder.mkdir()
    (folder / "repurposing_drugs_20200324.txt").write_text(
        "!Drug Repurposing Hub\n!comments\n"
        "pert_iname\tclinical_phase\tmoa\ttarget\tdisease_area\tindication\n"
        "alpha\tLaunched\tHDAC inhibitor\tHDAC1\tonc\tx\n"
        "beta\tPhase 2\tCDK inhibitor\tCDK2\tonc\tx\n"
        "gamma\tLaunched\tEGFR inhibitor|tyrosine kinase inhibitor\tEGFR\tonc\tx\n"
    )
    (folder / "repurposing_samples_20200324.txt").write_text(
        "!samples\nbroad_id\tpert_iname\tqc_incompatible\tpurity\tvendor\tcatalog_no\tvendor_name"
        "\texpected_mass\tsmiles\tInChIKey\tpubchem_cid\tdeprecated_broad_id\n"
        "BRD-1\talpha\t0\t99\tv\t1\tn\t1\tC\tAAAAAAAAAAAAAA-BBBBBBBBBB-N\t1\t\n"
        "BRD-2\tbeta\t0\t99\tv\t2\tn\t1\tC\tCCCCCCCCCCCCCC-YYYYYYYYYY-N\t2\t\n"
        "BRD-3\tgamma\t0\t99\tv\t3\tn\t1\tC\tDDDDDDDDDDDDDD-EEEEEEEEEE-N\t3\t\n"
    )
    return (folder / "repurposing_drugs_20200324.txt", folder / "repurposing_samples_20200324.txt")


def make_jump(root):
    """Two sources: source_3 in load_data style 1 with illumination functions (and a plain
    load_data.csv beside it), source_5 in style 2 (URL_Orig*, no Metadata_Source column).
    Returns {(plate, well): {channel: raw uint16 array}} and the illumination functions."""
    rng = np.random.default_rng(0)
    raw, illum = {}, {}
    metadata = root / "metadata"
    metadata.mkdir(parents=True)
    plate_rows, well_rows = [], []
    for source, batches in PLATES.items():
        for batch, plates in batches.items():
            for plate in plates:
                plate_rows.append((source, batch, plate, "TARGET2"))
                images = root / source / "images" / batch / "images" / plate
                images.mkdir(parents=True)
                rows = []
                for well, (jcp, _) in WELLS.items():
                    well_rows.append((source, plate, well, jcp))
                    files = {}
                    for c, channel in enumerate(CHANNELS):
                        array = rng.integers(100, 4000, (SITE, SITE), dtype=np.uint16)
                        name = f"r01c{int(well[1:]):02d}f01p01-ch{c + 1}sk1fk1fl1.tiff"
                        tifffile.imwrite(images / name, array)
                        raw.setdefault((plate, well), {})[channel] = array
                        files[channel] = (images, name)
                    rows.append((well, files))
                workspace = root / source / "workspace" / "load_data_csv" / batch / plate
                workspace.mkdir(parents=True)
                if source == "source_3":
                    illum_dir = root / source / "images" / batch / "illum" / plate
                    illum_dir.mkdir(parents=True)
                    for channel in CHANNELS:
                        function = rng.uniform(0.5, 2.0, (SITE, SITE))
                        np.save(illum_dir / f"{plate}_Illum{channel}.npy", function)
                        illum[(plate, channel)] = function
                    table = pd.DataFrame(
                        [
                            {
                                "Metadata_Source": source,
                                "Metadata_Batch": batch,
                                "Metadata_Plate": plate,
                                "Metadata_Well": well,
                                "Metadata_Site": 1,
                                **{f"FileName_Orig{ch}": files[ch][1] for ch in CHANNELS},
                                # relative to --data, with a trailing slash
                                **{
                                    f"PathName_Orig{ch}": f"{files[ch][0].relative_to(root)}/"
                                    for ch in CHANNELS
                                },
                                **{f"FileName_Illum{ch}": f"{plate}_Illum{ch}.npy" for ch in CHANNELS},
                                **{f"PathName_Illum{ch}": str(illum_dir) for ch in CHANNELS},
                            }
                            for well, files in rows
                        ]
                    )
                    table.to_csv(workspace / "load_data_with_illum.csv", index=False)
                    table.drop(columns=[c for c in table if "Illum" in c]).to_csv(
                        workspace / "load_data.csv", index=False
                    )
                else:
                    table = pd.DataFrame(
                        [
                            {
                                "Metadata_Plate": plate,
                                "Metadata_Well": well.replace("A0", "A"),
                                "Metadata_Site": 1,
                                "Metadata_Row": "A",
                                **{
                                    f"URL_Orig{ch}": f"file://{files[ch][0] / files[ch][1]}"
                                    for ch in CHANNELS
                                },
                            }
                            for well, files in rows
                        ]
                    )
                    with gzip.open(workspace / "load_data.csv.gz", "wt") as handle:
                        table.to_csv(handle, index=False)
    plate_rows.append(("source_3", "B2", "P9", "TARGET2"))  # listed, never imaged
    plate_rows.append(("source_3", "B2", "ORF1", "ORF"))
    pd.DataFrame(
        plate_rows, columns=["Metadata_Source", "Metadata_Batch", "Metadata_Plate", "Metadata_PlateType"]
    ).to_csv(metadata / "plate.csv", index=False)
    wells = pd.DataFrame(
        well_rows, columns=["Metadata_Source", "Metadata_Plate", "Metadata_Well", "Metadata_JCP2022"]
    )
    wells.to_csv(metadata / "well.csv.gz", index=False, compression="gzip")
    compounds = pd.DataFrame(
        [(jcp, key, "InChI=1S/x", "C") for jcp, key in WELLS.values() if key],
        columns=["Metadata_JCP2022", "Metadata_InChIKey", "Metadata_InChI", "Metadata_SMILES"],
    )
    compounds.to_csv(metadata / "compound.csv", index=False)
    return raw, illum


@pytest.fixture(scope="module")
def jump(tmp_path_factory):
    root = tmp_path_factory.mktemp("jump")
    raw, illum = make_jump(root)
    drugs, samples = write_hub(root / "hub")
    return root, raw, illum, {"moa_drugs": str(drugs), "moa_samples": str(samples)}


def options(hub, **changes):
    return {**JumpDataset.default_settings("quick"), **hub, **changes}


def test_moa_links_full_keys_then_the_first_14_characters(jump):
    root, _, _, hub = jump
    keys = pd.Series({jcp: key for jcp, key in WELLS.values()})
    labels, counts = link_moa(keys, hub["moa_drugs"], hub["moa_samples"])
    assert labels["JCP2022_000001"] == "HDAC inhibitor"  # full InChIKey
    assert labels["JCP2022_000002"] == "CDK inhibitor"  # first 14 characters only
    assert pd.isna(labels["JCP2022_000003"])  # two MoAs: dropped, as in the paper
    assert pd.isna(labels["JCP2022_000004"]) and pd.isna(labels["JCP2022_UNKNOWN"])
    assert counts == {
        "compounds": 6,
        "no_inchikey": 1,
        "matched_full": 2,
        "matched_block14": 1,
        "unmatched": 2,
        "matched_without_moa": 0,
        "single_moa": 2,
        "several_moas": 1,
        "several_moas_policy": "drop",
        "labelled": 2,
        "unlabelled": 4,
        "classes": 2,
    }
    joined, _ = link_moa(keys, hub["moa_drugs"], hub["moa_samples"], multi="join")
    assert joined["JCP2022_000003"] == "EGFR inhibitor|tyrosine kinase inhibitor"
    first, _ = link_moa(keys, hub["moa_drugs"], hub["moa_samples"], multi="first")
    assert first["JCP2022_000003"] == "EGFR inhibitor"


def test_loads_both_load_data_styles_to_the_expected_tensors(jump):
    root, raw, illum, hub = jump
    dataset = JumpDataset(str(root), **options(hub, plate_types=["TARGET2"]))
    assert dataset.sources() == ["S3", "S5"]
    assert dataset.classes() == ["CDK inhibitor", "HDAC inhibitor"]
    s3 = dataset.domain("S3")
    assert len(s3) == 18 and s3.images[0].shape == (5, SITE, SITE)
    meta = s3.meta.set_index(["plate", "well"])
    assert meta.loc[("P1", "A02"), "label"] == "HDAC inhibitor"
    assert meta.loc[("P1", "A03"), "compound"] == "JCP2022_000002"
    assert pd.isna(meta.loc[("P1", "A01"), "label"]) and meta.loc[("P1", "A01"), "control"]
    assert pd.isna(meta.loc[("P1", "A06"), "compound"])  # JCP2022_UNKNOWN: no compound
    assert set(s3.meta["batch"]) == {"B1", "B2"}
    position = int(np.flatnonzero((s3.meta["plate"] == "P2") & (s3.meta["well"] == "A04"))[0])
    expected = np.stack(
        [raw[("P2", "A04")][c] / illum[("P2", c)].astype(np.float32) / 65535 for c in CHANNELS]
    ).astype(np.float32)
    assert torch.allclose(s3.images[position], torch.from_numpy(expected), rtol=1e-6)

    s5 = dataset.domain("S5")  # style 2, source and batch from plate.csv, wells "A1" -> "A01"
    assert set(s5.meta["batch"]) == {"B7", "B8"} and s5.meta["well"].iloc[0] == "A01"
    assert s5.meta.loc[s5.meta["well"] == "A02", "label"].tolist() == ["HDAC inhibitor"] * 3
    assert torch.equal(
        s5.images[1][2], torch.from_numpy(raw[("Q1", "A02")]["RNA"].astype(np.float32)) / 65535
    )
    kinds = {p["kind"] for p in dataset.problems()}
    assert kinds == {"plate-without-images"}  # P9 is listed in plate.csv but never imaged
    assert dataset.label_counts["matched_block14"] == 1


def test_channels_tiles_normalisation_and_no_illumination(jump):
    root, raw, _, hub = jump
    dataset = JumpDataset(
        str(root),
        **options(hub, channels=["Mito", "DNA"], illum="none", tile=32, normalise="dmso", norm_sample=8),
    )
    s3 = dataset.domain("S3")
    assert len(s3) == 18 * 4 and s3.meta["tile"].tolist()[:5] == [0, 1, 2, 3, 0]
    image = s3.images[3]  # the bottom-right tile of the first site
    assert image.shape == (2, 32, 32)
    plate = s3.meta["plate"].iloc[0]
    controls = [raw[(plate, "A01")][c].astype(np.float64) / 65535 for c in ("Mito", "DNA")]
    mean = np.array([c.mean() for c in controls])
    std = np.array([c.std(ddof=1) for c in controls])
    tile = np.stack([raw[(plate, "A01")][c][32:, 32:] / 65535 for c in ("Mito", "DNA")])
    expected = (tile - mean[:, None, None]) / std[:, None, None]
    assert np.allclose(image.numpy(), expected, atol=1e-4)


def test_remote_paths_ask_for_a_local_copy(tmp_path):
    root = tmp_path / "jump"
    workspace = root / "load_data_csv" / "B1" / "P1"
    workspace.mkdir(parents=True)
    pd.DataFrame(
        [
            {
                "Metadata_Source": "source_3",
                "Metadata_Batch": "B1",
                "Metadata_Plate": "P1",
                "Metadata_Well": "A01",
                "Metadata_Site": 1,
                "FileName_OrigDNA": "x.tiff",
                "PathName_OrigDNA": "s3://cellpainting-gallery/cpg0016-jump/source_3/images/B1/images/P1",
            }
        ]
    ).to_csv(workspace / "load_data.csv", index=False)
    with pytest.raises(hcibench.UsageError, match="local files only.*sync.*path_map") as error:
        JumpDataset(str(root), **options({}, label="none"))
    assert "load_data.csv, row 2, column OrigDNA" in str(error.value)
    with pytest.raises(hcibench.UsageError, match="moa_drugs"):
        JumpDataset(str(root), **options({}))


def test_runs_supervised_on_jump_images(jump, tmp_path):
    root, _, _, hub = jump
    overrides = [
        *TINY_BACKBONE,
        "supervised.epochs=1",
        "dataset.tile=32",
        'dataset.channels=["DNA","RNA","Mito"]',
        "dataset.clip=[0.5,99.5]",
    ]
    overrides += [f"dataset.{key}={value}" for key, value in hub.items()]
    spec = runner.RunSpec(
        runner.Grid(["supervised"], ["S3"], ["S5"], [0]),
        tmp_path / "run",
        dataset="jump",
        data=str(root),
        overrides=overrides,
    )
    runner.execute(runner.prepare(spec))
    record = json.loads((tmp_path / "run/records/supervised/S3/S5/seed0.json").read_text())
    assert record["n_images"] == 18 * 4 and 0 <= record["metrics"]["accuracy"] <= 1


def test_hub_labels_for_a_folder_dataset(jump, tmp_path):
    from hcibench_plugins.datasets.folder import FolderDataset

    _, _, _, hub = jump
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((3, 8, 8), dtype=np.uint16), photometric="minisblack")
    pd.DataFrame(
        {
            "path": "x.tif",
            "source": "A",
            "plate": "P",
            "compound": ["DMSO", "c1", "c2", "c3"],
            "InChIKey": [
                "IAZDPXIOMUYVGZ-UHFFFAOYSA-N",
                "AAAAAAAAAAAAAA-BBBBBBBBBB-N",
                "CCCCCCCCCCCCCC-ZZZZZZZZZZ-N",
                "DDDDDDDDDDDDDD-EEEEEEEEEE-N",
            ],
        }
    ).to_csv(tmp_path / "index.csv", index=False)
    dataset = FolderDataset(
        str(tmp_path), **{**FolderDataset.default_settings("quick"), **hub, "moa_multi": "first"}
    )
    labels = dataset.domain("A").meta["label"].tolist()
    assert pd.isna(labels[0]) and labels[1:] == ["HDAC inhibitor", "CDK inhibitor", "EGFR inhibitor"]
    assert dataset.label_counts["compounds"] == 3  # the DMSO control is not looked up
