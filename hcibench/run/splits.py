"""Source splits: training plates, a validation plate for model selection, and held-out test
plates on which in-domain accuracy is scored (the paper's protocol)."""

from __future__ import annotations

from dataclasses import dataclass

from hcibench.data import Domain
from hcibench.errors import UsageError


@dataclass
class SourceSplit:
    train: Domain
    val: Domain
    test: Domain


def split_source(
    domain: Domain, val_plates: int = 1, test_plates: int = 1, order: str = "name"
) -> SourceSplit:
    """The last ``test_plates`` plates are held out for in-domain testing, the ones before them
    for validation, the rest for training. Plates are ordered by name (``order="name"``), or
    by their number of labelled samples, then name (``order="labelled"``: for plate layouts
    where some plates hold only unlabelled controls, which cannot validate or test anything).
    The choice does not depend on the seed so that every seed and method sees the same split."""
    plate_names = domain.meta["plate"].astype(str)
    plates = sorted(plate_names.unique())
    if order == "labelled":
        labelled = plate_names[(domain.labels >= 0).numpy()].value_counts()
        plates = sorted(plates, key=lambda p: (int(labelled.get(p, 0)), p))
    elif order != "name":
        raise UsageError(f"unknown split order '{order}': use 'name' or 'labelled'")
    needed = val_plates + test_plates + 1
    if len(plates) < needed:
        raise UsageError(
            f"source '{domain.name}' has {len(plates)} plate(s); training on it needs at least "
            f"{needed} (train + {val_plates} validation + {test_plates} test)"
        )
    test = plates[len(plates) - test_plates :]
    val = plates[len(plates) - test_plates - val_plates : len(plates) - test_plates]
    plate = domain.meta["plate"].astype(str)
    return SourceSplit(
        train=domain.subset(~plate.isin(val + test), f"{domain.name}:train"),
        val=domain.subset(plate.isin(val), f"{domain.name}:val"),
        test=domain.subset(plate.isin(test), f"{domain.name}:test"),
    )
