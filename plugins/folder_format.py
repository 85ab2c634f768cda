"""The generic folder format: ``index.csv`` plus one multi-channel TIFF per image.

``index.csv`` has the columns ``INDEX_COLUMNS``; ``path`` is relative to the CSV's folder, e.g.
``images/S3/S3-P01/A01_s1.tiff``. Each TIFF holds a C×H×W array: uint16 (read as value/65535),
uint8 (value/255) or float (taken as is). Any dataset can be written this way, and any tool can
produce the format, so it is also the way to bring one's own images to hcibench.
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

INDEX_COLUMNS = ["path", "source", "batch", "plate", "well", "compound", "label", "site"]
TEXT_COLUMNS = ["path", "source", "batch", "plate", "well", "compound", "label"]


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
        index = pd.concat([_write_domain(dataset.domain(name), staging) for name in names],
                          ignore_index=True)
        index.to_csv(staging / "index.csv", index=False)
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
    paths = [f"images/{s}/{p}/{w}_s{site}.tiff"
             for s, p, w, site in zip(meta["source"], meta["plate"], meta["well"], meta["site"])]
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
    if array.dtype == np.uint16:
        return torch.from_numpy(array.astype(np.float32)) / 65535
    if array.dtype == np.uint8:
        return torch.from_numpy(array.astype(np.float32)) / 255
    return torch.from_numpy(array.astype(np.float32))


class FolderImages:
    """A lazy image store: each ``[i]`` reads one TIFF, so a dataset never sits in memory."""

    def __init__(self, root, paths):
        self.root = Path(root)
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return from_array(tifffile.imread(self.root / self.paths[int(index)]))


def read_folder(out_dir) -> tuple[pd.DataFrame, FolderImages]:
    """The metadata and a lazy image store of a folder written by ``write_folder``."""
    root = Path(out_dir)
    csv = root / "index.csv"
    if not csv.is_file():
        raise UsageError(f"'{root}' has no index.csv; expected a folder written by write_folder")
    meta = pd.read_csv(csv, dtype={column: str for column in TEXT_COLUMNS})
    missing = [c for c in INDEX_COLUMNS if c not in meta.columns]
    if missing:
        raise UsageError(f"{csv} lacks the column(s) {', '.join(missing)}")
    absent = [(row, path) for row, path in enumerate(meta["path"]) if not (root / path).is_file()]
    if absent:
        row, path = absent[0]
        raise UsageError(f"{csv}, row {row + 2}: image file '{path}' does not exist "
                         f"({len(absent)} missing in all)")
    images = FolderImages(root, meta["path"])
    return meta.drop(columns=["path"]), images
