"""Source splits: training plates, a validation plate for model selection, and held-out test
plates on which in-domain accuracy is scored (the paper's protocol)."""

from __future__ import annotations

from dataclasses import dataclass

from .data import Domain
from .errors import UsageError


@dataclass
class SourceSplit:
    train: Domain
    val: Domain
    test: Domain


def split_source(domain: Domain, val_plates: int = 1, test_plates: int = 1) -> SourceSplit:
    """The last ``test_plates`` plates (sorted by name) are held out for in-domain testing, the
    ones before them for validation, the rest for training. The choice does not depend on the
    seed so that every seed and method sees the same split."""
    plates = sorted(domain.meta["plate"].astype(str).unique())
    needed = val_plates + test_plates + 1
    if len(plates) < needed:
        raise UsageError(
            f"source '{domain.name}' has {len(plates)} plate(s); training on it needs at least "
            f"{needed} (train + {val_plates} validation + {test_plates} test)")
    test = plates[len(plates) - test_plates:]
    val = plates[len(plates) - test_plates - val_plates:len(plates) - test_plates]
    plate = domain.meta["plate"].astype(str)
    return SourceSplit(
        train=domain.subset(~plate.isin(val + test), f"{domain.name}:train"),
        val=domain.subset(plate.isin(val), f"{domain.name}:val"),
        test=domain.subset(plate.isin(test), f"{domain.name}:test"),
    )
