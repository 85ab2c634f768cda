"""The data contract between dataset plugins and methods.

A dataset yields *domains* (imaging sources). A domain is a table of per-sample metadata plus an
indexable store of images (or profiles), aligned by position:

* ``meta``: a pandas DataFrame with the columns in ``META_COLUMNS`` (``label`` is the mechanism of
  action as a string, or missing for unlabelled samples) and any extra columns a dataset wants;
* ``images``: anything with ``len()`` and ``[i] -> Tensor`` (C×H×W for images, F for profiles),
  read lazily so that large datasets never sit in memory at once;
* ``classes``: the dataset-wide list of class names; ``labels`` indexes into it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

META_COLUMNS = ["source", "batch", "plate", "well", "compound", "label"]
UNLABELLED = -1


class TensorImages:
    """An image store over one in-memory tensor (N×C×H×W); slicing stays a view."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def __len__(self) -> int:
        return len(self.tensor)

    def __getitem__(self, index):
        return self.tensor[index]

    def take(self, indices: np.ndarray) -> torch.Tensor:
        return self.tensor[torch.as_tensor(indices, dtype=torch.long)]


class SubsetImages:
    """A lazy view of another store restricted to some positions."""

    def __init__(self, base: Sequence, indices: np.ndarray):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.base[int(self.indices[index])]

    def take(self, indices: np.ndarray) -> torch.Tensor:
        return take(self.base, self.indices[np.asarray(indices, dtype=np.int64)])


def take(store: Sequence, indices: np.ndarray) -> torch.Tensor:
    """Stack the samples at ``indices`` of any store into one batch tensor."""
    if hasattr(store, "take"):
        return store.take(indices)
    return torch.stack([store[int(i)] for i in indices])


@dataclass
class Domain:
    """The samples of one source (or of a part of it: some plates, one batch)."""

    name: str
    meta: pd.DataFrame
    images: Sequence
    classes: list[str]

    def __post_init__(self):
        missing = [c for c in META_COLUMNS if c not in self.meta.columns]
        if missing:
            raise ValueError(f"domain '{self.name}' metadata lacks columns {missing}")
        if len(self.meta) != len(self.images):
            raise ValueError(
                f"domain '{self.name}' has {len(self.meta)} metadata rows but {len(self.images)} images"
            )
        self.meta = self.meta.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.meta)

    @property
    def labels(self) -> torch.Tensor:
        """Class indices into ``classes``; ``UNLABELLED`` (-1) where the label is unknown."""
        lookup = {c: i for i, c in enumerate(self.classes)}
        return torch.tensor(
            [
                lookup.get(label, UNLABELLED) if isinstance(label, str) else UNLABELLED
                for label in self.meta["label"]
            ],
            dtype=torch.long,
        )

    def subset(self, mask, name: str | None = None) -> Domain:
        """The samples where the boolean ``mask`` (array or Series) is true, or at the given
        integer positions."""
        mask = np.asarray(mask)
        indices = np.flatnonzero(mask) if mask.dtype == bool else mask.astype(np.int64)
        return Domain(
            name or self.name,
            self.meta.iloc[indices].reset_index(drop=True),
            SubsetImages(self.images, indices),
            self.classes,
        )

    def positions_by(self, column: str) -> dict[str, np.ndarray]:
        """Positions of the samples for each distinct value of a metadata column."""
        groups = self.meta.groupby(self.meta[column].astype(str), sort=True).indices
        return {value: np.asarray(positions) for value, positions in groups.items()}

    def split_by(self, column: str) -> dict[str, Domain]:
        """One sub-domain per distinct value of a metadata column (e.g. per batch or plate)."""
        return {
            value: self.subset(positions, f"{self.name}/{value}")
            for value, positions in self.positions_by(column).items()
        }

    def stack(self) -> torch.Tensor:
        """All samples as one tensor; for small domains or preprocessing statistics."""
        return take(self.images, np.arange(len(self)))

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        """``(samples, labels, positions)`` mini-batches. The order is drawn from ``generator``
        here, before the first batch is read, so that reading ahead in another thread
        (:func:`hcibench.run.accelerator.prefetch`) draws nothing from it."""
        order = torch.randperm(len(self), generator=generator).numpy() if shuffle else np.arange(len(self))
        return self._batches(order, batch_size, drop_last)

    def _batches(
        self, order: np.ndarray, batch_size: int, drop_last: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        labels = self.labels
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            positions = order[start : start + batch_size]
            if len(positions) == 0:
                break
            yield take(self.images, positions), labels[torch.as_tensor(positions)], positions


class Dataset:
    """Base class for dataset plugins.

    Subclasses set ``name`` and ``description`` and implement ``sources``, ``classes`` and
    ``domain``. ``data`` is the path given with ``--data`` (``None`` for generated data);
    ``seed`` and keyword ``options`` come from the preset and the command line.
    """

    name: str = ""
    description: str = ""
    modality: str = "image"  # "image" (C×H×W) or "profile" (a feature vector)
    # Evaluators used when the command line names none (None: the runner's accuracy, f1).
    default_evaluators: list[str] | None = None
    # Raised whenever the plugin would read the same data and options into other arrays (a
    # reader fixed, a normalisation changed). It enters every stage's key and the run's
    # settings, so stages and records computed by an earlier revision are never reused.
    # Empty: not recorded (keys stay as they were before the attribute existed).
    revision: str = ""

    def __init__(self, data: str | None = None, **options):
        self.data = data
        self.options = options

    def sources(self) -> list[str]:
        """Names of the domains, in their natural order."""
        raise NotImplementedError

    def classes(self) -> list[str]:
        """Class names shared by every domain (labels index into this list)."""
        raise NotImplementedError

    def domain(self, source: str) -> Domain:
        """All samples of one source."""
        raise NotImplementedError

    def problems(self) -> list[dict]:
        """Problems met reading the data: dicts with ``severity`` ("error" or "warning"),
        ``kind``, ``message`` (naming the file, row and column) and, where they apply, ``source``
        and ``skipped`` (images left out, e.g. with ``--set dataset.on_error=skip``). The runner
        writes them into the run's manifest; ``hcibench data check`` lists them."""
        return []

    @classmethod
    def default_settings(cls, preset: str) -> dict:
        """Keyword options for ``__init__`` under a preset (``config["dataset"]``); users change
        them with ``--set dataset.<option>=<value>``."""
        return {}

    @classmethod
    def preset_settings(cls, preset: str) -> dict[str, dict]:
        """Changes to other settings sections that suit this dataset under a preset (e.g. the
        epochs and batch sizes for its size): ``{section: {key: value}}``, nested dicts merged.
        Applied before ``--set``; sections that the run does not have are ignored."""
        return {}
