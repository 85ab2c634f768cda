"""NSC and NSCB: the field's 1-nearest-neighbour mechanism-of-action accuracy on treatment-level
profiles (Ljosa et al. 2013), on a method's embeddings and on the raw input features.

The protocol, applied alike to both:

1. each column (feature or embedding dimension) is z-scored over the scored samples (population
   standard deviation; a constant column becomes 0);
2. a treatment is a value of the ``compound`` column (for BBBC021: compound + concentration);
   its profile is the median of its samples;
3. treatments without a label (DMSO) are left out, as queries and as neighbours;
4. for each treatment, the nearest other treatment by cosine similarity among the eligible ones:
   NSC (not-same-compound) excludes treatments of the same compound (the ``base_compound``
   column where a dataset has one, so that other concentrations of it are excluded too; else
   ``compound``); NSCB also excludes treatments sharing a ``batch`` with the query;
5. a query counts only if some eligible treatment has its label; the score is the fraction of
   counted queries whose neighbour has the query's label.

Metrics: ``nsc`` / ``nscb`` on ``Prediction.embeddings`` (absent when the method gives none),
``nsc_raw`` / ``nscb_raw`` on the domain's samples when they are feature vectors (a reference
that does not depend on the method). Nothing is returned where no query counts (e.g. NSCB on a
single batch). The labels given to evaluators are not used: NSC scores every labelled treatment,
including classes the method never saw.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

import hcibench


def treatment_table(features: np.ndarray, meta: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Median profile per labelled treatment of column-z-scored ``features`` and a table
    (``treatment, label, compound, batches``) aligned with it."""
    x = np.asarray(features, dtype=np.float64)
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    label = meta["label"].where(meta["label"].map(lambda v: isinstance(v, str)))
    keep = label.notna().to_numpy()
    treatment = meta["compound"].astype(str).to_numpy()[keep]
    compound_column = "base_compound" if "base_compound" in meta.columns else "compound"
    frame = pd.DataFrame(x[keep])
    frame.insert(0, "_treatment", treatment)
    profiles = frame.groupby("_treatment", sort=True).median()
    rows = pd.DataFrame(
        {
            "treatment": treatment,
            "label": label.to_numpy()[keep],
            "compound": meta[compound_column].astype(str).to_numpy()[keep],
            "batch": meta["batch"].astype(str).to_numpy()[keep],
        }
    )
    table = rows.groupby("treatment", sort=True).agg(
        label=("label", "first"), compound=("compound", "first"), batches=("batch", lambda b: frozenset(b))
    )
    table = table.loc[profiles.index].reset_index()
    return profiles.to_numpy(), table


def nearest_neighbour_accuracy(features, meta: pd.DataFrame, exclude_batch: bool) -> tuple[float | None, int]:
    """(accuracy, number of counted queries) of the protocol above; accuracy None without any."""
    profiles, table = treatment_table(np.asarray(features), meta)
    if len(table) < 2:
        return None, 0
    norms = np.linalg.norm(profiles, axis=1, keepdims=True)
    unit = profiles / np.where(norms > 0, norms, 1.0)
    similarity = unit @ unit.T
    compound = table["compound"].to_numpy()
    label = table["label"].to_numpy()
    eligible = compound[:, None] != compound[None, :]
    if exclude_batch:
        batches = sorted(set().union(*table["batches"]))
        index = {b: i for i, b in enumerate(batches)}
        member = np.zeros((len(table), len(batches)))
        for row, values in enumerate(table["batches"]):
            member[row, [index[b] for b in values]] = 1
        eligible &= (member @ member.T) == 0
    same_label = label[:, None] == label[None, :]
    counted = (eligible & same_label).any(axis=1)
    if not counted.any():
        return None, 0
    nearest = np.where(eligible, similarity, -np.inf).argmax(axis=1)
    hits = (label[nearest] == label) & counted
    return float(hits.sum() / counted.sum()), int(counted.sum())


def raw_features(domain) -> np.ndarray | None:
    """The domain's samples as an N×F array when they are feature vectors, else None."""
    if domain is None or len(domain) == 0 or domain.images[0].dim() != 1:
        return None
    return domain.stack().double().numpy()


class NSC(hcibench.Evaluator):
    name = "nsc"
    description = (
        "1-NN MoA accuracy of treatment profiles, neighbours of another compound "
        "(on embeddings; nsc_raw on input features)"
    )
    uses = ("embeddings", "domain")
    exclude_batch = False

    def __call__(self, logits, labels, meta, num_classes, embeddings=None, domain=None):
        metrics = {}
        for suffix, features in (("", embeddings), ("_raw", raw_features(domain))):
            if features is None:
                continue
            if isinstance(features, torch.Tensor):
                features = features.detach().double().cpu().numpy()
            value, _ = nearest_neighbour_accuracy(features, meta, self.exclude_batch)
            if value is not None:
                metrics[self.name + suffix] = value
        return metrics


class NSCB(NSC):
    name = "nscb"
    description = "as nsc, neighbours also from another batch (nscb_raw on input features)"
    exclude_batch = True


@hcibench.hookimpl
def register_evaluators(register):
    register(NSC)
    register(NSCB)
