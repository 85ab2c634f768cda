"""The evaluator contract: predictions and metadata of one grid cell in, named metrics out."""

from __future__ import annotations

import pandas as pd
import torch


class Evaluator:
    """Base class for evaluator plugins (set ``name`` and ``description``).

    ``__call__`` receives the logits (N×classes), the true class indices (N; -1 where unknown,
    which evaluators skip), the cell's metadata table and the number of classes, and returns
    ``{metric_name: value}`` with values in [0, 1] where that makes sense.

    An evaluator that needs more lists it in ``uses``; the runner then passes, as keywords, for
    the main prediction of a cell (never for its variants, which are logits only):

    * ``"embeddings"``: ``Prediction.embeddings`` (N×D, or ``None`` when the method gives none);
    * ``"domain"``: the scored :class:`hcibench.Domain` (its raw samples, e.g. for a reference
      value computed on the input features).
    """

    name: str = ""
    description: str = ""
    uses: tuple[str, ...] = ()

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, meta: pd.DataFrame, num_classes: int, **extras
    ) -> dict[str, float]:
        raise NotImplementedError
