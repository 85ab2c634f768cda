"""The ``deepprofiler`` dataset: single-cell crops exported by DeepProfiler.

``--data`` is the export folder (or its metadata CSV). DeepProfiler writes one 8-bit PNG per
cell, ``<plate>/<well>/<site>/<target>@<X>x<Y>.png``, with the channels tiled side by side
(height × width·C, a mask tile last if one was exported), and ``sc-metadata.csv`` listing them.
The CODA research code used the same crops with its own metadata CSV (``Metadata_Source,
Metadata_Batch, Metadata_Plate, JCP2022_id, Metadata_moa, moa_id, paths``, paths relative to
``<export>/<plate>/``); both are read.

Metadata (first column found; ``--set dataset.columns='{"label": "..."}'`` renames):

* path: ``Image_Name`` (relative to the export folder) or ``paths`` (relative to
  ``<export>/<plate>/``), or ``path``;
* plate, well, site: ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``, else split from
  ``Key`` (``plate/well/site``);
* source, batch: ``Metadata_Source``, ``Metadata_Batch``; else joined from a plate table
  (``--set dataset.plates=plate.csv``, JUMP's or any CSV with ``Metadata_Plate``,
  ``Metadata_Source``, ``Metadata_Batch``); else ``dataset.source`` names one source for all and
  each plate is its own batch;
* compound: ``Metadata_JCP2022``, ``JCP2022_id``, ``Metadata_Compound``, ``compound``,
  ``Treatment``; label: ``Metadata_moa``, ``moa``, ``Class_Name``, ``label``.

Channels: every tile is a channel (``strip_channels``: the number of tiles; default: square
tiles, width / height). ``--set dataset.channels=[0,1,4]`` keeps tiles 0, 1 and 4, as the CODA
code did.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

import hcibench
from hcibench.errors import UsageError
from hcibench_plugins.datasets.files.filedataset import (
    FileDataset,
    ImageIndex,
    Problem,
    channel_positions,
    empty_values,
    read_table,
    resolve_columns,
)
from hcibench_plugins.datasets.files.imagestore import ReadPlan

FIELDS = {
    "path": ["Image_Name", "paths", "path"],
    "source": ["Metadata_Source"],
    "batch": ["Metadata_Batch"],
    "plate": ["Metadata_Plate"],
    "well": ["Metadata_Well"],
    "site": ["Metadata_Site"],
    "key": ["Key"],
    "compound": ["Metadata_JCP2022", "JCP2022_id", "Metadata_Compound", "compound", "Treatment"],
    "label": ["Metadata_moa", "moa", "Class_Name", "label"],
    "inchikey": ["Metadata_InChIKey", "InChIKey"],
}
METADATA_NAMES = ("sc-metadata.csv", "sc-metadata.csv.gz")


def short_source(name: str) -> str:
    """``source_3`` -> ``S3`` (the paper's names); other names unchanged."""
    match = re.fullmatch(r"source_(\d+)", str(name))
    return f"S{int(match.group(1))}" if match else str(name)


class DeepProfilerDataset(FileDataset):
    name = "deepprofiler"
    description = "DeepProfiler single-cell exports (sc-metadata.csv + PNG crops, channels tiled)"

    EXTRA_OPTIONS = {
        "metadata": None,
        "strip_channels": None,
        "plates": None,
        "source": None,
        "short_sources": True,
    }
    FIELDS = list(FIELDS)

    def build_index(self) -> ImageIndex:
        csv = self._metadata_file()
        text = [c for names in FIELDS.values() for c in names] + list(self.renames.values())
        table = read_table(csv, text)
        columns = [str(c) for c in table.columns]
        found = resolve_columns(columns, FIELDS, self.renames, str(csv), required=["path"])
        n = len(table)
        origins = [f"{csv}, row {i + 2}" for i in range(n)]
        problems: list[Problem] = []
        meta = pd.DataFrame(index=range(n))
        key_parts = None
        if found["key"] is not None:
            key_parts = table[found["key"]].astype(str).str.split("/", expand=True)
        for position, field in enumerate(("plate", "well", "site")):
            if found[field] is not None:
                meta[field] = table[found[field]].astype(str)
            elif key_parts is not None and key_parts.shape[1] > position:
                meta[field] = key_parts[position]
            elif field == "site":
                meta[field] = "1"
            else:
                raise UsageError(
                    f"{csv} has no {field} column (Metadata_{field.title()}) and no "
                    f"Key column (plate/well/site) to take it from"
                )
        self._source_and_batch(table, found, meta, csv, problems)
        for field in ("compound", "label", "inchikey"):
            meta[field] = table[found[field]] if found[field] else np.nan
        if found["compound"] is None:
            problems.append(
                Problem(
                    "warning",
                    "missing-column",
                    f"{csv}: no compound column (looked for "
                    f"{', '.join(FIELDS['compound'])}): cross-batch pairs fall "
                    f"back to the image itself",
                )
            )
        if found["label"] is None and not self.settings["moa_drugs"]:
            problems.append(
                Problem(
                    "warning",
                    "missing-column",
                    f"{csv}: no label column (looked for "
                    f"{', '.join(FIELDS['label'])}): every image is unlabelled",
                )
            )
        meta = meta[[*hcibench.META_COLUMNS, "site", "inchikey"]]
        if found["inchikey"] is None:
            meta = meta.drop(columns=["inchikey"])
        path_column = found["path"]
        per_plate = path_column == "paths"
        base = csv.parent
        files = []
        empty = empty_values(table, path_column)
        for row, (value, plate) in enumerate(zip(table[path_column].tolist(), meta["plate"].tolist())):
            if empty[row]:
                problems.append(
                    Problem(
                        "error",
                        "missing-value",
                        f"{origins[row]}, column {path_column}: no image path",
                        None,
                        row,
                    )
                )
                files.append(("",))
                continue
            value = self.map_path(str(value).strip())
            if "://" not in value and not os.path.isabs(value):
                value = os.path.join(base, plate, value) if per_plate else os.path.join(base, value)
            files.append((value,))
        for field in ("plate", "well"):
            for row in np.flatnonzero(empty_values(meta, field)):
                problems.append(
                    Problem("error", "missing-value", f"{origins[row]}: empty {field}", None, row)
                )
        plan = ReadPlan("strip", self._strip_tiles(), self._select(), (path_column,))
        return ImageIndex(meta, files, plan, origins, None, problems)

    def _metadata_file(self) -> Path:
        option = self.settings["metadata"]
        if self.root.is_file():
            return self.root
        candidates = [self.root / str(option)] if option else [self.root / n for n in METADATA_NAMES]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise UsageError(
            f"'{self.root}' has no {' or '.join(c.name for c in candidates)}: give "
            f"the export folder, the metadata CSV itself, or --set "
            f"dataset.metadata=NAME"
        )

    def _source_and_batch(self, table, found, meta, csv, problems) -> None:
        plates = self._plate_table()
        for field in ("source", "batch"):
            if found[field] is not None:
                meta[field] = table[found[field]]
            elif plates is not None and field in plates.columns:
                meta[field] = meta["plate"].map(plates[field])
                unknown = meta["plate"][meta[field].isna()].unique()
                if len(unknown):
                    problems.append(
                        Problem(
                            "warning" if field == "batch" else "error",
                            "unknown-plate",
                            f"{self.settings['plates']}: no row for plate(s) "
                            f"{', '.join(map(str, unknown[:6]))} listed in {csv}",
                        )
                    )
            elif field == "source" and self.settings["source"]:
                meta[field] = str(self.settings["source"])
            elif field == "batch":
                meta[field] = np.nan
            else:
                raise UsageError(
                    f"{csv} has no source column (Metadata_Source): name it with "
                    f'--set dataset.columns=\'{{"source": "COLUMN"}}\', join a '
                    f"plate table with --set dataset.plates=plate.csv, or name one "
                    f"source for all with --set dataset.source=NAME"
                )
        empty = empty_values(meta, "batch")
        if empty.any():
            meta.loc[empty, "batch"] = meta.loc[empty, "plate"]
            problems.append(
                Problem(
                    "warning",
                    "missing-column",
                    f"{csv}: {int(empty.sum())} image(s) without a batch: their plate is taken as the batch",
                )
            )
        if self.settings["short_sources"]:
            meta["source"] = meta["source"].map(lambda s: short_source(s) if isinstance(s, str) else s)

    def _plate_table(self) -> pd.DataFrame | None:
        option = self.settings["plates"]
        if not option:
            return None
        path = self._path(option)
        table = read_table(path)
        needed = ["Metadata_Plate", "Metadata_Source"]
        missing = [c for c in needed if c not in table.columns]
        if missing:
            raise UsageError(f"{path} lacks the column(s) {', '.join(missing)}")
        table = table.drop_duplicates("Metadata_Plate").set_index("Metadata_Plate")
        out = pd.DataFrame({"source": table["Metadata_Source"]})
        if "Metadata_Batch" in table.columns:
            out["batch"] = table["Metadata_Batch"]
        return out

    def _strip_tiles(self) -> int | None:
        value = self.settings["strip_channels"]
        if value in (None, "", 0):
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            raise UsageError(f"dataset option 'strip_channels' must be an integer, got {value!r}") from None

    def _select(self) -> tuple[int, ...] | None:
        channels = self.settings["channels"]
        if channels in (None, "", []):
            return None
        if not isinstance(channels, list | tuple):
            channels = [channels]
        return channel_positions(
            channels,
            f"dataset option 'channels' of deepprofiler: tile positions such as [0,1,4], got {channels!r}",
            "dataset option 'channels': tile positions count from 0",
        )


@hcibench.hookimpl
def register_datasets(register):
    register(DeepProfilerDataset)
