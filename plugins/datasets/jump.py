"""The ``jump`` dataset: JUMP-CP (cpg0016) Cell Painting images through their load_data CSVs.

``--data`` is a local folder holding the load_data CSVs (found with the glob ``load_data``,
default ``**/load_data*.csv*``; where a folder has both ``load_data.csv`` and
``load_data_with_illum.csv``, the second is used unless ``illum`` is ``none``) and the images
they point to, plus the metadata tables ``plate.csv``, ``well.csv``, ``compound.csv`` (``.gz``
too) in ``<data>/metadata``, ``<data>`` or the folder given with ``metadata``.

* load_data in either style: ``FileName_Orig<CH>`` + ``PathName_Orig<CH>`` (optionally
  ``FileName_Illum<CH>`` + ``PathName_Illum<CH>``), or ``URL_Orig<CH>`` (and ``URL_Illum<CH>``)
  with full paths; ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` and, when present,
  ``Metadata_Source`` and ``Metadata_Batch`` (else taken from plate.csv). Relative paths are
  relative to ``--data``; ``path_map`` rewrites prefixes (an ``s3://`` path that is left is an
  error: sync the images locally first).
* channels: ``DNA, ER, RNA, AGP, Mito`` (those present) by default; ``channels`` chooses others
  or an order, by name (``["DNA", "RNA", "Mito"]``) or position. One 16-bit TIFF per channel.
* illumination correction: ``illum=auto`` divides by the ``.npy`` functions the load_data
  names, ``none`` skips it, a folder reads ``<folder>/<plate>/<plate>_Illum<CH>.npy``.
* metadata: plate.csv gives the plate type (``plate_types`` keeps some, e.g. ``["TARGET2"]``),
  well.csv the compound (``Metadata_JCP2022``; ``JCP2022_UNKNOWN`` or none: no compound,
  unlabelled), compound.csv its InChIKey. DMSO (``control``, ``JCP2022_033924``) is never
  labelled.
* labels (``label``): ``moa`` (default) from the Drug Repurposing Hub files ``moa_drugs`` and
  ``moa_samples`` (see ``moa``), ``compound`` (the JCP2022 id), or ``none``.
* source names: ``source_3`` becomes ``S3`` (``short_sources=false`` keeps the original).
* one sample per site; ``crop`` takes a centre crop, ``tile`` cuts each site into tiles.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

import hcibench
from hcibench.errors import UsageError
from hcibench_plugins.datasets.deepprofiler import short_source
from hcibench_plugins.datasets.files.filedataset import FileDataset, ImageIndex, Problem, _list, read_table
from hcibench_plugins.datasets.files.imagestore import ReadPlan

CELL_PAINTING = ["DNA", "ER", "RNA", "AGP", "Mito"]
DMSO = "JCP2022_033924"
UNKNOWN_COMPOUND = "JCP2022_UNKNOWN"
LABELS = ("moa", "compound", "none")


def normalise_well(well) -> str:
    """``A1``, ``a01``, ``A001`` -> ``A01``."""
    match = re.fullmatch(r"\s*([A-Za-z]+)0*(\d+)\s*", str(well))
    return f"{match.group(1).upper()}{int(match.group(2)):02d}" if match else str(well).strip()


def _metadata_table(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.csv", folder / f"{name}.csv.gz"):
        if candidate.is_file():
            return candidate
    return None


class JumpDataset(FileDataset):
    name = "jump"
    description = "JUMP-CP cpg0016 images via load_data CSVs + plate/well/compound tables"

    EXTRA_OPTIONS = {
        "load_data": "**/load_data*.csv*",
        "metadata": None,
        "plate_types": None,
        "illum": "auto",
        "label": "moa",
        "short_sources": True,
        "control": DMSO,
    }
    FIELDS = ["source", "batch", "plate", "well", "compound", "label", "inchikey"]

    def build_index(self) -> ImageIndex:
        if self.renames:
            raise UsageError(
                "dataset 'jump' reads the cpg0016 column names as they are: "
                "dataset.columns does not apply (use the folder dataset for other "
                "layouts)"
            )
        label = str(self.settings["label"]).lower()
        if label not in LABELS:
            raise UsageError(
                f"dataset option 'label' of jump must be one of {', '.join(LABELS)}, got '{label}'"
            )
        if label == "moa" and not (self.settings["moa_drugs"] and self.settings["moa_samples"]):
            raise UsageError(
                "jump labels are mechanisms of action from the Drug Repurposing Hub: give its "
                "files with --set dataset.moa_drugs=repurposing_drugs.txt --set "
                "dataset.moa_samples=repurposing_samples.txt (or --set dataset.label=compound, "
                "or none)"
            )
        if not self.root.is_dir():
            raise UsageError(f"--data {self.root}: the jump dataset needs a folder")
        problems: list[Problem] = []
        tables = [self._read_load_data(path, problems) for path in self._load_data_files()]
        images = pd.concat(tables, ignore_index=True)
        channels = self._channels(images)
        meta = self._join_metadata(images, problems, label)
        keep = meta.pop("_keep").to_numpy(dtype=bool)
        images = images[keep].reset_index(drop=True)
        meta = meta[keep].reset_index(drop=True)
        origins = images["_origin"].tolist()
        files = list(zip(*(images[f"_path_{c}"].tolist() for c in channels)))
        illum = self._illum_files(images, meta, channels)
        if illum is not None:
            self._check_illum(illum, origins, channels, problems)
        for row in np.flatnonzero(meta["plate"].isna().to_numpy()):
            problems.append(
                Problem(
                    "error", "missing-value", f"{origins[row]}, column Metadata_Plate: empty plate", None, row
                )
            )
        plan = ReadPlan("channels", None, None, tuple(f"Orig{c}" for c in channels))
        return ImageIndex(meta, files, plan, origins, illum, problems)

    def _illum_files(self, images, meta, channels) -> list[tuple] | None:
        option = str(self.settings["illum"])
        if option.lower() == "none":
            return None
        if option.lower() == "auto":
            columns = [f"_illum_{c}" for c in channels]
            if not any(c in images.columns for c in columns):
                return None
            values = [images[c].tolist() if c in images.columns else [None] * len(images) for c in columns]
            return [tuple(v if isinstance(v, str) and v else None for v in row) for row in zip(*values)]
        folder = self._path(option)
        if not folder.is_dir():
            raise UsageError(
                f"dataset option 'illum': {folder} is not a folder (give 'auto', "
                f"'none' or a folder holding <plate>/<plate>_Illum<CH>.npy)"
            )
        return [
            tuple(str(folder / plate / f"{plate}_Illum{c}.npy") for c in channels)
            for plate in meta["plate"].astype(str)
        ]

    # -- load_data ---------------------------------------------------------------------------

    def _load_data_files(self) -> list[Path]:
        patterns = self.settings["load_data"]
        patterns = patterns if isinstance(patterns, list | tuple) else [patterns]
        found = []
        for pattern in patterns:
            path = self._path(pattern)
            found += [path] if path.is_file() else sorted(self.root.glob(str(pattern)))
        found = [p for p in dict.fromkeys(found) if p.is_file()]
        if not found:
            raise UsageError(
                f"no load_data CSV under {self.root} (looked for "
                f"{', '.join(map(str, patterns))}); point at them with --set "
                f"dataset.load_data='GLOB'"
            )
        by_folder: dict[Path, list[Path]] = {}
        for path in found:
            by_folder.setdefault(path.parent, []).append(path)
        chosen = []
        for paths in by_folder.values():
            with_illum = [p for p in paths if "with_illum" in p.name]
            plain = [p for p in paths if "with_illum" not in p.name]
            if str(self.settings["illum"]).lower() == "none":
                chosen += plain or with_illum
            else:
                chosen += with_illum or plain
        return chosen

    def _read_load_data(self, path: Path, problems: list[Problem]) -> pd.DataFrame:
        table = read_table(path)
        columns = [str(c) for c in table.columns]
        for needed in ("Metadata_Plate", "Metadata_Well"):
            if needed not in columns:
                raise UsageError(f"{path} lacks the column {needed}; its columns are: {_list(columns)}")
        url = {c[len("URL_Orig") :]: c for c in columns if c.startswith("URL_Orig")}
        names = {c[len("FileName_Orig") :]: c for c in columns if c.startswith("FileName_Orig")}
        folders = {c[len("PathName_Orig") :]: c for c in columns if c.startswith("PathName_Orig")}
        out = pd.DataFrame(
            {
                "plate": table["Metadata_Plate"],
                "well": table["Metadata_Well"].map(normalise_well),
                "site": table["Metadata_Site"] if "Metadata_Site" in columns else "1",
                "source": table["Metadata_Source"] if "Metadata_Source" in columns else np.nan,
                "batch": table["Metadata_Batch"] if "Metadata_Batch" in columns else np.nan,
            }
        )
        out["_origin"] = [f"{path}, row {i + 2}" for i in range(len(table))]
        if names:
            lacking = [c for c in names if c not in folders]
            if lacking:
                raise UsageError(f"{path}: FileName_Orig{lacking[0]} has no PathName_Orig{lacking[0]} column")
            for channel, column in names.items():
                out[f"_path_{channel}"] = self._join(table[folders[channel]], table[column])
            for channel in names:
                file_column, folder_column = f"FileName_Illum{channel}", f"PathName_Illum{channel}"
                if file_column in columns and folder_column in columns:
                    out[f"_illum_{channel}"] = self._join(table[folder_column], table[file_column])
        elif url:
            for channel, column in url.items():
                out[f"_path_{channel}"] = [self._local(v) for v in table[column]]
                if f"URL_Illum{channel}" in columns:
                    out[f"_illum_{channel}"] = [self._local(v) for v in table[f"URL_Illum{channel}"]]
        else:
            raise UsageError(
                f"{path} has neither FileName_Orig<CH>/PathName_Orig<CH> nor "
                f"URL_Orig<CH> columns: is it a load_data CSV? Its columns are: "
                f"{_list(columns)}"
            )
        return out

    def _join(self, folders: pd.Series, names: pd.Series) -> list[str]:
        return [
            self._local(f"{str(folder).rstrip('/')}/{name}")
            if isinstance(folder, str) and isinstance(name, str)
            else ""
            for folder, name in zip(folders, names)
        ]

    def _local(self, value) -> str:
        if not isinstance(value, str) or not value.strip():
            return ""
        value = self.map_path(value.strip())
        if value.startswith("file://"):
            value = value[len("file://") :]
        if "://" in value or os.path.isabs(value):
            return value
        return str(self.root / value)

    def _channels(self, images: pd.DataFrame) -> list[str]:
        present = [c[len("_path_") :] for c in images.columns if c.startswith("_path_")]
        option = self.settings["channels"]
        if option in (None, "", []):
            chosen = [c for c in CELL_PAINTING if c in present] or present
        else:
            option = option if isinstance(option, list | tuple) else [option]
            default = [c for c in CELL_PAINTING if c in present] or present
            chosen = []
            for item in option:
                if isinstance(item, int) and not isinstance(item, bool):
                    if not 0 <= item < len(default):
                        raise UsageError(
                            f"dataset option 'channels': position {item} is out of "
                            f"range for {', '.join(default)}"
                        )
                    chosen.append(default[item])
                elif str(item) in present:
                    chosen.append(str(item))
                else:
                    raise UsageError(
                        f"dataset option 'channels': no channel '{item}' in the "
                        f"load_data files; they have {', '.join(present)}"
                    )
        incomplete = images[[f"_path_{c}" for c in chosen]].isna().any(axis=1)
        if incomplete.any():
            row = int(np.flatnonzero(incomplete.to_numpy())[0])
            missing = [c for c in chosen if pd.isna(images[f"_path_{c}"].iat[row])]
            raise UsageError(
                f"{images['_origin'].iat[row]}: no Orig{missing[0]} column in this "
                f"load_data file, though others have it; choose channels present in "
                f"all with --set dataset.channels=[...]"
            )
        return chosen

    def _check_illum(self, illum, origins, channels, problems) -> None:
        """An image whose illumination function is missing is a bad image (named per row)."""
        exists: dict[str, bool] = {}
        for row, paths in enumerate(illum):
            for channel, path in zip(channels, paths):
                if path is None:
                    continue
                if path not in exists:
                    exists[path] = os.path.isfile(path)
                if not exists[path]:
                    problems.append(
                        Problem(
                            "error",
                            "missing-illum",
                            f"{origins[row]}, column Illum{channel}: illumination "
                            f"function '{path}' does not exist",
                            None,
                            row,
                        )
                    )
                    break

    # -- metadata ----------------------------------------------------------------------------

    def _metadata_folder(self) -> Path | None:
        option = self.settings["metadata"]
        folders = [self._path(option)] if option else [self.root / "metadata", self.root]
        for folder in folders:
            if _metadata_table(folder, "plate") or _metadata_table(folder, "well"):
                return folder
        if option:
            raise UsageError(f"dataset option 'metadata': {folders[0]} holds no plate.csv or well.csv")
        return None

    def _join_metadata(self, images: pd.DataFrame, problems: list[Problem], label: str) -> pd.DataFrame:
        folder = self._metadata_folder()
        meta = images[["source", "batch", "plate", "well", "site"]].copy()
        meta["compound"] = np.nan
        meta["label"] = np.nan
        meta["plate_type"] = np.nan
        meta["inchikey"] = np.nan
        meta["_keep"] = True
        plate_path = _metadata_table(folder, "plate") if folder else None
        well_path = _metadata_table(folder, "well") if folder else None
        compound_path = _metadata_table(folder, "compound") if folder else None
        if label != "none" and well_path is None:
            raise UsageError(
                f"no well.csv (or well.csv.gz) in {folder or self.root / 'metadata'} "
                f"or {self.root}: it gives each well's compound; point at its folder "
                f"with --set dataset.metadata=DIR (or --set dataset.label=none)"
            )
        if plate_path is not None:
            plates = read_table(plate_path).drop_duplicates("Metadata_Plate").set_index("Metadata_Plate")
            for field, column in (
                ("source", "Metadata_Source"),
                ("batch", "Metadata_Batch"),
                ("plate_type", "Metadata_PlateType"),
            ):
                if column in plates.columns:
                    mapped = meta["plate"].map(plates[column]).astype(object)
                    meta[field] = meta[field].astype(object).fillna(mapped)
            self._filter_plate_types(meta, plates, plate_path, problems)
        for field in ("source", "batch"):
            empty = meta[field].isna() & meta["_keep"]
            if empty.any():
                where = f"{images['_origin'].iat[int(np.flatnonzero(empty.to_numpy())[0])]}"
                raise UsageError(
                    f"{where}: no Metadata_{field.title()} in the load_data file"
                    + (
                        f" and plate '{meta['plate'][empty].iat[0]}' is not in {plate_path}"
                        if plate_path
                        else " and no plate.csv to take it from"
                    )
                )
        if self.settings["short_sources"]:
            meta["source"] = meta["source"].map(short_source)
        if well_path is not None:
            self._join_wells(meta, images, well_path, compound_path, problems)
        control = (meta["compound"] == str(self.settings["control"])).to_numpy()
        meta["control"] = control
        if label == "compound":
            meta["label"] = meta["compound"].where(~control, np.nan)
        columns = [*hcibench.META_COLUMNS, "site", "plate_type", "inchikey", "control", "_keep"]
        return meta[columns]

    def _filter_plate_types(self, meta, plates, plate_path, problems) -> None:
        types = self.settings["plate_types"]
        loaded = set(meta["plate"].dropna())
        if types:
            types = [types] if isinstance(types, str) else [str(t) for t in types]
            unknown = meta["plate_type"].isna()
            meta["_keep"] = meta["plate_type"].isin(types).to_numpy()
            if unknown.any():
                missing = sorted(meta.loc[unknown, "plate"].dropna().unique())
                problems.append(
                    Problem(
                        "warning",
                        "unknown-plate",
                        f"{plate_path}: no row for {len(missing)} plate(s) with images "
                        f"({_list(missing, 6)}): left out by plate_types",
                    )
                )
            wanted = (
                plates.index[plates["Metadata_PlateType"].isin(types)]
                if "Metadata_PlateType" in plates.columns
                else []
            )
        else:
            wanted = plates.index
        sources = set(meta["source"].dropna())
        if "Metadata_Source" in plates.columns and sources:
            wanted = [p for p in wanted if plates.at[p, "Metadata_Source"] in sources]
        without = sorted(set(wanted) - loaded)
        if without:
            problems.append(
                Problem(
                    "warning",
                    "plate-without-images",
                    f"{plate_path}: {len(without)} plate(s) of the loaded sources have no load_data "
                    f"rows ({_list(without, 6)})",
                )
            )

    def _join_wells(self, meta, images, well_path, compound_path, problems) -> None:
        wells = read_table(well_path)
        for needed in ("Metadata_Plate", "Metadata_Well", "Metadata_JCP2022"):
            if needed not in wells.columns:
                raise UsageError(f"{well_path} lacks the column {needed}")
        wells = wells.assign(Metadata_Well=wells["Metadata_Well"].map(normalise_well))
        wells = wells.drop_duplicates(["Metadata_Plate", "Metadata_Well"])
        lookup = wells.set_index(["Metadata_Plate", "Metadata_Well"])["Metadata_JCP2022"]
        keys = pd.MultiIndex.from_arrays([meta["plate"].astype(str), meta["well"].astype(str)])
        compound = pd.Series(lookup.reindex(keys).to_numpy(), index=meta.index)
        kept = meta["_keep"].to_numpy()
        no_row = compound.isna().to_numpy() & kept
        if no_row.any():
            first = int(np.flatnonzero(no_row)[0])
            missing_wells = meta.loc[no_row, ["plate", "well"]].drop_duplicates()
            problems.append(
                Problem(
                    "warning",
                    "well-without-metadata",
                    f"{images['_origin'].iat[first]}: {int(no_row.sum())} image(s) in "
                    f"{len(missing_wells)} well(s) have no row in {well_path} (first: plate "
                    f"{meta['plate'].iat[first]}, well {meta['well'].iat[first]}): unlabelled",
                )
            )
        loaded = meta.loc[kept, ["plate", "well"]].astype(str).drop_duplicates()
        listed = wells[wells["Metadata_Plate"].isin(set(loaded["plate"]))]
        pairs = set(zip(loaded["plate"], loaded["well"]))
        without = [
            (p, w) for p, w in zip(listed["Metadata_Plate"], listed["Metadata_Well"]) if (p, w) not in pairs
        ]
        if without:
            problems.append(
                Problem(
                    "warning",
                    "well-without-images",
                    f"{well_path}: {len(without)} well(s) of the loaded plates have no images (first: "
                    f"plate {without[0][0]}, well {without[0][1]})",
                )
            )
        unknown = compound.astype(str).str.strip().isin([UNKNOWN_COMPOUND, "", "nan"])
        compound = compound.where(~unknown, np.nan)
        meta["compound"] = compound
        if compound_path is not None:
            compounds = read_table(compound_path)
            if "Metadata_JCP2022" not in compounds.columns:
                raise UsageError(f"{compound_path} lacks the column Metadata_JCP2022")
            compounds = compounds.drop_duplicates("Metadata_JCP2022").set_index("Metadata_JCP2022")
            if "Metadata_InChIKey" in compounds.columns:
                meta["inchikey"] = meta["compound"].map(compounds["Metadata_InChIKey"])
            ids = set(meta.loc[kept, "compound"].dropna())
            absent = sorted(ids - set(compounds.index) - {str(self.settings["control"])})
            if absent:
                problems.append(
                    Problem(
                        "warning",
                        "unknown-compound",
                        f"{compound_path}: {len(absent)} compound id(s) of well.csv are not listed "
                        f"({_list(absent, 6)}): unlabelled",
                    )
                )
        elif self.settings["label"] == "moa":
            raise UsageError(f"MoA labels need compound.csv (InChIKeys) beside {well_path}")


@hcibench.hookimpl
def register_datasets(register):
    register(JumpDataset)
