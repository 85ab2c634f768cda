"""Mechanism-of-action labels from the Drug Repurposing Hub, linked to compounds by InChIKey.

The Hub ships two tab-separated files (lines starting with ``!`` are comments):

* ``repurposing_drugs_<date>.txt``: ``pert_iname, clinical_phase, moa, target, disease_area,
  indication``; ``moa`` may hold several values separated by ``|``;
* ``repurposing_samples_<date>.txt``: ``broad_id, pert_iname, ..., InChIKey, ...``.

A compound's InChIKey is looked up among the samples' InChIKeys (full key first; where that
fails, the first 14 characters, the connectivity block, which ignores stereochemistry and
protonation), giving one or more ``pert_iname``s whose ``moa`` values are pooled. Policies:

* ``multi`` (a compound with several MoAs): ``drop`` (unlabelled; the paper's choice), ``first``
  (the first MoA in the Hub's order) or ``join`` (the sorted MoAs joined with ``|`` as one class);
* compounds that are not found, or found without an MoA, are unlabelled.

:func:`link_moa` returns the labels and a dict that counts every decision.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd

from hcibench.errors import UsageError

MULTI_POLICIES = ("drop", "first", "join")
BLOCK = 14  # characters of the InChIKey connectivity block


def read_hub_table(path, required: list[str]) -> pd.DataFrame:
    """A Hub file as a DataFrame of strings: ``!`` comment lines skipped, tab-separated."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        else:
            text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise UsageError(f"Drug Repurposing Hub file not found: {path}") from None
    except OSError as error:
        raise UsageError(f"cannot read Drug Repurposing Hub file {path}: {error}") from None
    lines = [line for line in text.splitlines() if not line.startswith("!")]
    try:
        table = pd.read_csv(
            io.StringIO("\n".join(lines)), sep="\t", dtype=str, keep_default_na=False, na_values=[""]
        )
    except pd.errors.ParserError as error:
        raise UsageError(f"{path} is not a tab-separated Hub file: {error}") from None
    except pd.errors.EmptyDataError:
        raise UsageError(f"{path} is empty") from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise UsageError(
            f"{path} lacks the column(s) {', '.join(missing)} (found: "
            f"{', '.join(table.columns[:12])}); is it the Hub's "
            f"{'drugs' if 'moa' in required else 'samples'} file?"
        )
    return table


def hub_moas(drugs, samples) -> tuple[dict[str, list[str]], pd.DataFrame]:
    """(pert_iname -> MoAs in the Hub's order, samples table with ``InChIKey`` and
    ``pert_iname``)."""
    drug_table = read_hub_table(drugs, ["pert_iname", "moa"])
    sample_table = read_hub_table(samples, ["pert_iname", "InChIKey"])
    moas = {}
    for name, value in zip(drug_table["pert_iname"], drug_table["moa"]):
        if isinstance(name, str):
            values = [v.strip() for v in value.split("|")] if isinstance(value, str) else []
            moas[name.strip()] = [v for v in dict.fromkeys(values) if v]
    keys = sample_table[["InChIKey", "pert_iname"]].dropna()
    keys = keys.assign(
        InChIKey=keys["InChIKey"].str.strip().str.upper(), pert_iname=keys["pert_iname"].str.strip()
    )
    return moas, keys.drop_duplicates()


def link_moa(inchikeys: pd.Series, drugs, samples, multi: str = "drop") -> tuple[pd.Series, dict]:
    """MoA labels for compounds: ``inchikeys`` is indexed by compound id (one InChIKey each,
    missing allowed). Returns (labels indexed like ``inchikeys``, missing where unlabelled;
    the counts of every decision)."""
    if multi not in MULTI_POLICIES:
        raise UsageError(
            f"dataset option 'moa_multi' must be one of {', '.join(MULTI_POLICIES)}, got '{multi}'"
        )
    moas, keys = hub_moas(drugs, samples)
    by_key = keys.groupby("InChIKey")["pert_iname"].agg(list).to_dict()
    by_block = (
        keys.assign(block=keys["InChIKey"].str[:BLOCK]).groupby("block")["pert_iname"].agg(list).to_dict()
    )

    counts = {
        "compounds": 0,
        "no_inchikey": 0,
        "matched_full": 0,
        "matched_block14": 0,
        "unmatched": 0,
        "matched_without_moa": 0,
        "single_moa": 0,
        "several_moas": 0,
        "several_moas_policy": multi,
        "labelled": 0,
        "unlabelled": 0,
        "classes": 0,
    }
    labels = {}
    for compound, key in inchikeys.items():
        counts["compounds"] += 1
        names = None
        if not isinstance(key, str) or not key.strip():
            counts["no_inchikey"] += 1
        else:
            key = key.strip().upper()
            if key in by_key:
                names = by_key[key]
                counts["matched_full"] += 1
            elif key[:BLOCK] in by_block:
                names = by_block[key[:BLOCK]]
                counts["matched_block14"] += 1
            else:
                counts["unmatched"] += 1
        label = np.nan
        if names is not None:
            found = list(dict.fromkeys(m for name in names for m in moas.get(name, [])))
            if not found:
                counts["matched_without_moa"] += 1
            elif len(found) == 1:
                counts["single_moa"] += 1
                label = found[0]
            else:
                counts["several_moas"] += 1
                if multi == "first":
                    label = found[0]
                elif multi == "join":
                    label = "|".join(sorted(found))
        labels[compound] = label
    result = pd.Series(labels, dtype=object).reindex(inchikeys.index)
    counts["labelled"] = int(result.notna().sum())
    counts["unlabelled"] = counts["compounds"] - counts["labelled"]
    counts["classes"] = int(result.dropna().nunique())
    return result, counts


def describe(counts: dict) -> str:
    """One line for ``data check``: what happened to the compounds."""
    policy = {"drop": "dropped", "first": "first kept", "join": "joined"}.get(
        counts.get("several_moas_policy"), ""
    )
    return (
        f"{counts['compounds']} compounds: {counts['matched_full']} matched by full "
        f"InChIKey, {counts['matched_block14']} by its first 14 characters, "
        f"{counts['unmatched']} not found, {counts['no_inchikey']} without InChIKey, "
        f"{counts['matched_without_moa']} found without MoA; {counts['single_moa']} with one "
        f"MoA, {counts['several_moas']} with several ({policy}); {counts['labelled']} "
        f"labelled in {counts['classes']} classes"
    )
