"""A lazy image store over files on disk, with the pre-processing applied as images are read.

One sample is read per ``[i]``; ``take(indices)`` reads a batch, decoding its files in a thread
pool (TIFF and PNG decoders release the GIL). Nothing is cached but the per-plate statistics of
``normalise`` (computed once, on a sample of each plate's images) and a few illumination
functions, so memory stays flat however large the dataset is.

The steps, in order, each off by default (:class:`Preprocess`):

1. decode (:mod:`imagefiles`), divide by the illumination function where one is given, scale to
   [0, 1] by the dtype (uint16 / 65535, uint8 / 255), keep the selected channels;
2. ``crop`` (one centre crop per image) or ``tile`` (the image is cut into a grid of tiles, each a
   sample), then ``resize`` (bilinear, antialiased);
3. ``clip``: per image and channel, clip to the [low, high] percentiles and rescale to [0, 1];
4. ``normalise``: per plate and channel, subtract the mean and divide by the standard deviation
   of the plate's images (``plate``) or of its control wells (``dmso``), measured on up to
   ``norm_sample`` images of the plate after steps 1-3.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hcibench.errors import UsageError
from hcibench_plugins.datasets.files.imagefiles import ImageError, read_array, split_strip, to_unit

NORMALISATIONS = ("none", "plate", "dmso")
LAYOUTS = ("file", "channels", "strip")
PARALLEL_MIN = 8  # batches smaller than this are read in the calling thread
# With workers=0 (auto) the pool is used for images of at least this many pixels per channel:
# below it, thread overhead outweighs the decoding it spreads (bench_io.py).
LARGE_PIXELS = 256 * 256


def _pair(name: str, value) -> tuple[int, int] | None:
    if value is None or value == "" or value is False:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value, value]
    try:
        height, width = (int(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(
            f"dataset option '{name}' must be a size in pixels (64) or [height, width], got {value!r}"
        ) from None
    if height < 1 or width < 1:
        raise UsageError(f"dataset option '{name}' must be positive, got {value!r}")
    return height, width


@dataclass(frozen=True)
class Preprocess:
    """The pre-processing options shared by the file datasets (see the module docstring)."""

    crop: tuple[int, int] | None = None
    tile: tuple[int, int] | None = None
    resize: tuple[int, int] | None = None
    clip: tuple[float, float] | None = None
    normalise: str = "none"
    norm_sample: int = 64

    @classmethod
    def from_options(
        cls, crop=None, tile=None, resize=None, clip=None, normalise="none", norm_sample=64
    ) -> Preprocess:
        crop, tile, resize = _pair("crop", crop), _pair("tile", tile), _pair("resize", resize)
        if crop and tile:
            raise UsageError("dataset options 'crop' and 'tile' exclude each other: give one")
        if clip is not None and clip != "" and clip is not False:
            if isinstance(clip, int | float):
                clip = [clip, 100 - clip]
            try:
                low, high = (float(v) for v in clip)
            except (TypeError, ValueError):
                raise UsageError(
                    f"dataset option 'clip' must be [low, high] percentiles, e.g. [0.1, 99.9], got {clip!r}"
                ) from None
            if not 0 <= low < high <= 100:
                raise UsageError(f"dataset option 'clip' needs 0 <= low < high <= 100, got {clip!r}")
            clip = (low, high)
        else:
            clip = None
        normalise = str(normalise or "none").lower()
        if normalise not in NORMALISATIONS:
            raise UsageError(
                f"dataset option 'normalise' must be one of {', '.join(NORMALISATIONS)}, got '{normalise}'"
            )
        try:
            norm_sample = int(norm_sample)
        except (TypeError, ValueError):
            norm_sample = 0
        if norm_sample < 1:
            raise UsageError("dataset option 'norm_sample' must be a positive integer")
        return cls(crop, tile, resize, clip, normalise, norm_sample)


@dataclass(frozen=True)
class ReadPlan:
    """How the files of one row become a C×H×W image.

    ``layout``: ``file`` (one file holds every channel), ``channels`` (one single-channel file per
    channel) or ``strip`` (one file, channels side by side; ``strip_tiles`` of them, None:
    square tiles). ``select``: channel positions kept after assembly (None: all).
    ``columns``: a name per file for messages (the index column it came from)."""

    layout: str = "file"
    strip_tiles: int | None = None
    select: tuple[int, ...] | None = None
    columns: tuple[str, ...] = ("path",)


@functools.lru_cache(maxsize=4)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="hcibench-read")


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class IllumCache:
    """Illumination functions (``.npy``) as float32, the most recently used few kept."""

    def __init__(self, size: int = 16):
        self.size = size
        self.items: OrderedDict[str, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, path: str) -> np.ndarray:
        with self.lock:
            if path in self.items:
                self.items.move_to_end(path)
                return self.items[path]
        array = np.load(path, allow_pickle=False).astype(np.float32)
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        with self.lock:
            self.items[path] = array
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return array


class FileImages:
    """Samples read from files: ``len()``, ``[i]`` (a float32 C×H×W tensor) and ``take``.

    ``files[r]``: the paths of row ``r`` (one per channel for the ``channels`` layout, else one);
    ``illum[r]``: per file an illumination ``.npy`` path or None (or ``illum`` None);
    ``groups[r]``: the plate key of row ``r`` (for ``normalise``), ``reference[r]``: whether the
    row is used for its plate's statistics (``dmso``: the control wells); ``origins[r]``: where
    the row was listed (``"index.csv, row 12"``) for error messages; ``grid``: tiles per image
    (rows, columns) when ``preprocess.tile`` is set.
    """

    def __init__(
        self,
        files: Sequence[tuple[str, ...]],
        plan: ReadPlan,
        preprocess: Preprocess = Preprocess(),
        *,
        illum=None,
        groups=None,
        reference=None,
        origins=None,
        grid: tuple[int, int] | None = None,
        workers: int = 0,
        illum_cache: IllumCache | None = None,
    ):
        self.files = list(files)
        self.plan = plan
        self.preprocess = preprocess
        self.illum = list(illum) if illum is not None else None
        self.groups = np.asarray(groups if groups is not None else [""] * len(self.files), dtype=object)
        self.reference = (
            np.asarray(reference, dtype=bool)
            if reference is not None
            else np.ones(len(self.files), dtype=bool)
        )
        self.origins = list(origins) if origins is not None else [""] * len(self.files)
        self.grid = grid if preprocess.tile else None
        self.per_row = self.grid[0] * self.grid[1] if self.grid else 1
        self.workers = int(workers) if workers else default_workers()
        self.auto_workers = not workers
        self._large: bool | None = None  # whether images are LARGE_PIXELS or more (once read)
        self.illum_cache = illum_cache or IllumCache()
        self._stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._stats_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.files) * self.per_row

    def __getitem__(self, index: int) -> torch.Tensor:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range ({len(self)} samples)")
        index %= len(self)
        row, tile = divmod(index, self.per_row)
        return self._finish(self._prepared(self.site(row), tile), row)

    def take(self, indices) -> torch.Tensor:
        """The samples at ``indices`` as one N×C×H×W batch; each file is read once per call, and
        the files of different rows are read and pre-processed on the thread pool."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        rows, tiles = np.divmod(indices % max(len(self), 1), self.per_row)
        wanted: dict[int, list[tuple[int, int]]] = {}
        for position, (row, tile) in enumerate(zip(rows.tolist(), tiles.tolist())):
            wanted.setdefault(row, []).append((position, tile))
        if self.preprocess.normalise != "none":  # statistics first, not raced for by threads
            for group in dict.fromkeys(self.groups[list(wanted)]):
                self.plate_stats(group)

        def read(row: int) -> list[tuple[int, torch.Tensor]]:
            site = self.site(row)
            return [
                (position, self._finish(self._prepared(site, tile), row)) for position, tile in wanted[row]
            ]

        if len(wanted) >= PARALLEL_MIN and self.workers > 1 and (not self.auto_workers or self._large):
            parts = list(_pool(self.workers).map(read, wanted))
        else:
            parts = [read(row) for row in wanted]
        samples = [None] * len(indices)
        for part in parts:
            for position, sample in part:
                samples[position] = sample
        if not samples:
            return torch.empty(0)
        try:
            return torch.stack(samples)
        except RuntimeError:
            shapes = sorted({tuple(s.shape) for s in samples})
            example = next(
                self.origins[row]
                for row, s in zip(rows, samples)
                if tuple(s.shape) != tuple(samples[0].shape)
            )
            raise UsageError(
                f"images of different sizes in one batch ({', '.join('×'.join(map(str, s)) for s in shapes)}"
                f"; e.g. {example}): give them one size with --set dataset.resize=SIZE or "
                f"dataset.crop=SIZE"
            ) from None

    # -- reading -----------------------------------------------------------------------------

    def site(self, row: int) -> np.ndarray:
        """Row ``row`` decoded: illumination-corrected, in [0, 1], selected channels (float32)."""
        files = self.files[row]
        illum = self.illum[row] if self.illum is not None else (None,) * len(files)
        parts = []
        for position, (path, function) in enumerate(zip(files, illum)):
            try:
                array = read_array(path)
                if self.plan.layout == "channels" and array.shape[0] != 1:
                    if not all(np.array_equal(array[0], a) for a in array[1:]):
                        raise ImageError(f"expected a single-channel image, found {array.shape[0]} channels")
                    array = array[:1]
                if self.plan.layout == "strip":
                    array = split_strip(array, self.plan.strip_tiles)
            except ImageError as error:
                raise UsageError(
                    f"{self._where(row, position)}: cannot read image '{path}': "
                    f"{error}. List every bad file with `hcibench data check`; skip "
                    f"them with --set dataset.on_error=skip"
                ) from None
            unit = to_unit(array)
            if function is not None:
                unit = self._correct(array, function, row, position)
            parts.append(unit)
        image = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        self._large = image.shape[-2] * image.shape[-1] >= LARGE_PIXELS
        if self.plan.select is not None:
            if max(self.plan.select) >= image.shape[0]:
                raise UsageError(
                    f"{self._where(row, 0)}: channel {max(self.plan.select)} selected but "
                    f"'{files[0]}' has {image.shape[0]} channel(s) (channels count from 0)"
                )
            image = image[list(self.plan.select)]
        return np.ascontiguousarray(image, dtype=np.float32)

    def _correct(self, array: np.ndarray, function: str, row: int, position: int) -> np.ndarray:
        try:
            illum = self.illum_cache.get(function)
        except (OSError, ValueError) as error:
            raise UsageError(
                f"{self._where(row, position)}: cannot read illumination function '{function}': {error}"
            ) from None
        if illum.shape[-2:] != array.shape[-2:]:
            raise UsageError(
                f"{self._where(row, position)}: illumination function '{function}' "
                f"is {illum.shape[-2]}×{illum.shape[-1]} but the image is "
                f"{array.shape[-2]}×{array.shape[-1]}"
            )
        corrected = array.astype(np.float32) / np.maximum(illum, np.float32(1e-6))
        scale = np.iinfo(array.dtype).max if array.dtype.kind in "iu" else 1
        return corrected / np.float32(scale)

    def _where(self, row: int, position: int) -> str:
        columns = self.plan.columns
        column = columns[position] if position < len(columns) else columns[-1]
        origin = self.origins[row]
        return f"{origin}, column {column}" if origin else f"column {column}"

    # -- pre-processing ----------------------------------------------------------------------

    def _prepared(self, site: np.ndarray, tile: int) -> torch.Tensor:
        """Steps 2 and 3: crop or tile, resize, clip."""
        pre = self.preprocess
        x = torch.from_numpy(site)
        if pre.crop:
            x = _centre_crop(x, pre.crop)
        elif pre.tile:
            x = _tile(x, pre.tile, self.grid, tile)
        if pre.resize and tuple(x.shape[-2:]) != pre.resize:
            x = F.interpolate(x[None], size=pre.resize, mode="bilinear", align_corners=False, antialias=True)[
                0
            ]
        if pre.clip:
            x = _clip(x, pre.clip)
        return x

    def _finish(self, x: torch.Tensor, row: int) -> torch.Tensor:
        """Step 4: per-plate normalisation."""
        if self.preprocess.normalise == "none":
            return x
        mean, std = self.plate_stats(self.groups[row])
        return (x - mean) / std

    def plate_stats(self, group: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std (C×1×1) of a plate's reference images, measured once on up to
        ``norm_sample`` evenly spaced samples."""
        with self._stats_lock:
            if group in self._stats:
                return self._stats[group]
        rows = np.flatnonzero(self.groups == group)
        reference = rows[self.reference[rows]] if self.preprocess.normalise == "dmso" else rows
        if len(reference) == 0:  # no control well on the plate: all its wells
            reference = rows
        samples = np.repeat(reference * self.per_row, self.per_row) + np.tile(
            np.arange(self.per_row), len(reference)
        )
        count = min(self.preprocess.norm_sample, len(samples))
        chosen = samples[np.linspace(0, len(samples) - 1, count).round().astype(np.int64)]
        images = [self._prepared(self.site(int(s) // self.per_row), int(s) % self.per_row) for s in chosen]
        stacked = torch.stack(images).transpose(0, 1).reshape(images[0].shape[0], -1).double()
        mean = stacked.mean(dim=1).float()[:, None, None]
        std = stacked.std(dim=1).float().clamp_min(1e-6)[:, None, None]
        with self._stats_lock:
            self._stats[group] = (mean, std)
        return mean, std


def _centre_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    height, width = size
    h, w = x.shape[-2:]
    if h < height or w < width:
        raise UsageError(
            f"cannot crop {height}×{width} from a {h}×{w} image: choose a smaller "
            f"dataset.crop or resize first"
        )
    top, left = (h - height) // 2, (w - width) // 2
    return x[:, top : top + height, left : left + width]


def tile_grid(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of whole ``size`` tiles that fit an image (the remainder is dropped)."""
    rows, columns = height // size[0], width // size[1]
    if rows < 1 or columns < 1:
        raise UsageError(f"dataset.tile {size[0]}×{size[1]} is larger than the {height}×{width} images")
    return rows, columns


def _tile(x: torch.Tensor, size: tuple[int, int], grid, index: int) -> torch.Tensor:
    rows, columns = grid
    row, column = divmod(index, columns)
    h, w = x.shape[-2:]
    if (row + 1) * size[0] > h or (column + 1) * size[1] > w:
        raise UsageError(
            f"a {h}×{w} image holds no tile {index} of {size[0]}×{size[1]} "
            f"(the first image held {rows}×{columns}): images differ in size"
        )
    return x[:, row * size[0] : (row + 1) * size[0], column * size[1] : (column + 1) * size[1]]


def _clip(x: torch.Tensor, percentiles: tuple[float, float]) -> torch.Tensor:
    array = x.numpy()
    low, high = np.percentile(array.reshape(array.shape[0], -1), percentiles, axis=1)
    low = low.astype(np.float32)[:, None, None]
    high = high.astype(np.float32)[:, None, None]
    span = np.maximum(high - low, np.float32(1e-12))
    return torch.from_numpy(((np.clip(array, low, high) - low) / span).astype(np.float32))
