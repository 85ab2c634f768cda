"""Cross-batch (CB) pairs: a partner for every image, same compound, different batch (or plate).

CODA's cross-batch self-supervision shows the teacher one image and the student another image of
the same compound taken in a different experimental batch, so that what the two share is the
treatment, not the batch. The paper's text says "different batch", the authors' code used the
plate; ``key`` selects which ("batch" by default) and the stats say which was used.

``key="same-batch"`` is the control that never crosses a batch: the partner is another image of
the same compound in the *same* batch. Comparing it with "batch" separates what cross-batch
pairs gain from what pairing two images of one compound gains at all.

Where no partner exists (a compound imaged in one batch only) the authors' code crashes. Here the
row falls back to a partner of the same compound on another plate, else to itself, and the
stats count both fallbacks so that a run log can report them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

__all__ = ["PAIR_KEYS", "cross_batch_partners", "numpy_generator"]

# "batch" and "plate": the partner differs in it; "same-batch": the partner shares the batch.
PAIR_KEYS = ("batch", "plate", "same-batch")


def numpy_generator(generator=None) -> np.random.Generator:
    """A numpy Generator from a numpy Generator, a torch Generator (drawing a seed), a seed or None."""
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        return np.random.default_rng(seed)
    return np.random.default_rng(generator)


def _codes(values: pd.Series) -> np.ndarray:
    """Integer codes of a column; missing values form one group of their own."""
    codes, _ = pd.factorize(values, use_na_sentinel=False)
    return codes.astype(np.int64, copy=False)


def _draw_other(
    group: np.ndarray, sub: np.ndarray, rows: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``rows``, a uniformly random row of the same ``group`` whose ``sub`` differs.

    Vectorised: sorting by (group, sub) makes every group, and every sub-group inside it, a
    contiguous range; a draw among the ``group_size - sub_size`` candidates is mapped to a position
    that skips the row's own sub-group. Returns (partners, found) aligned with ``rows``; where no
    candidate exists ``found`` is False and the partner is the row itself.
    """
    if len(rows) == 0:
        return rows.copy(), np.zeros(0, dtype=bool)
    g, s = group[rows], sub[rows]
    order = np.lexsort((s, g))  # positions into ``rows`` sorted by group, then sub-group
    g_sorted, s_sorted = g[order], s[order]
    n = len(rows)
    new_group = np.r_[True, g_sorted[1:] != g_sorted[:-1]]
    new_sub = new_group | np.r_[True, s_sorted[1:] != s_sorted[:-1]]
    group_start = np.flatnonzero(new_group)
    sub_start = np.flatnonzero(new_sub)
    group_size = np.diff(np.r_[group_start, n])
    sub_size = np.diff(np.r_[sub_start, n])
    group_of = np.cumsum(new_group) - 1  # for each sorted position, the index of its group
    sub_of = np.cumsum(new_sub) - 1
    g_start, g_size = group_start[group_of], group_size[group_of]
    s_start, s_size = sub_start[sub_of], sub_size[sub_of]
    candidates = g_size - s_size
    found_sorted = candidates > 0
    draw = np.floor(rng.random(n) * np.maximum(candidates, 1)).astype(np.int64)
    draw = np.minimum(draw, np.maximum(candidates - 1, 0))
    position = g_start + draw
    position = np.where(position >= s_start, position + s_size, position)
    position = np.where(found_sorted, position, np.arange(n))
    partners_sorted = rows[order[position]]
    partners = np.empty(n, dtype=np.int64)
    found = np.empty(n, dtype=bool)
    partners[order] = partners_sorted
    found[order] = found_sorted
    return partners, found


def cross_batch_partners(
    meta: pd.DataFrame,
    key: str = "batch",
    generator=None,
) -> tuple[np.ndarray, dict]:
    """A random partner row for every row of ``meta``: same ``compound``, different ``key``
    (with ``key="same-batch"``: same compound and batch, another row).

    ``generator`` is a ``numpy.random.Generator``, a ``torch.Generator`` (a seed is drawn from
    it), an int seed or None. Fallbacks, in order: a row of the same compound on a different
    plate (for ``key="batch"`` only), then the row itself (also for rows whose compound is
    missing). Returns
    ``(partner_index, stats)`` with ``partner_index[i]`` a row position and ``stats`` =
    ``{"key", "pairs", "cross", "fallback_plate", "fallback_self", "missing_compound",
    "fallback_compounds"}`` (``pairs``: rows; ``cross``: rows paired as ``key`` asks;
    ``fallback_compounds``: compounds with at least one fallback row).
    """
    if key not in PAIR_KEYS:
        raise ValueError(f"pair key '{key}' is not one of {', '.join(PAIR_KEYS)}")
    within = key == "same-batch"
    for column in ("compound", "batch" if within else key, "plate"):
        if column not in meta.columns:
            raise ValueError(f"metadata lacks the column '{column}' needed for cross-batch pairs")
    rng = numpy_generator(generator)
    n = len(meta)
    partners = np.arange(n, dtype=np.int64)
    missing = meta["compound"].isna().to_numpy()
    compound = _codes(meta["compound"])
    rows = np.flatnonzero(~missing)

    if within:
        # Groups are (compound, batch); every other row of the group is a candidate.
        group = _codes(meta["compound"].astype(str) + "\x1f" + meta["batch"].astype(str))
        chosen, found = _draw_other(group, np.arange(n), rows, rng)
    else:
        chosen, found = _draw_other(compound, _codes(meta[key]), rows, rng)
    partners[rows[found]] = chosen[found]
    pending = rows[~found]
    plate_rows = pending[:0]
    if key == "batch" and len(pending):
        # A compound without a partner in another ``key`` has all its rows in one ``key`` value,
        # so ``pending`` holds every row of those compounds: the whole candidate pool.
        chosen, found = _draw_other(compound, _codes(meta["plate"]), pending, rng)
        partners[pending[found]] = chosen[found]
        plate_rows = pending[found]
        pending = pending[~found]
    fallback_compounds = len(np.unique(compound[np.r_[plate_rows, pending]]))
    stats = {
        "key": key,
        "pairs": int(n),
        "cross": int(len(rows) - len(plate_rows) - len(pending)),
        "fallback_plate": int(len(plate_rows)),
        "fallback_self": int(len(pending) + missing.sum()),
        "missing_compound": int(missing.sum()),
        "fallback_compounds": int(fallback_compounds),
    }
    return partners, stats
