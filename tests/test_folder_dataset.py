"""The ``folder`` dataset: an index CSV written by another program (plain pandas + tifffile),
renamed columns, channel files, strips, pre-processing, the synthetic round trip, bad data."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from conftest import TINY_BACKBONE
from PIL import Image
from test_dual import TINY_DUAL

import hcibench
from hcibench.errors import UsageError
from hcibench.run import runner
from hcibench_plugins.datasets.files.imagefiles import probe
from hcibench_plugins.datasets.folder import FolderDataset
from hcibench_plugins.datasets.synthetic import SyntheticDataset

TINY_SUPERVISED = [*TINY_BACKBONE, "supervised.epochs=1"]
SIZE = 32


def make_folder(
    root,
    sources=("A", "B"),
    plates=3,
    wells=4,
    sites=2,
    classes=4,
    seed=0,
    layout="tiff",
    label_column="label",
):
    """A dataset the way a user's own script writes one: a CSV and 16-bit TIFFs (or a PNG per
    channel). Returns the index and the images written (row order)."""
    rng = np.random.default_rng(seed)
    rows, arrays = [], []
    for source in sources:
        for plate in range(plates):
            for well in range(wells):
                compound = f"c{well}"
                for site in range(sites):
                    image = rng.integers(0, 65535, (3, SIZE, SIZE), dtype=np.uint16)
                    name = f"{source}/P{plate}/w{well}_s{site}"
                    row = {
                        "source": source,
                        "batch": f"{source}-B{plate % 2}",
                        "plate": f"{source}-P{plate}",
                        "well": f"A{well + 1:02d}",
                        "compound": compound,
                        label_column: f"moa{well % classes}",
                        "site": site,
                    }
                    if layout == "tiff":
                        (root / source / f"P{plate}").mkdir(parents=True, exist_ok=True)
                        tifffile.imwrite(root / f"{name}.tif", image, photometric="minisblack")
                        row = {"path": f"{name}.tif", **row}
                    else:  # one 8-bit PNG per channel
                        image = (image >> 8).astype(np.uint8)
                        (root / source / f"P{plate}").mkdir(parents=True, exist_ok=True)
                        paths = {}
                        for c, channel in enumerate(("DNA", "ER", "Mito")):
                            Image.fromarray(image[c]).save(root / f"{name}_{channel}.png")
                            paths[f"path_{channel}"] = f"{name}_{channel}.png"
                        row = {**paths, **row}
                    rows.append(row)
                    arrays.append(image)
    index = pd.DataFrame(rows)
    index.to_csv(root / "index.csv", index=False)
    return index, arrays


def options(**changes):
    return {**FolderDataset.default_settings("quick"), **changes}


def run_grid(out, dataset, data, methods, sources, targets, overrides):
    spec = runner.RunSpec(
        runner.Grid(methods, sources, targets, [0]),
        out,
        dataset=dataset,
        data=str(data) if data else None,
        overrides=list(overrides),
    )
    runner.execute(runner.prepare(spec))
    return {
        p.relative_to(out).as_posix(): json.loads(p.read_text()) for p in (out / "records").rglob("*.json")
    }


def test_reads_a_csv_written_by_another_program(tmp_path):
    index, arrays = make_folder(tmp_path)
    dataset = FolderDataset(str(tmp_path), **options())
    assert dataset.sources() == ["A", "B"]
    assert dataset.classes() == ["moa0", "moa1", "moa2", "moa3"]
    domain = dataset.domain("B")
    assert len(domain) == 24 and list(domain.meta.columns[:6]) == hcibench.META_COLUMNS
    assert domain.meta["plate"].iloc[0] == "B-P0" and domain.meta["site"].iloc[1] == 1
    expected = torch.from_numpy(arrays[24].astype(np.float32)) / 65535
    assert torch.equal(domain.images[0], expected)
    batch = hcibench.data.take(domain.images, np.arange(24))  # threaded batch read
    assert batch.shape == (24, 3, SIZE, SIZE) and torch.equal(batch[0], expected)
    assert domain.labels.tolist()[:4] == [0, 0, 1, 1]
    assert dataset.problems() == []


def test_channel_files_renamed_columns_and_channel_choice(tmp_path):
    index, arrays = make_folder(tmp_path, layout="png", label_column="moa")
    index.rename(columns={"source": "Site_Lab"}).to_csv(tmp_path / "index.csv", index=False)
    with pytest.raises(hcibench.UsageError, match="Site_Lab"):  # lists the columns it has
        FolderDataset(str(tmp_path), **options())
    dataset = FolderDataset(
        str(tmp_path), **options(columns={"source": "Site_Lab"}, channels=["Mito", "DNA"])
    )
    image = dataset.domain("A").images[3]
    assert image.shape == (2, SIZE, SIZE)
    assert torch.equal(image[0], torch.from_numpy(arrays[3][2].astype(np.float32)) / 255)
    assert torch.equal(image[1], torch.from_numpy(arrays[3][0].astype(np.float32)) / 255)
    assert dataset.classes() == ["moa0", "moa1", "moa2", "moa3"]  # 'moa' found as the label


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_colour_images_give_one_channel_per_band(tmp_path, suffix):
    """An RGB file (H×W×3 on disk) is read as three channels of H×W, the same shape its header
    gives, and keeps that shape through resizing."""
    colour = np.zeros((SIZE, 2 * SIZE, 3), dtype=np.uint8)  # not square: height and width differ
    colour[..., 0] = 200  # red everywhere
    colour[: SIZE // 2, :, 1] = 255  # green on the top half only
    colour[..., 2] = np.arange(2 * SIZE, dtype=np.uint8) * 3  # blue rising from left to right
    Image.fromarray(colour).save(tmp_path / f"cell.{suffix}")
    pd.DataFrame(
        {"path": [f"cell.{suffix}"], "source": "A", "plate": "P", "batch": "B", "label": "x"}
    ).to_csv(tmp_path / "index.csv", index=False)
    assert probe(tmp_path / f"cell.{suffix}") == (3, SIZE, 2 * SIZE)
    image = FolderDataset(str(tmp_path), **options()).domain("A").images[0]
    assert image.shape == (3, SIZE, 2 * SIZE)
    if suffix == "png":
        assert torch.equal(image, torch.from_numpy(colour.transpose(2, 0, 1).astype(np.float32)) / 255)
    # JPEG is lossy: the bands' content, region by region.
    assert abs(image[0].mean().item() - 200 / 255) < 0.02
    assert image[1, : SIZE // 2 - 2].mean() > 0.9 and image[1, SIZE // 2 + 2 :].mean() < 0.1
    assert image[2, :, :8].mean() < 0.15 and image[2, :, -8:].mean() > 0.6
    resized = FolderDataset(str(tmp_path), **options(resize=[8, 16])).domain("A").images[0]
    assert resized.shape == (3, 8, 16)


def test_strips_multipage_tiffs_and_preprocessing(tmp_path):
    rng = np.random.default_rng(1)
    strip = rng.integers(0, 255, (16, 16 * 4), dtype=np.uint8)
    Image.fromarray(strip).save(tmp_path / "cell.png")
    with tifffile.TiffWriter(tmp_path / "pages.tiff") as tif:  # pages written one by one
        pages = rng.integers(0, 65535, (3, 40, 40), dtype=np.uint16)
        for page in pages:
            tif.write(page)
    pd.DataFrame({"path": ["cell.png"], "source": "A", "plate": "P", "batch": "B", "label": "x"}).to_csv(
        tmp_path / "strip.csv", index=False
    )
    pd.DataFrame(
        {
            "path": ["pages.tiff"] * 2,
            "source": "A",
            "plate": ["P", "Q"],
            "batch": "B",
            "compound": ["DMSO", "c"],
            "label": "x",
        }
    ).to_csv(tmp_path / "pages.csv", index=False)
    tiles = FolderDataset(str(tmp_path / "strip.csv"), **options(strip_channels=4, channels=[3, 0]))
    image = tiles.domain("A").images[0]
    assert torch.equal(image[0], torch.from_numpy(strip[:, 48:].astype(np.float32)) / 255)
    assert torch.equal(image[1], torch.from_numpy(strip[:, :16].astype(np.float32)) / 255)

    raw = torch.from_numpy(pages.astype(np.float32)) / 65535
    plain = FolderDataset(str(tmp_path / "pages.csv"), **options()).domain("A")
    assert torch.equal(plain.images[0], raw)
    cropped = FolderDataset(str(tmp_path / "pages.csv"), **options(crop=20, resize=10))
    assert cropped.domain("A").images[0].shape == (3, 10, 10)
    clipped = FolderDataset(str(tmp_path / "pages.csv"), **options(clip=[1, 99])).domain("A")
    x = clipped.images[0]
    assert x.min() == 0 and x.max() == 1
    low, high = np.percentile(pages[0], [1, 99])
    expected = np.clip((pages[0] - low) / (high - low), 0, 1)
    assert np.allclose(x[0].numpy(), expected, atol=1e-5)
    tiled = FolderDataset(str(tmp_path / "pages.csv"), **options(tile=20)).domain("A")
    assert len(tiled) == 8 and tiled.meta["tile"].tolist() == [0, 1, 2, 3] * 2
    assert torch.equal(tiled.images[3], raw[:, 20:40, 20:40])
    normalised = FolderDataset(str(tmp_path / "pages.csv"), **options(normalise="plate")).domain("A")
    z = normalised.stack()
    assert torch.allclose(z[0].mean(dim=(1, 2)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z[0].std(dim=(1, 2)), torch.ones(3), atol=1e-3)


def test_synthetic_round_trip_gives_identical_metrics(tmp_path):
    synthetic = SyntheticDataset(scale=0.34)
    from hcibench_plugins.datasets.files.folder_format import write_folder

    write_folder(synthetic, tmp_path / "synth", ["S8", "S10"])
    grid = (["supervised"], ["S8"], ["S8", "S10"])
    direct = run_grid(tmp_path / "a", "synthetic", None, *grid, [*TINY_SUPERVISED, "dataset.scale=0.34"])
    on_disk = run_grid(tmp_path / "b", "folder", tmp_path / "synth", *grid, TINY_SUPERVISED)
    assert direct.keys() == on_disk.keys() and len(direct) == 2
    for key in direct:
        assert direct[key]["metrics"] == on_disk[key]["metrics"]
        assert direct[key]["n_images"] == on_disk[key]["n_images"]


def test_cli_runs_supervised_and_coda_on_a_folder(cli, tmp_path):
    make_folder(tmp_path / "data", wells=4, sites=1)
    out = tmp_path / "run"
    args = []
    for item in [*TINY_SUPERVISED, *TINY_DUAL]:
        args += ["--set", item]
    result = cli(
        "run",
        "--dataset",
        "folder",
        "--data",
        str(tmp_path / "data"),
        "--methods",
        "supervised,coda",
        "--sources",
        "A",
        "--targets",
        "B",
        "--out",
        str(out),
        *args,
    )
    assert result.returncode == 0, result.stderr
    for method in ("supervised", "coda"):
        record = json.loads((out / f"records/{method}/A/B/seed0.json").read_text())
        assert record["n_images"] == 12 and 0 <= record["metrics"]["accuracy"] <= 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data_problems"]["skipped_images"] == 0


def break_folder(root):
    """Two unreadable images (one missing, one corrupt), an empty plate value and a class that
    only source B has."""
    index, _ = make_folder(root)
    (root / index["path"][1]).unlink()
    (root / index["path"][30]).write_bytes(b"II*\x00 not a tiff at all")
    index.loc[5, "plate"] = np.nan
    index.loc[index["source"] == "B", "label"] = index.loc[index["source"] == "B", "label"].replace(
        "moa3", "moa9"
    )
    index.drop(columns=["batch"]).to_csv(root / "index.csv", index=False)
    return index


def test_bad_data_stops_with_file_row_and_column(tmp_path):
    break_folder(tmp_path)
    with pytest.raises(hcibench.UsageError) as error:
        FolderDataset(str(tmp_path), **options())
    message = str(error.value)
    assert "index.csv, row 7, column plate: empty plate" in message
    assert "on_error=skip" in message
    index = make_folder(tmp_path / "corrupt")[0]
    (tmp_path / "corrupt" / index["path"][2]).write_bytes(b"not an image")
    domain = FolderDataset(str(tmp_path / "corrupt"), **options()).domain("A")  # exists: fine
    with pytest.raises(hcibench.UsageError, match=r"index.csv, row 4, column path: cannot read"):
        hcibench.data.take(domain.images, np.arange(8))
    (tmp_path / "index.csv").write_text("path,source,plate\ns3://bucket/x.tif,A,P\n")
    with pytest.raises(hcibench.UsageError, match="remote path.*sync"):
        FolderDataset(str(tmp_path), **options())


def test_data_check_lists_each_problem_and_exits_2(tmp_path, capsys):
    from hcibench.cli import main

    break_folder(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["data", "check", str(tmp_path)])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    out = captured.out
    assert "data check found 3 error(s)" in captured.err
    assert "sources: 2 (A, B)" in out
    assert "row 3, column path: image file" in out and "does not exist" in out  # missing
    assert "row 32, column path: cannot read image" in out  # corrupt
    assert "row 7, column plate: empty plate" in out
    assert "no batch column" in out
    assert "exist in no other source (moa9)" in out and "exist in no other source (moa3)" in out
    assert "images left out: 3" in out
    assert "cross-batch pairs" in out and "classes shared between sources" in out

    good = tmp_path / "good"
    make_folder(good)
    main_exit = None
    try:
        main(["data", "check", str(good)])
    except SystemExit as done:
        main_exit = done.code
    assert main_exit in (None, 0)
    assert "no problems found" in capsys.readouterr().out


def test_on_error_skip_completes_and_reports_the_skips(tmp_path):
    from hcibench.report.tables import render

    break_folder(tmp_path / "data")
    out = tmp_path / "run"
    records = run_grid(
        out,
        "folder",
        tmp_path / "data",
        ["supervised"],
        ["A"],
        ["A", "B"],
        [*TINY_SUPERVISED, "dataset.on_error=skip"],
    )
    assert len(records) == 2
    assert records["records/supervised/A/B/seed0.json"]["n_images"] == 23
    # Each record counts the skips of its own source and target (A: rows 1 and 5, B: row 30).
    assert records["records/supervised/A/B/seed0.json"]["info"]["skipped_images"] == {
        "source": 2,
        "target": 1,
    }
    assert records["records/supervised/A/A/seed0.json"]["info"]["skipped_images"] == {
        "source": 2,
        "target": 2,
    }
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data_problems"]["skipped_images"] == 3
    assert any("does not exist" in p["message"] for p in manifest["data_problems"]["problems"])
    assert "3 image(s) were left out" in render(out)


def test_channel_columns_under_other_names_and_cellprofiler_pairs(tmp_path):
    index, arrays = make_folder(tmp_path, layout="png")
    expected = torch.from_numpy(arrays[5].astype(np.float32)) / 255
    channels = ("DNA", "ER", "Mito")
    index.rename(columns={f"path_{c}": f"img_c{i + 1}" for i, c in enumerate(channels)}).to_csv(
        tmp_path / "renamed.csv", index=False
    )
    listed = FolderDataset(
        str(tmp_path / "renamed.csv"), **options(channel_columns=["img_c1", "img_c2", "img_c3"])
    )
    assert torch.equal(listed.domain("A").images[5], expected)
    named = FolderDataset(
        str(tmp_path / "renamed.csv"), **options(channel_columns={"DNA": "img_c1", "Mito": "img_c3"})
    )
    assert torch.equal(named.domain("A").images[5], expected[[0, 2]])
    assert "img_c1" not in named.domain("A").meta.columns
    cellprofiler = index.copy()
    for channel in channels:
        paths = cellprofiler.pop(f"path_{channel}")
        cellprofiler[f"PathName_{channel}"] = [str(tmp_path / p.rsplit("/", 1)[0]) for p in paths]
        cellprofiler[f"FileName_{channel}"] = [p.rsplit("/", 1)[1] for p in paths]
    cellprofiler.to_csv(tmp_path / "cp.csv", index=False)
    found = FolderDataset(str(tmp_path / "cp.csv"), **options())
    assert torch.equal(found.domain("A").images[5], expected)
    with pytest.raises(hcibench.UsageError, match="no column 'img_c9'"):
        FolderDataset(str(tmp_path / "renamed.csv"), **options(channel_columns=["img_c9"]))


def test_work_read_by_an_earlier_reader_revision_is_not_reused(tmp_path, monkeypatch):
    """A reader fix raises the dataset's revision: stages cached and run folders made before it
    are computed anew or refused, never silently reused."""
    make_folder(tmp_path / "data", sources=("A",), sites=1)

    def run(out):
        spec = runner.RunSpec(
            runner.Grid(["supervised"], ["A"], ["A"], [0]),
            tmp_path / out,
            dataset="folder",
            data=str(tmp_path / "data"),
            overrides=TINY_SUPERVISED,
            cache=tmp_path / "cache",
        )
        runner.execute(runner.prepare(spec))
        stages = json.loads((tmp_path / out / "stages.json").read_text())
        return sum(stage["computed"] for stage in stages.values())

    assert run("first") == 1
    assert run("second") == 0  # the same reader: the cached stage serves
    monkeypatch.setattr(FolderDataset, "revision", FolderDataset.revision + "-next")
    assert run("after-the-fix") == 1
    with pytest.raises(UsageError, match=r"'folder' reader of revision 2 read \(now 2-next\)"):
        run("first")


@pytest.mark.parametrize("layout", ["channels-first", "channels-last"])
def test_npy_arrays_saved_either_way_give_the_same_channels(tmp_path, layout):
    """A .npy image saved C×H×W (hcibench's own layout) or H×W×C (as NumPy, scikit-image and
    PIL hold colour) is read as the same C×H×W image."""
    image = np.random.default_rng(0).integers(0, 65535, (5, SIZE, 2 * SIZE), dtype=np.uint16)
    np.save(tmp_path / "cell.npy", image if layout == "channels-first" else image.transpose(1, 2, 0))
    pd.DataFrame({"path": ["cell.npy"], "source": "A", "plate": "P", "batch": "B", "label": "x"}).to_csv(
        tmp_path / "index.csv", index=False
    )
    assert probe(tmp_path / "cell.npy") == (5, SIZE, 2 * SIZE)
    read = FolderDataset(str(tmp_path), **options()).domain("A").images[0]
    assert torch.equal(read, torch.from_numpy(image.astype(np.float32)) / 65535)
