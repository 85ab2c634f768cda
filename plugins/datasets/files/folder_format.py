"""The generic folder format: an index CSV, one row per image, plus the image files.

``write_folder`` writes ``index.csv`` with the columns ``INDEX_COLUMNS`` (``path`` relative to
the CSV's folder, e.g. ``images/S3/S3-P01/A01_s1.tiff``), one C×H×W uint16 TIFF per image and
``classes.txt`` (the class list, in order). ``read_index`` reads that, and what other tools
write: the metadata columns under other names (``FIELDS`` lists the names looked for;
``columns`` renames), channels as separate files (``path_<CHANNEL>`` columns), as the pages of
one TIFF, or side by side in a strip (``strip_channels``); 8- or 16-bit PNG or TIFF. Pixel
values are read as value/65535 (uint16), value/255 (uint8), float as is. It is the one reader of
the format: the ``folder`` dataset and ``read_folder`` both use it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import torch

from hcibench.errors import UsageError, unknown_name
from hcibench_plugins.datasets.files.filedataset import (
    ImageIndex,
    Problem,
    channel_positions,
    empty_values,
    file_problems,
    read_table,
    resolve_columns,
)
from hcibench_plugins.datasets.files.imagefiles import to_unit
from hcibench_plugins.datasets.files.imagestore import FileImages, ReadPlan

INDEX_COLUMNS = ["path", "source", "batch", "plate", "well", "compound", "label", "site"]
TEXT_COLUMNS = ["path", "source", "batch", "plate", "well", "compound", "label"]
INDEX_FILE = "index.csv"
CLASSES_FILE = "classes.txt"
# Metadata field -> the column names looked for, in order (``dataset.columns`` renames).
FIELDS = {
    "path": ["path", "Image_Path", "file", "filename", "FileName"],
    "source": ["source", "Metadata_Source"],
    "batch": ["batch", "Metadata_Batch"],
    "plate": ["plate", "Metadata_Plate"],
    "well": ["well", "Metadata_Well"],
    "compound": ["compound", "Metadata_Compound", "Metadata_JCP2022", "JCP2022_id"],
    "label": ["label", "moa", "Metadata_moa", "Metadata_MoA"],
    "site": ["site", "Metadata_Site"],
    "inchikey": ["inchikey", "InChIKey", "Metadata_InChIKey"],
}
CHANNEL_PREFIX = "path_"


def write_folder(dataset, out_dir, sources=None) -> pd.DataFrame:
    """Write ``sources`` (default: all) of an image ``dataset`` to ``out_dir``; return the index.

    Everything is written into a temporary folder beside ``out_dir`` and renamed at the end, so
    an interrupted write never leaves a half-written dataset under the final name.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"output folder '{out}' exists and is not empty; choose a new folder")
    names = list(sources) if sources else dataset.sources()
    for name in names:
        if name not in dataset.sources():
            raise unknown_name("source", name, dataset.sources())
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        index = pd.concat([_write_domain(dataset.domain(name), staging) for name in names], ignore_index=True)
        index.to_csv(staging / "index.csv", index=False)
        (staging / CLASSES_FILE).write_text("".join(f"{c}\n" for c in dataset.classes()))
        if out.exists():
            out.rmdir()  # empty (checked above); rename cannot replace a folder
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return index


def _write_domain(domain, root: Path) -> pd.DataFrame:
    meta = domain.meta.copy()
    if "site" not in meta.columns:  # number the images of each well
        meta["site"] = meta.groupby(["plate", "well"]).cumcount() + 1
    meta["path"] = _relative_paths(meta)
    for position, relative in enumerate(meta["path"]):
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(target, to_uint16(domain.images[position]), photometric="minisblack")
    return meta[INDEX_COLUMNS]


def _relative_paths(meta: pd.DataFrame) -> list[str]:
    """``images/<source>/<plate>/<well>_s<site>.tiff``; the row number is added where those
    fields do not identify an image on their own."""
    paths = [
        f"images/{s}/{p}/{w}_s{site}.tiff"
        for s, p, w, site in zip(meta["source"], meta["plate"], meta["well"], meta["site"])
    ]
    if len(set(paths)) < len(paths):
        paths = [path.replace(".tiff", f"_{i}.tiff") for i, path in enumerate(paths)]
    return paths


def to_uint16(image: torch.Tensor) -> np.ndarray:
    """A [0, 1] float image as 16-bit levels (exact for images already quantised to them)."""
    return np.round(image.detach().cpu().float().clamp(0, 1).numpy() * 65535).astype(np.uint16)


def from_array(array: np.ndarray) -> torch.Tensor:
    """A TIFF array as a float32 C×H×W tensor in [0, 1]."""
    if array.ndim == 2:
        array = array[None]
    return torch.from_numpy(to_unit(array))


def index_path(data, name: str = INDEX_FILE) -> Path:
    """The index CSV: ``data`` itself when it is a file, else ``data/name``."""
    path = Path(data).expanduser()
    if path.is_file():
        return path
    csv = path / name
    if not csv.is_file():
        raise UsageError(
            f"'{path}' has no {name}; expected a folder with an index CSV (e.g. "
            f"written by `hcibench data synth`), or give the CSV itself with --data"
        )
    return csv


CELLPROFILER_FILE, CELLPROFILER_FOLDER = "FileName_", "PathName_"


def _named_channel_columns(table: pd.DataFrame, csv, channel_columns) -> list[str]:
    """Add a ``path_<CHANNEL>`` column per channel that the index names otherwise, and return
    the columns it came from (they are not metadata).

    ``channel_columns`` maps channel names to columns (a JSON object) or lists the columns in
    channel order (named after the columns); without it, CellProfiler's ``FileName_<CH>`` (and
    ``PathName_<CH>`` folder) pairs are recognised when the index has no ``path`` columns."""
    columns = [str(c) for c in table.columns]
    if channel_columns in (None, "", [], {}):
        if any(c.startswith(CHANNEL_PREFIX) for c in columns) or "path" in columns:
            return []
        files = [c for c in columns if c.startswith(CELLPROFILER_FILE)]
        mapping = {c[len(CELLPROFILER_FILE) :]: c for c in files}
    elif isinstance(channel_columns, dict):
        mapping = {str(k): str(v) for k, v in channel_columns.items()}
    elif isinstance(channel_columns, (list, tuple)):
        mapping = {str(c): str(c) for c in channel_columns}
    else:
        raise UsageError(
            f"dataset option 'channel_columns' must be a list of column names "
            f'(e.g. ["img_c1", "img_c2"]) or an object channel -> column, got '
            f"{channel_columns!r}"
        )
    used = []
    for channel, column in mapping.items():
        if column not in columns:
            raise UsageError(
                f"{csv}: no column '{column}' (dataset.channel_columns, channel "
                f"{channel}); its columns are: {', '.join(columns)}"
            )
        paths = table[column].astype("string")
        folder = CELLPROFILER_FOLDER + column[len(CELLPROFILER_FILE) :]
        if column.startswith(CELLPROFILER_FILE) and folder in columns:
            paths = table[folder].astype("string").str.rstrip("/") + "/" + paths
            used.append(folder)
        table[CHANNEL_PREFIX + channel] = paths.astype(object).where(paths.notna(), None)
        used.append(column)
    return used


def read_index(
    data,
    renames: dict | None = None,
    channels=None,
    strip_channels=None,
    name: str = INDEX_FILE,
    map_path=None,
    channel_columns=None,
) -> ImageIndex:
    """The generic index CSV at ``data`` (a folder holding ``name``, or the CSV) as an
    :class:`ImageIndex`: metadata (``META_COLUMNS``, then the CSV's other columns), the file
    paths of every row (relative paths are relative to the CSV's folder) and the problems of
    rows (an empty path, source or plate) and columns (no batch, compound or label column)."""
    renames = dict(renames or {})
    csv = index_path(data, name)
    text = [c for field, names in FIELDS.items() if field != "site" for c in names]
    text += [c for field, c in renames.items() if field != "site"]
    if isinstance(channel_columns, dict):
        text += [str(c) for c in channel_columns.values()]
    elif isinstance(channel_columns, (list, tuple)):
        text += [str(c) for c in channel_columns]
    table = read_table(csv, text)
    named = _named_channel_columns(table, csv, channel_columns)
    table = table.drop(columns=named)
    columns = [str(c) for c in table.columns]
    found = resolve_columns(columns, FIELDS, renames, str(csv), required=["source", "plate"])
    channel_columns = [c for c in columns if c.startswith(CHANNEL_PREFIX)]
    plan, path_columns = _plan(csv, found, channel_columns, channels, strip_channels, "path" in renames)
    base = csv.parent
    problems = []
    n = len(table)
    origins = [f"{csv}, row {i + 2}" for i in range(n)]
    meta = pd.DataFrame(index=range(n))
    for field in ["source", "batch", "plate", "well", "compound", "label"]:
        column = found.get(field)
        meta[field] = table[column] if column else np.nan
    no_source = empty_values(table, found["source"])

    def source_of(row: int) -> str | None:
        """The row's source where it names one, so that its skip is counted against it."""
        return None if no_source[row] else str(meta["source"].iloc[row])

    for field, column in (("source", found["source"]), ("plate", found["plate"])):
        for row in np.flatnonzero(empty_values(table, column)):
            problems.append(
                Problem(
                    "error",
                    "missing-value",
                    f"{origins[row]}, column {column}: empty {field}",
                    source_of(row),
                    row,
                )
            )
    if found["batch"] is None:
        meta["batch"] = meta["plate"]
        problems.append(
            Problem(
                "warning",
                "missing-column",
                f"{csv}: no batch column (looked for {', '.join(FIELDS['batch'])}): "
                f"each plate is taken as its own batch",
            )
        )
    else:
        empty = empty_values(table, found["batch"]) & ~empty_values(table, found["plate"])
        if empty.any():
            meta.loc[empty, "batch"] = meta.loc[empty, "plate"]
            problems.append(
                Problem(
                    "warning",
                    "missing-value",
                    f"{csv}, column {found['batch']}: {int(empty.sum())} empty "
                    f"batch value(s) (first at row {np.flatnonzero(empty)[0] + 2}): "
                    f"their plate is taken as the batch",
                )
            )
    for field, consequence in (
        ("compound", "cross-batch pairs fall back to the image itself"),
        ("label", "every image is unlabelled"),
    ):
        if found[field] is None:
            problems.append(
                Problem(
                    "warning",
                    "missing-column",
                    f"{csv}: no {field} column (looked for {', '.join(FIELDS[field])}): {consequence}",
                )
            )
    if found["well"] is None:
        meta["well"] = ""
    for field in ("site", "inchikey"):
        if found[field]:
            meta[field] = table[found[field]]
    used = {c for c in found.values() if c} | set(path_columns) | set(channel_columns)
    for column in columns:
        if column not in used and column not in meta.columns:
            meta[column] = table[column]
    meta.loc[meta["source"].notna() & empty_values(meta, "source"), "source"] = np.nan
    map_path = map_path or (lambda p: p)
    values = [table[c].to_numpy() for c in path_columns]
    files = []
    for row in range(n):
        paths = []
        for position, column_values in enumerate(values):
            value = column_values[row]
            if not isinstance(value, str) or not value.strip():
                problems.append(
                    Problem(
                        "error",
                        "missing-value",
                        f"{origins[row]}, column {path_columns[position]}: no image path",
                        source_of(row),
                        row,
                    )
                )
                paths.append("")
                continue
            value = map_path(value.strip())
            paths.append(value if "://" in value or os.path.isabs(value) else os.path.join(base, value))
        files.append(tuple(paths))
    return ImageIndex(meta, files, plan, origins, None, problems)


def _plan(csv, found, channel_columns, channels, strip_channels, path_renamed):
    """The read plan and the path columns of the index."""
    if strip_channels not in (None, "", 0):
        try:
            strip_channels = int(strip_channels)
        except (TypeError, ValueError):
            raise UsageError(
                f"dataset option 'strip_channels' must be an integer, got {strip_channels!r}"
            ) from None
    else:
        strip_channels = None
    if channels is not None and not isinstance(channels, list | tuple):
        channels = [channels]
    if channel_columns and not path_renamed:
        if strip_channels:
            raise UsageError(
                f"{csv}: 'strip_channels' reads one file per image, but the index "
                f"has one column per channel ({', '.join(channel_columns)})"
            )
        names = [c[len(CHANNEL_PREFIX) :] for c in channel_columns]
        chosen = channel_columns
        if channels:
            chosen = []
            for item in channels:
                if isinstance(item, int) and not isinstance(item, bool):
                    if not 0 <= item < len(channel_columns):
                        raise UsageError(
                            f"dataset option 'channels': position {item} is out of "
                            f"range for {len(channel_columns)} channel columns"
                        )
                    chosen.append(channel_columns[item])
                elif str(item) in names:
                    chosen.append(CHANNEL_PREFIX + str(item))
                elif str(item) in channel_columns:
                    chosen.append(str(item))
                else:
                    raise UsageError(
                        f"dataset option 'channels': no channel '{item}' in {csv}; "
                        f"its channels are {', '.join(names)}"
                    )
        return ReadPlan("channels", None, None, tuple(chosen)), list(chosen)
    if found["path"] is None:
        raise UsageError(
            f"{csv} has no image path column: name it 'path' (one file per image) "
            f"or 'path_<CHANNEL>' (one file per channel), or rename yours with "
            f'--set dataset.columns=\'{{"path": "COLUMN"}}\''
        )
    select = None
    if channels:
        select = channel_positions(
            channels,
            f"dataset option 'channels': {channels!r}: with one file per image, "
            f"channels are chosen by position (0, 1, ...)",
            "dataset option 'channels': positions count from 0",
        )
    layout = "strip" if strip_channels else "file"
    return ReadPlan(layout, strip_channels, select, (found["path"],)), [found["path"]]


def read_folder(out_dir) -> tuple[pd.DataFrame, FileImages]:
    """The metadata and a lazy image store of a folder in the generic format (as written by
    ``write_folder``). Raises UsageError for a missing file or a bad row."""
    index = read_index(out_dir)
    errors = [p for p in index.problems if p.severity == "error"]
    if errors:
        raise UsageError(errors[0].message)
    bad, _ = file_problems(index.files, index.plan, index.origins, "exists")
    if bad:
        raise UsageError(f"{bad[0][2]} ({len(bad)} missing in all)")
    return index.meta, FileImages(index.files, index.plan, origins=index.origins)
