"""BBBC021: real per-well CellProfiler profiles of MCF-7 cells, shipped with hcibench.

632 wells × 516 features (per-well means of per-cell features), 10 weekly batches, 55 plates,
38 compounds at several concentrations, 12 mechanism-of-action (MoA) classes plus DMSO controls
(Caie et al. 2010; Ljosa et al. 2013; files and licence in ``plugins/datasets/data/bbbc021/``). It runs
with no network access: the files are package data. ``--data DIR`` reads the same three files
from another folder instead.

* sample = one well (a profile of 516 features, ``modality = "profile"``);
* ``batch`` = the week (``Week1`` … ``Week10``), ``plate`` = the plate (``Week1_22123``),
  ``compound`` = the treatment, compound + concentration (``taxol@0.3``): cross-batch pairs are
  replicates of one treatment; ``base_compound`` = the compound alone (for NSC), plus
  ``concentration`` and ``replicate`` columns;
* ``label`` = the MoA; DMSO wells (330 of 632) are unlabelled (missing label): they are not a
  class to predict, but stay in every domain for self-supervision, cross-batch pairs and
  normalisation.

Domains are groups of weeks: ``W1-2``, ``W3-6``, ``W7-10``. Most compounds were imaged in a
single week, so MoA and week are partly confounded and no grouping shares every class. This
one is the contiguous grouping where every source/target pair shares the most: 3 classes and at
least 33 scored wells per pair. A target is scored on the classes present in the source's
training labels only (the runner's rule; the records say what was left out):

=========  ============================================================================
W1-2       Actin disruptors, Aurora kinase inh., DNA replication, Microtubule destab.,
           Microtubule stab., Protein degradation (75 labelled wells)
W3-6       Aurora kinase inh., DNA damage, Eg5 inh., Epithelial, Microtubule destab.,
           Protein degradation, Protein synthesis (135)
W7-10      Cholesterol-lowering, DNA replication, Eg5 inh., Epithelial, Kinase inh.,
           Microtubule stab., Protein degradation (92)
=========  ============================================================================

Shared with the source's training labels: W1-2 → W3-6: Aurora, MT destab., Protein degradation
(54 wells); W1-2 → W7-10: DNA replication, MT stab., Protein degradation (36); W3-6 → W1-2:
Aurora, MT destab., Protein degradation (39); W3-6 → W7-10: Eg5, Epithelial, Protein degradation
(34); W7-10 → W1-2: DNA replication, MT stab., Protein degradation (33); W7-10 → W3-6: Eg5,
Epithelial, Protein degradation (33).

Several plates hold DMSO wells only, so the source split orders plates by their number of
labelled wells (``split.order = "labelled"``): validation and in-domain test plates are the two
most labelled plates of the source, which hold replicates of the same treatments.

Normalisation (``--set dataset.normalise=...``): ``all`` (default) z-scores each feature over
all 632 wells (population std), the reference protocol of the NSC numbers (it uses every well's
features, no labels); ``dmso`` z-scores each feature to the DMSO wells of its own plate (a
per-plate correction that removes much of the batch effect by itself); ``none`` keeps the raw
CellProfiler values.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import hcibench

WELLS_FILE = "ljosa_jbiomolscreen_2013_per_well_mean.csv.gz"
IMAGES_FILE = "BBBC021_v1_image.csv.gz"
MOA_FILE = "BBBC021_v1_moa.csv"
DOMAINS = {"W1-2": (1, 2), "W3-6": (3, 4, 5, 6), "W7-10": (7, 8, 9, 10)}
CONTROL = "DMSO"
NORMALISATIONS = ("all", "dmso", "none")

# Epochs and batch sizes for ~100-250 training wells per source: the grid of supervised, dual-cb
# and coda over the 3 sources takes about a minute on 2 CPU cores.
QUICK = {
    "supervised": {
        "epochs": 60,
        "batch_size": 32,
        "lr": 1e-3,
        "warmup_epochs": 5,
        "patience": 5,
        "drop_path": 0.1,
    },
    "task": {
        "epochs": 60,
        "batch_size": 32,
        "lr": 1e-3,
        "warmup_epochs": 5,
        "patience": 5,
        "cache_tokens": True,
        "jitter": False,  # an image augmentation: profiles have no intensities to jitter
    },
    "dino": {
        "epochs": 100,
        "batch_size": 64,
        "lr": 1e-3,
        "warmup_epochs": 10,
        "n_local": 4,
        "head_hidden_dim": 256,
        "head_bottleneck_dim": 64,
        "head_out_dim": 512,
        "warmup_teacher_temp_epochs": 10,
        "momentum_teacher": 0.99,
        "drop_path": 0.1,
    },
    "mae": {
        "epochs": 100,
        "batch_size": 64,
        "lr": 1e-3,
        "warmup_epochs": 10,
        "decoder_dim": 256,
        "decoder_depth": 1,
    },
    "adapt": {"epochs": 30, "warmup_epochs": 3},
    "split": {"order": "labelled"},
    "eval_batch_size": 512,
    "threads": 1,  # these MLPs run ~3x faster on one thread than on two busy cores
}
PAPER = {
    **QUICK,
    "dino": {
        **QUICK["dino"],
        "epochs": 300,
        "n_local": 6,
        "head_out_dim": 4096,
        "warmup_teacher_temp_epochs": 30,
    },
    "mae": {**QUICK["mae"], "epochs": 300},
    "adapt": {"epochs": 100, "warmup_epochs": 10},
}


def package_folder() -> Path:
    return Path(str(resources.files("hcibench_plugins.datasets").joinpath("data", "bbbc021")))


@functools.lru_cache(maxsize=4)
def load_wells(folder: str) -> tuple[pd.DataFrame, np.ndarray, tuple[str, ...]]:
    """(metadata of every well, features N×F float64, feature names) from the three files."""
    folder = Path(folder)
    paths = {name: folder / name for name in (WELLS_FILE, IMAGES_FILE, MOA_FILE)}
    for path in paths.values():
        if not path.is_file():
            raise hcibench.UsageError(f"BBBC021 file not found: {path}")
    wells = pd.read_csv(paths[WELLS_FILE])
    keys = ["Image_Metadata_Plate", "Image_Metadata_Well"]
    missing = [k for k in keys if k not in wells.columns]
    if missing:
        raise hcibench.UsageError(f"{paths[WELLS_FILE]} lacks the columns {missing}")
    names = tuple(c for c in wells.columns if not c.startswith("Image_"))
    columns = {
        "Image_Metadata_Plate_DAPI": keys[0],
        "Image_Metadata_Well_DAPI": keys[1],
        "Image_Metadata_Compound": "base_compound",
        "Image_Metadata_Concentration": "concentration",
        "Replicate": "replicate",
    }
    images = pd.read_csv(paths[IMAGES_FILE], usecols=list(columns)).rename(columns=columns)
    treatments = images.drop_duplicates()
    duplicated = treatments.duplicated(keys, keep=False)
    if duplicated.any():
        plate, well = treatments.loc[duplicated, keys].iloc[0]
        raise hcibench.UsageError(f"{paths[IMAGES_FILE]}: well {plate} {well} has several treatments")
    meta = wells[keys].merge(treatments, on=keys, how="left", validate="one_to_one")
    if meta["base_compound"].isna().any():
        plate, well = meta.loc[meta["base_compound"].isna(), keys].iloc[0]
        raise hcibench.UsageError(f"{paths[IMAGES_FILE]} has no row for well {plate} {well}")
    moa = pd.read_csv(paths[MOA_FILE]).rename(columns={"compound": "base_compound"})
    meta = meta.merge(moa, on=["base_compound", "concentration"], how="left", validate="many_to_one")
    meta["label"] = meta["moa"].where(meta["base_compound"] != CONTROL)
    meta["label"] = meta["label"].astype(object).where(meta["label"].notna(), None)
    meta["batch"] = meta["Image_Metadata_Plate"].str.split("_").str[0]
    meta["week"] = meta["batch"].str.removeprefix("Week").astype(int)
    meta["plate"] = meta["Image_Metadata_Plate"]
    meta["well"] = meta["Image_Metadata_Well"]
    meta["compound"] = [f"{c}@{x:g}" for c, x in zip(meta["base_compound"], meta["concentration"])]
    columns = [
        "batch",
        "plate",
        "well",
        "compound",
        "label",
        "base_compound",
        "concentration",
        "replicate",
        "week",
    ]
    features = wells[list(names)].to_numpy(dtype=np.float64)
    return meta[columns].reset_index(drop=True), features, names


def normalise(features: np.ndarray, meta: pd.DataFrame, how: str) -> np.ndarray:
    """Column z-scores over all wells (``all``), to each plate's DMSO wells (``dmso``), or the
    features unchanged (``none``); constant columns become 0."""

    def zscore(x, reference):
        mean, std = reference.mean(axis=0), reference.std(axis=0)
        return (x - mean) / np.where(std > 0, std, 1.0)

    if how == "none":
        return features.copy()
    if how == "all":
        return zscore(features, features)
    if how == "dmso":
        out = np.empty_like(features)
        for _, rows in meta.groupby("plate").indices.items():
            control = rows[(meta["base_compound"].to_numpy()[rows] == CONTROL)]
            out[rows] = zscore(features[rows], features[control if len(control) else rows])
        return out
    raise hcibench.UsageError(f"unknown normalisation '{how}' for bbbc021: use {', '.join(NORMALISATIONS)}")


class BBBC021(hcibench.Dataset):
    name = "bbbc021"
    description = (
        "BBBC021 per-well CellProfiler profiles (real data, shipped): MoA across "
        "week groups W1-2, W3-6, W7-10"
    )
    modality = "profile"
    default_evaluators = ["accuracy", "f1", "nsc", "nscb"]

    def __init__(self, data: str | None = None, normalise: str = "all", **options):
        super().__init__(data, **options)
        if normalise not in NORMALISATIONS:
            raise hcibench.UsageError(
                f"unknown normalisation '{normalise}' for bbbc021: use {', '.join(NORMALISATIONS)}"
            )
        self.normalise = normalise
        self.folder = Path(data) if data else package_folder()
        self._all: hcibench.Domain | None = None

    @classmethod
    def default_settings(cls, preset: str) -> dict:
        return {"normalise": "all"}

    @classmethod
    def preset_settings(cls, preset: str) -> dict:
        return PAPER if preset == "paper" else QUICK

    def sources(self) -> list[str]:
        return list(DOMAINS)

    def classes(self) -> list[str]:
        meta, _, _ = load_wells(str(self.folder))
        return sorted(meta["label"].dropna().unique())

    @property
    def feature_names(self) -> list[str]:
        return list(load_wells(str(self.folder))[2])

    def wells(self) -> hcibench.Domain:
        """Every well of the dataset as one domain named ``all`` (not a source: for the NSC
        reference on the whole data)."""
        if self._all is None:
            meta, features, _ = load_wells(str(self.folder))
            values = normalise(features, meta, self.normalise)
            meta = meta.assign(source="all")
            self._all = hcibench.Domain(
                "all", meta, hcibench.TensorImages(torch.tensor(values, dtype=torch.float32)), self.classes()
            )
        return self._all

    def domain(self, source: str) -> hcibench.Domain:
        if source not in DOMAINS:
            raise hcibench.UsageError(f"unknown bbbc021 source '{source}': use {', '.join(DOMAINS)}")
        every = self.wells()
        part = every.subset(every.meta["week"].isin(DOMAINS[source]).to_numpy(), source)
        part.meta["source"] = source
        return part


@hcibench.hookimpl
def register_datasets(register):
    register(BBBC021)
