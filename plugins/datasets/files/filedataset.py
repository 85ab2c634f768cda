"""The machinery shared by the datasets that read image files (``folder``, ``deepprofiler``,
``jump``): options, column mapping, file checks, problems, MoA labels and lazy domains.

A subclass turns its on-disk format into an :class:`ImageIndex` (``build_index``): one row per
image with its metadata (``hcibench.META_COLUMNS`` plus any extras), its file paths and where it
was listed, plus the :class:`Problem` s found on the way. The base class then

* links MoA labels from the Drug Repurposing Hub when ``moa_drugs``/``moa_samples`` are given
  (the metadata needs an ``inchikey`` column);
* checks the files (``verify``: ``exists``, ``header``: complete and well-formed, ``decode``:
  fully decoded; ``auto``: ``header`` when skipping bad images, else ``exists``);
* on ``on_error="raise"`` (default) stops at the first error with a message naming the file, row
  and column; on ``on_error="skip"`` leaves the bad images out, counts them, and reports every
  problem through :meth:`problems` (the runner writes them into the run's manifest);
* builds each source's :class:`hcibench.Domain` on demand over a lazy :class:`FileImages` store.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import hcibench
from hcibench.errors import UsageError, unknown_name
from hcibench_plugins.datasets.files.imagefiles import ImageError, probe, read_array, split_strip
from hcibench_plugins.datasets.files.imagestore import (
    FileImages,
    IllumCache,
    Preprocess,
    ReadPlan,
    _pool,
    default_workers,
    tile_grid,
)

ON_ERROR = ("raise", "skip")
REMOTE = ("s3://", "gs://", "http://", "https://")
VERIFY = ("auto", "none", "exists", "header", "decode")

COMMON_OPTIONS = {
    "columns": {},  # metadata field -> column name in the index
    "channels": None,  # channels to keep, in order: names or 0-based positions (None: all)
    "classes": None,  # class list or a file with one class per line (None: sorted labels)
    "on_error": "raise",
    "verify": "auto",
    "crop": None,
    "tile": None,
    "resize": None,
    "clip": None,
    "normalise": "none",
    "control": "DMSO",
    "norm_sample": 64,
    "workers": 0,  # threads reading a batch (0: up to 4, for images of 256×256 or more)
    "path_map": {},  # path prefix -> replacement, e.g. {"s3://cellpainting-gallery/": "/data/cpg/"}
    "moa_drugs": None,
    "moa_samples": None,
    "moa_multi": "drop",
}


@dataclass
class Problem:
    """Something wrong with the data. ``row``: the index row it concerns (errors on a row take
    that image out when skipping); ``skipped``: images left out because of it."""

    severity: str  # "error" or "warning"
    kind: str  # short key, e.g. "missing-file"
    message: str  # a full sentence naming the file, row and column
    source: str | None = None
    row: int | None = field(default=None, repr=False)
    skipped: int = 0

    def as_dict(self) -> dict:
        item = asdict(self)
        item.pop("row")
        return {key: value for key, value in item.items() if value is not None}


@dataclass
class ImageIndex:
    """One row per image: ``meta`` (aligned), ``files[r]`` (paths, one per file of the layout),
    ``origins[r]`` ("<file>, row <line>") and, optionally, ``illum[r]`` (an illumination ``.npy``
    per file or None)."""

    meta: pd.DataFrame
    files: list[tuple[str, ...]]
    plan: ReadPlan
    origins: list[str]
    illum: list[tuple] | None = None
    problems: list[Problem] = field(default_factory=list)

    def select(self, keep: np.ndarray) -> ImageIndex:
        rows = np.flatnonzero(keep)
        return ImageIndex(
            self.meta.iloc[rows].reset_index(drop=True),
            [self.files[r] for r in rows],
            self.plan,
            [self.origins[r] for r in rows],
            [self.illum[r] for r in rows] if self.illum is not None else None,
            self.problems,
        )


def resolve_columns(
    columns, fields: dict[str, list[str]], renames: dict, where: str, required=()
) -> dict[str, str | None]:
    """The column of each metadata field: the user's rename (``dataset.columns``) or the first
    default candidate present. A rename naming an absent column, or a required field without
    a column, is a UsageError naming the file and the columns it has."""
    columns = list(columns)
    found = {}
    for name, candidates in fields.items():
        if name in renames:
            column = renames[name]
            if column not in columns:
                raise UsageError(
                    f"{where}: no column '{column}' (dataset.columns {name} -> "
                    f"{column}); its columns are: {_list(columns)}"
                )
            found[name] = column
        else:
            found[name] = next((c for c in candidates if c in columns), None)
    missing = [name for name in required if found.get(name) is None]
    if missing:
        looked = "; ".join(f"{name}: {', '.join(fields[name])}" for name in missing)
        raise UsageError(
            f"{where} lacks a column for {', '.join(missing)} (looked for {looked}); its columns "
            f"are: {_list(columns)}. Name yours with --set dataset.columns="
            f'\'{{"{missing[0]}": "COLUMN"}}\''
        )
    return found


def _list(values, limit: int = 20) -> str:
    values = [str(v) for v in values]
    more = f", … ({len(values) - limit} more)" if len(values) > limit else ""
    return ", ".join(values[:limit]) + more


def check_renames(renames, known: list[str], dataset: str) -> dict:
    if renames in (None, ""):
        return {}
    if not isinstance(renames, dict):
        raise UsageError(
            f"dataset option 'columns' must be a JSON object such as "
            f'\'{{"label": "moa"}}\', got {renames!r}'
        )
    unknown = [k for k in renames if k not in known]
    if unknown:
        raise UsageError(
            f"dataset option 'columns' of '{dataset}': unknown field(s) "
            f"{', '.join(unknown)}; known: {', '.join(known)}"
        )
    return {str(k): str(v) for k, v in renames.items()}


def channel_positions(channels, not_integers: str, negative: str) -> tuple[int, ...]:
    """The ``channels`` option (a list) as 0-based positions; ``not_integers`` and ``negative``
    are the errors to raise, so that each reader can say what its positions count."""
    try:
        select = tuple(int(c) for c in channels)
    except (TypeError, ValueError):
        raise UsageError(not_integers) from None
    if min(select) < 0:
        raise UsageError(negative)
    return select


def empty_values(table: pd.DataFrame, column: str) -> np.ndarray:
    values = table[column]
    return (values.isna() | (values.astype(str).str.strip() == "")).to_numpy()


def file_problems(
    files: list[tuple[str, ...]], plan: ReadPlan, origins: list[str], level: str, workers: int = 0
) -> tuple[list[tuple[int, str, str]], list]:
    """Check the files of every row at ``level`` (``exists``, ``header`` or ``decode``).

    Returns (``[(row, kind, message)]`` for every bad row, the C×H×W shape of each row or None
    where unknown)."""

    def check(row: int):
        shapes = []
        for position, path in enumerate(files[row]):
            column = plan.columns[min(position, len(plan.columns) - 1)]
            where = f"{origins[row]}, column {column}" if origins[row] else f"column {column}"
            if not path or not os.path.isfile(path):
                kind = "missing-file" if path else "missing-value"
                return row, (kind, f"{where}: image file '{path}' does not exist"), None
            if level == "exists":
                continue
            try:
                if level == "decode":
                    array = read_array(path)
                    if plan.layout == "strip":
                        array = split_strip(array, plan.strip_tiles)
                    shapes.append(array.shape)
                else:
                    shape = probe(path)
                    if plan.layout == "strip":
                        width = shape[2]
                        tiles = plan.strip_tiles or (
                            width // shape[1] if shape[1] and width % shape[1] == 0 else 0
                        )
                        if not tiles or width % tiles:
                            raise ImageError(
                                f"cannot split a {shape[1]}×{width} strip into {tiles or 'square'} tiles"
                            )
                        shape = (shape[0] * tiles, shape[1], width // tiles)
                    shapes.append(tuple(shape))
            except ImageError as error:
                return row, ("unreadable", f"{where}: cannot read image '{path}': {error}"), None
        if not shapes:
            return row, None, None
        channels = len(shapes) if plan.layout == "channels" else shapes[0][0]
        if plan.layout == "channels" and len({s[1:] for s in shapes}) > 1:
            sizes = ", ".join("×".join(map(str, s[1:])) for s in shapes)
            return row, ("size", f"{origins[row]}: its channel images differ in size ({sizes})"), None
        return row, None, (channels, *shapes[0][1:])

    rows = range(len(files))
    workers = workers or default_workers()
    results = (
        list(_pool(workers).map(check, rows, chunksize=64))
        if workers > 1 and len(files) > 64
        else [check(r) for r in rows]
    )
    bad = [(row, *problem) for row, problem, _ in results if problem]
    return bad, [shape for _, _, shape in results]


class FileDataset(hcibench.Dataset):
    """Base class of the datasets read from image files (see the module docstring)."""

    # Options of this dataset beyond COMMON_OPTIONS, with their defaults.
    EXTRA_OPTIONS: dict = {}
    # Metadata fields that ``columns`` may rename.
    FIELDS: list[str] = [*hcibench.META_COLUMNS]
    # "2": colour PNG and JPEG files give one channel per band (revision 1 passed PIL's
    # H×W×bands array on as channels × height × width), and so do .npy arrays saved H×W×C.
    revision = "2"

    @classmethod
    def default_settings(cls, preset: str) -> dict:
        return copy.deepcopy({**COMMON_OPTIONS, **cls.EXTRA_OPTIONS})

    def __init__(self, data=None, **options):
        known = self.default_settings("quick")
        unknown = [k for k in options if k not in known]
        if unknown:
            raise UsageError(
                f"unknown option(s) {', '.join(unknown)} for dataset '{self.name}'. "
                f"Known: {', '.join(known)}."
            )
        settings = {**known, **options}
        super().__init__(data, **settings)
        if not data:
            raise UsageError(f"dataset '{self.name}' reads files: give their folder with --data")
        self.root = Path(data).expanduser()
        if not self.root.exists():
            raise UsageError(f"--data {data}: no such file or folder")
        self.settings = settings
        self.on_error = str(settings["on_error"]).lower()
        if self.on_error not in ON_ERROR:
            raise UsageError(
                f"dataset option 'on_error' must be 'raise' or 'skip', got '{settings['on_error']}'"
            )
        self.verify = str(settings["verify"]).lower()
        if self.verify not in VERIFY:
            raise UsageError(
                f"dataset option 'verify' must be one of {', '.join(VERIFY)}, got '{settings['verify']}'"
            )
        if self.verify == "auto":
            self.verify = "header" if self.on_error == "skip" else "exists"
        self.preprocess = Preprocess.from_options(
            settings["crop"],
            settings["tile"],
            settings["resize"],
            settings["clip"],
            settings["normalise"],
            settings["norm_sample"],
        )
        try:
            self.workers = int(settings["workers"] or 0)
        except (TypeError, ValueError):
            raise UsageError(
                f"dataset option 'workers' must be an integer, got {settings['workers']!r}"
            ) from None
        self.renames = check_renames(settings["columns"], self.FIELDS, self.name)
        self._problems: list[Problem] = []
        self.label_counts: dict | None = None
        self._domains: dict[str, hcibench.Domain] = {}
        self._illum_cache = IllumCache()

        self.path_map = settings["path_map"] or {}
        if not isinstance(self.path_map, dict):
            raise UsageError(
                "dataset option 'path_map' must be a JSON object of path prefixes, "
                'e.g. \'{"s3://cellpainting-gallery/": "/data/cpg/"}\''
            )
        index = self.build_index()
        self._refuse_remote(index)
        sources = index.meta["source"].dropna().astype(str)
        listed = sources.value_counts().reindex(pd.unique(sources))
        self._problems.extend(index.problems)
        index.problems = []
        index = self._link_moa(index)
        index = self._apply(index, [p for p in self._problems if p.row is not None])
        index = self._check_files(index)
        self.index = index
        self._sources = list(listed.index)
        remaining = set(index.meta["source"].dropna().astype(str))
        for source, count in listed.items():
            if source not in remaining:
                self._problems.append(
                    Problem(
                        "error",
                        "empty-source",
                        f"source '{source}' has no readable images: all {count} of its images were left out",
                        source,
                    )
                )
        self._classes = self._class_list(index.meta)
        self._note_unknown_labels(index.meta)

    def map_path(self, path: str) -> str:
        """A path with the first matching ``path_map`` prefix replaced."""
        for prefix, replacement in self.path_map.items():
            if path.startswith(prefix):
                return str(replacement) + path[len(prefix) :]
        return path

    def _refuse_remote(self, index: ImageIndex) -> None:
        for row, files in enumerate(index.files):
            for position, path in enumerate(files):
                if isinstance(path, str) and path.startswith(REMOTE):
                    column = index.plan.columns[min(position, len(index.plan.columns) - 1)]
                    raise UsageError(
                        f"{index.origins[row]}, column {column}: '{path}' is a remote path; "
                        f"hcibench reads local files only. Sync the images to a local folder "
                        f"first (e.g. `aws s3 sync --no-sign-request s3://BUCKET/PREFIX DIR`) "
                        f"and map the prefix with --set dataset.path_map="
                        f'\'{{"{path.split("//")[0]}//{path.split("//")[1].split("/")[0]}/": '
                        f'"DIR/"}}\''
                    )

    # -- to implement ----------------------------------------------------------------------

    def build_index(self) -> ImageIndex:
        raise NotImplementedError

    def default_classes_file(self) -> Path | None:
        """A class-list file used when the ``classes`` option is not given."""
        return None

    # -- the Dataset contract ----------------------------------------------------------------

    def sources(self) -> list[str]:
        return list(self._sources)

    def classes(self) -> list[str]:
        return list(self._classes)

    def domain(self, source: str) -> hcibench.Domain:
        if source not in self._domains:
            if source not in self._sources:
                raise unknown_name("source", source, self._sources)
            self._domains[source] = self._build_domain(source)
        return self._domains[source]

    def problems(self) -> list[dict]:
        return [p.as_dict() for p in self._problems]

    # -- building ------------------------------------------------------------------------------

    def _apply(self, index: ImageIndex, problems: list[Problem]) -> ImageIndex:
        """Raise on the first row error, or take the rows with errors out."""
        errors = [p for p in problems if p.severity == "error" and p.row is not None]
        if not errors:
            return index
        if self.on_error == "raise":
            first = errors[0]
            more = (
                f" ({len(errors) - 1} more problem(s) like this: list them all with `hcibench data check`)"
                if len(errors) > 1
                else ""
            )
            raise UsageError(
                f"{first.message}{more}. To leave bad images out instead, use --set dataset.on_error=skip"
            )
        keep = np.ones(len(index.files), dtype=bool)
        for problem in errors:
            if keep[problem.row]:
                problem.skipped = 1
                keep[problem.row] = False
        return index.select(keep)

    def _check_files(self, index: ImageIndex) -> ImageIndex:
        if self.verify == "none" or not index.files:
            return index
        bad, shapes = file_problems(index.files, index.plan, index.origins, self.verify, self.workers)
        sources = index.meta["source"].astype(str).to_numpy()
        found = [Problem("error", kind, message, sources[row], row) for row, kind, message in bad]
        found += self._shape_problems(shapes, sources, {row for row, *_ in bad}, index.origins)
        self._problems.extend(found)
        return self._apply(index, found)

    def _shape_problems(self, shapes, sources, bad_rows, origins) -> list[Problem]:
        """Rows whose channel count (always) or size (unless resized, cropped or tiled) differs
        from the most common one of their source."""
        problems = []
        resizes = self.preprocess.resize or self.preprocess.crop or self.preprocess.tile
        by_source: dict[str, Counter] = {}
        for row, shape in enumerate(shapes):
            if shape is not None and row not in bad_rows:
                by_source.setdefault(sources[row], Counter())[shape] += 1
        for row, shape in enumerate(shapes):
            if shape is None or row in bad_rows:
                continue
            common = by_source[sources[row]].most_common(1)[0][0]
            if shape[0] != common[0]:
                what = f"{shape[0]} channel(s) where the source's images have {common[0]}"
            elif shape[1:] != common[1:] and not resizes:
                what = (
                    f"size {shape[1]}×{shape[2]} where the source's images are "
                    f"{common[1]}×{common[2]} (or set dataset.resize)"
                )
            else:
                continue
            problems.append(Problem("error", "size", f"{origins[row]}: image has {what}", sources[row], row))
        return problems

    def _link_moa(self, index: ImageIndex) -> ImageIndex:
        drugs, samples = self.settings["moa_drugs"], self.settings["moa_samples"]
        if not drugs and not samples:
            return index
        if not (drugs and samples):
            raise UsageError(
                "MoA labels from the Drug Repurposing Hub need both files: "
                "--set dataset.moa_drugs=FILE --set dataset.moa_samples=FILE"
            )
        from hcibench_plugins.datasets.files.moa import link_moa

        meta = index.meta
        if "inchikey" not in meta.columns:
            raise UsageError(
                f"dataset '{self.name}': MoA labels are linked by InChIKey, but the "
                f"metadata has no InChIKey column (name it with --set "
                f'dataset.columns=\'{{"inchikey": "COLUMN"}}\')'
            )
        known = meta[meta["compound"].notna().to_numpy() & ~self._controls(meta)]
        keys = known.groupby("compound", sort=True)["inchikey"].first()
        labels, counts = link_moa(
            keys, self._path(drugs), self._path(samples), str(self.settings["moa_multi"])
        )
        self.label_counts = counts
        meta = meta.copy()
        meta["label"] = meta["compound"].map(labels)  # controls are not in ``labels``
        index.meta = meta
        return index

    def _path(self, value) -> Path:
        path = Path(str(value)).expanduser()
        if not path.is_absolute():
            base = self.root if self.root.is_dir() else self.root.parent
            if (base / path).exists() or not path.exists():
                path = base / path
        return path

    def _class_list(self, meta: pd.DataFrame) -> list[str]:
        option = self.settings["classes"]
        if option in (None, "") and self.default_classes_file() is not None:
            option = str(self.default_classes_file())
        if option in (None, ""):
            labels = meta["label"].dropna().astype(str)
            return sorted(labels[labels.str.strip() != ""].unique())
        if isinstance(option, list | tuple):
            return [str(c) for c in option]
        path = self._path(option)
        try:
            lines = path.read_text().splitlines()
        except OSError as error:
            raise UsageError(
                f"dataset option 'classes': cannot read {path}: {error.strerror or error}"
            ) from None
        return [line.strip() for line in lines if line.strip()]

    def _note_unknown_labels(self, meta: pd.DataFrame) -> None:
        labels = meta["label"].dropna().astype(str)
        outside = sorted(set(labels) - set(self._classes))
        if outside:
            self._problems.append(
                Problem(
                    "warning",
                    "label-not-in-classes",
                    f"{int(labels.isin(outside).sum())} image(s) carry labels missing from the class "
                    f"list ({_list(outside, 8)}): they are unlabelled",
                )
            )

    def _build_domain(self, source: str) -> hcibench.Domain:
        meta = self.index.meta
        rows = np.flatnonzero(meta["source"].astype(str).to_numpy() == source)
        if len(rows) == 0:
            raise UsageError(
                f"source '{source}' has no readable images: every one was left out "
                f"(see `hcibench data check`)"
            )
        part = meta.iloc[rows].reset_index(drop=True)
        files = [self.index.files[r] for r in rows]
        grid = None
        if self.preprocess.tile:
            shape = self._image_shape(files[0])
            grid = tile_grid(shape[1], shape[2], self.preprocess.tile)
            per_row = grid[0] * grid[1]
            part = part.loc[part.index.repeat(per_row)].reset_index(drop=True)
            part["tile"] = np.tile(np.arange(per_row), len(rows))
        plates = meta["plate"].astype(str).to_numpy()[rows]
        control = self._controls(meta.iloc[rows])
        if self.preprocess.normalise == "dmso":
            without = sorted(set(plates) - set(plates[control]))
            if without:
                self._problems.append(
                    Problem(
                        "warning",
                        "no-controls",
                        f"source '{source}': plate(s) {_list(without, 6)} have no control wells "
                        f"(compound '{self.settings['control']}'): normalised to all their wells",
                        source,
                    )
                )
        store = FileImages(
            files,
            self.index.plan,
            self.preprocess,
            illum=[self.index.illum[r] for r in rows] if self.index.illum is not None else None,
            groups=[f"{source}/{p}" for p in plates],
            reference=control,
            origins=[self.index.origins[r] for r in rows],
            grid=grid,
            workers=self.workers,
            illum_cache=self._illum_cache,
        )
        return hcibench.Domain(source, part, store, self.classes())

    def _controls(self, meta: pd.DataFrame) -> np.ndarray:
        if "control" in meta.columns:
            return meta["control"].fillna(False).astype(bool).to_numpy()
        control = self.settings["control"]
        return (meta["compound"].astype(str) == str(control)).to_numpy()

    def _image_shape(self, files: tuple[str, ...]) -> tuple[int, int, int]:
        plan = self.index.plan
        try:
            shape = probe(files[0])
        except ImageError as error:
            raise UsageError(f"cannot read image '{files[0]}': {error}") from None
        if plan.layout == "strip":
            tiles = plan.strip_tiles or max(1, shape[2] // max(shape[1], 1))
            return shape[0] * tiles, shape[1], shape[2] // tiles
        if plan.layout == "channels":
            return len(files), shape[1], shape[2]
        return shape

    # -- for `data check` ------------------------------------------------------------------------

    def describe(self) -> list[str]:
        """Lines about how the data was read, for ``data check``."""
        plan = self.index.plan
        lines = [
            f"layout: {plan.layout} ({', '.join(plan.columns)})"
            + (f"; channels kept: {list(plan.select)}" if plan.select is not None else "")
        ]
        pre = self.preprocess
        steps = [
            name
            for name, on in (
                ("crop", pre.crop),
                ("tile", pre.tile),
                ("resize", pre.resize),
                ("clip", pre.clip),
                ("normalise", pre.normalise != "none"),
            )
            if on
        ]
        lines.append(
            f"pre-processing: {', '.join(steps) or 'none'}; files checked: {self.verify}"
            f"; on_error: {self.on_error}"
        )
        return lines


def read_table(path: Path, text_columns=()) -> pd.DataFrame:
    """A CSV (optionally gzipped) with ``text_columns`` (and every column whose name starts with
    ``Metadata_`` or ``path``) read as strings."""
    try:
        header = pd.read_csv(path, nrows=0).columns
        as_text = {
            c: str
            for c in header
            if c in text_columns or str(c).startswith(("Metadata_", "path", "FileName_", "PathName_", "URL_"))
        }
        return pd.read_csv(path, dtype=as_text, low_memory=False)
    except FileNotFoundError:
        raise UsageError(f"file not found: {path}") from None
    except pd.errors.EmptyDataError:
        raise UsageError(f"{path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise UsageError(f"{path} is not a readable CSV file: {error}") from None
