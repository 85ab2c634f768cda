"""Side-by-side summary of adaptation experiments kept in several run (or sweep) folders.

    python results/adaptation/summarise.py base=runs/adapt/base-culture0 \
        scope=runs/adapt/scope-culture0 --baseline "base:dual-dino" --baseline "base:dual-cb"

Each argument is LABEL=FOLDER, optionally LABEL=FOLDER@S3,S8 to take only the cells trained on
those sources. Several folders may share a label, e.g. ``b=first@S3,S8 b=second@S5``: their
cells are pooled under that label, so that each source can come from the run in which a method
and its baseline share their stages (a cell present twice under one label is refused).

Prints, per (folder label, method): accuracy (%) out of domain (mean over the off-diagonal
cells of each seed, then mean ± sample std over seeds), in domain likewise, and per target the
mean over seeds. Then each method against the baseline named for its family (oda*: the first
baseline, coda*: the second): the paired difference over (target, seed) pairs out of domain,
how many pairs are better, and a two-sided Wilcoxon signed-rank p-value over those pairs;
``--unit model`` pairs each (source, seed)'s mean over its targets instead, the cautious unit.
``--versus s:coda,s:oda`` adds the same comparison for any two methods (here CODA against ODA);
``--interaction a1:coda,a1:oda,a0:coda,a0:oda`` compares two such differences cell by cell (here
CODA's lead over ODA under one condition against the same lead under another).
``--at-epoch 10`` adds, for each adapting method, ``label:method@10``: its oracle accuracy after
adaptation epoch 10, the prediction that keeping the last epoch of a 10-epoch adaptation gives
(for comparing an epoch rule, ``adapt.keep``, with the last epoch of the same adaptations).
Target labels are only used here, to score; nothing in the runs was chosen with them.
"""

from __future__ import annotations

import click
import numpy as np
import pandas as pd

from hcibench.errors import UsageError
from hcibench.report.formats import markdown_table
from hcibench.report.statistics import wilcoxon
from hcibench.report.tables import load_records, load_run


def _parse(item: str) -> tuple[str, str, list[str]]:
    """``LABEL=FOLDER[@S1,S2]`` as (label, folder, sources); no sources means all of them."""
    label, equals, rest = item.partition("=")
    folder, _, sources = rest.partition("@")
    if not equals or not label or "/" in label or not folder:
        raise click.BadParameter(f"'{item}': give LABEL=FOLDER or LABEL=FOLDER@S3,S8", param_hint="FOLDERS")
    return label, folder, [s for s in sources.split(",") if s]


def _select(frame: pd.DataFrame, folder: str, wanted: list[str], hint: str) -> pd.DataFrame:
    sources = frame["source"].astype(str)
    missing = sorted(set(wanted) - set(sources))
    if missing:
        known = ", ".join(sorted(set(sources)))
        raise click.BadParameter(
            f"no cells of {', '.join(missing)} in {folder}; its sources: {known}", param_hint=hint
        )
    return frame[sources.isin(wanted)]


def _records(folder: str, source: str | None, sources: list[str] | None = None) -> pd.DataFrame:
    """The run's records as one row per (cell, metric), only those trained on ``source`` (the
    --source option) and on ``sources`` (the folder's own ``@`` list) where given."""
    try:
        frame = load_records(folder)
    except UsageError as error:
        raise click.BadParameter(str(error), param_hint="FOLDERS") from None
    if source:
        frame = _select(frame, folder, [source], "--source")
    if sources:
        frame = _select(frame, folder, sources, "FOLDERS")
    return frame


def _rows(
    label: str, folder: str, sources: list[str], source: str | None, at_epoch: int | None = None
) -> pd.DataFrame:
    frame = _records(folder, source, sources)
    metrics = frame["metric"].astype(str)
    at = f"accuracy@adapt_epoch={at_epoch}"
    frame = frame[(metrics == "accuracy") | (metrics == at)].copy()
    for column in ("method", "source", "target"):
        frame[column] = frame[column].astype(str)
    frame["name"] = label + ":" + frame["method"]
    epoch_rows = frame["metric"].astype(str) == at
    frame.loc[epoch_rows, "name"] = frame.loc[epoch_rows, "name"] + f"@{at_epoch}"
    return frame


def _summary(frame: pd.DataFrame) -> pd.DataFrame:
    off = frame[frame["source"] != frame["target"]]
    on = frame[frame["source"] == frame["target"]]
    per_seed_off = off.groupby(["name", "seed"])["value"].mean().groupby("name")
    per_seed_on = on.groupby(["name", "seed"])["value"].mean().groupby("name")
    table = pd.DataFrame(
        {
            "off-domain": per_seed_off.mean() * 100,
            "off sd": per_seed_off.std(ddof=1) * 100,
            "in-domain": per_seed_on.mean() * 100,
            "in sd": per_seed_on.std(ddof=1) * 100,
            "seeds": per_seed_off.size(),
        }
    )
    targets = off.groupby(["name", "target"])["value"].mean().unstack("target") * 100
    return table.join(targets).round(1)


def _family_baseline(name: str, baselines: list[str]) -> str | None:
    method = name.split(":", 1)[1]
    if method.startswith("coda") or method.startswith("dual-cb"):
        return baselines[1] if len(baselines) > 1 else None
    return baselines[0] if baselines else None


def _family_pairs(names: list[str], baselines: list[str]) -> list[tuple[Side, Side]]:
    pairs = []
    for name in names:
        baseline = _family_baseline(name, baselines)
        if baseline is not None and name != baseline:
            pairs.append(((name,), (baseline,)))
    return pairs


Side = tuple[str, ...]  # one method's name, or two: the first's accuracy minus the second's


def _side(cells: pd.Series, names: Side) -> pd.Series:
    side = cells.loc[names[0]]
    if len(names) == 2:
        other = cells.loc[names[1]]
        common = side.index.intersection(other.index)
        side = side.loc[common] - other.loc[common]
    return side


def _comparisons(frame: pd.DataFrame, pairs: list[tuple[Side, Side]], unit: str) -> pd.DataFrame:
    """Each pair of sides compared over their common off-domain units: mean difference in
    points, its sd, how many better and worse, Wilcoxon p. A unit is a (source, target, seed)
    cell, or with ``unit="model"`` a (source, seed): the mean over its off-domain targets,
    which share that source and seed's models and so are not independent of each other."""
    off = frame[frame["source"] != frame["target"]]
    cells = off.set_index(["name", "source", "target", "seed"])["value"]
    if unit == "model":
        cells = cells.groupby(level=["name", "source", "seed"]).mean()
    known = set(cells.index.get_level_values(0))
    rows = []
    for left, right in pairs:
        if not known.issuperset(left + right):
            continue
        mine, base = _side(cells, left), _side(cells, right)
        common = mine.index.intersection(base.index)
        diff = (mine.loc[common] - base.loc[common]).to_numpy() * 100
        test = wilcoxon(mine.loc[common].to_numpy(), base.loc[common].to_numpy())
        rows.append(
            {
                "method": " - ".join(left),
                "baseline": " - ".join(right),
                "pairs": len(diff),
                "mean diff": round(float(np.mean(diff)), 1),
                "sd": round(float(np.std(diff, ddof=1)), 1) if len(diff) > 1 else np.nan,
                "better": int(np.sum(diff > 0)),
                "worse": int(np.sum(diff < 0)),
                "wilcoxon p": float(f"{test.p:.2g}"),
            }
        )
    return pd.DataFrame(rows)


def _split(item: str, count: int, names: list[str], hint: str, example: str) -> tuple[Side, Side]:
    """``--versus A,B`` as ((A,), (B,)); ``--interaction A,B,C,D`` as ((A, B), (C, D))."""
    given = item.split(",")
    if len(given) != count or not all(given):
        raise click.BadParameter(f"'{item}': give {count} methods, e.g. {example}", param_hint=hint)
    unknown = [n for n in given if n not in names]
    if unknown:
        raise click.BadParameter(
            f"'{unknown[0]}' is in none of the folders; one of: {', '.join(names)}", param_hint=hint
        )
    half = count // 2
    return tuple(given[:half]), tuple(given[half:])


Parts = list[tuple[str, list[str]]]  # the (folder, sources) pooled under one label


def _off_domain_records(parts: Parts, source: str | None) -> list[dict]:
    found = []
    for folder, sources in parts:
        _, _, records = load_run(folder)
        found += [
            record
            for record in records
            if record["source"] != record["target"]
            and (not source or record["source"] == source)
            and (not sources or record["source"] in sources)
        ]
    return found


def _diagnostics(label: str, parts: Parts, source: str | None) -> pd.DataFrame:
    """Per method, the label-free diagnostics after the last adaptation epoch (out of domain,
    mean over cells and seeds), beside the same before adapting where it differs."""
    rows = []
    for record in _off_domain_records(parts, source):
        for adaptation in (record.get("info") or {}).get("adaptations") or []:
            diagnostics = adaptation.get("diagnostics") or {}
            epochs = diagnostics.get("epochs") or []
            if not epochs:
                continue
            loss = diagnostics.get("loss") or [np.nan]
            rows.append(
                {
                    "name": f"{label}:{record['method']}",
                    "ssl loss first": loss[0],
                    "ssl loss last": loss[-1],
                    "weight moved": epochs[-1]["weight_movement_total"],
                    "CKA to step 1": epochs[-1]["cka_to_start"],
                    "predictions changed": epochs[-1]["changed_predictions"],
                    "classes before": epochs[0]["predicted_classes"],
                    "classes after": epochs[-1]["predicted_classes"],
                }
            )
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).groupby("name").mean().round(3)


def _kept(label: str, parts: Parts, source: str | None) -> pd.DataFrame:
    """Per method, the adaptation epoch an epoch rule (``adapt.keep``) kept, out of domain: mean,
    lowest, highest, and how many adaptations kept one before their last."""
    rows = []
    for record in _off_domain_records(parts, source):
        for adaptation in (record.get("info") or {}).get("adaptations") or []:
            kept = adaptation.get("kept_epoch")
            epochs = (adaptation.get("diagnostics") or {}).get("epochs") or []
            if kept is None or not epochs:
                continue
            rows.append({"name": f"{label}:{record['method']}", "kept": kept, "last": epochs[-1]["epoch"]})
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    frame["before last"] = frame["kept"] < frame["last"]
    grouped = frame.groupby("name")
    return pd.DataFrame(
        {
            "kept epoch, mean": grouped["kept"].mean().round(1),
            "lowest": grouped["kept"].min(),
            "highest": grouped["kept"].max(),
            "adaptations": grouped.size(),
            "stopped early": grouped["before last"].sum(),
        }
    )


def _by_epoch(label: str, parts: Parts, source: str | None) -> pd.DataFrame:
    """Per method and adaptation epoch, the predicted-class spread and the CKA to the step-1
    FE (label-free), mean over the off-diagonal cells and seeds."""
    rows = []
    for record in _off_domain_records(parts, source):
        for adaptation in (record.get("info") or {}).get("adaptations") or []:
            for epoch in (adaptation.get("diagnostics") or {}).get("epochs") or []:
                for key in ("predicted_classes", "cka_to_start"):
                    rows.append(
                        {
                            "name": f"{label}:{record['method']}",
                            "diagnostic": key,
                            "epoch": epoch["epoch"],
                            "value": epoch[key],
                        }
                    )
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    return frame.groupby(["name", "diagnostic", "epoch"])["value"].mean().unstack("epoch").round(3)


def _oracle(label: str, parts: Parts, source: str | None) -> pd.DataFrame:
    """ORACLE (target labels; for analysis only): out-of-domain accuracy (%) after each
    adaptation epoch, mean over cells and seeds."""
    frame = pd.concat([_records(folder, source, sources) for folder, sources in parts])
    frame = frame[frame["metric"].astype(str).str.startswith("accuracy@adapt_epoch=")].copy()
    frame = frame[frame["source"].astype(str) != frame["target"].astype(str)]
    if frame.empty:
        return pd.DataFrame()
    frame["epoch"] = frame["metric"].astype(str).str.split("=").str[1].astype(int)
    frame["name"] = label + ":" + frame["method"].astype(str)
    return (frame.groupby(["name", "epoch"])["value"].mean().unstack("epoch") * 100).round(1)


def _markdown(frame: pd.DataFrame, index: bool = True) -> str:
    frame = frame.reset_index() if index else frame
    rows = [
        ["" if isinstance(v, float) and np.isnan(v) else str(v) for v in row]
        for row in frame.itertuples(index=False)
    ]
    return "\n".join(markdown_table([str(c) for c in frame.columns], rows, 1))


@click.command()
@click.argument("folders", nargs=-1, required=True)
@click.option(
    "--baseline",
    "baselines",
    multiple=True,
    help="label:method of the DINO family's baseline, then of the CB family's.",
)
@click.option(
    "--versus",
    "versus",
    multiple=True,
    help="label:method,label:method: the first against the second, as for a baseline.",
)
@click.option(
    "--interaction",
    "interactions",
    multiple=True,
    help="A,B,C,D: (A - B) against (C - D) over their common cells, e.g. what a condition "
    "changes in CODA's lead over ODA.",
)
@click.option("--source", default=None, help="Only the cells trained on this source.")
@click.option("--diagnostics", is_flag=True, help="Also the adaptations' label-free diagnostics.")
@click.option(
    "--by-epoch",
    is_flag=True,
    help="Also the predicted-class spread and CKA to the step-1 FE after each adaptation epoch.",
)
@click.option(
    "--oracle", is_flag=True, help="Also the oracle curve: accuracy by adaptation epoch (analysis only)."
)
@click.option(
    "--at-epoch",
    type=click.IntRange(min=0),
    default=None,
    help="Also each adapting method's accuracy after this adaptation epoch, as label:method@N.",
)
@click.option("--kept", is_flag=True, help="Also the epochs an epoch rule (adapt.keep) kept.")
@click.option(
    "--unit",
    type=click.Choice(["cell", "model"]),
    default="cell",
    show_default=True,
    help="What the comparisons pair: each (source, target, seed) cell, or each (source, seed)'s "
    "mean over its off-domain targets (the targets of one seed share its models).",
)
def main(
    folders, baselines, versus, interactions, source, diagnostics, by_epoch, oracle, at_epoch, kept, unit
):
    parts: dict[str, Parts] = {}
    for item in folders:
        label, folder, sources = _parse(item)
        parts.setdefault(label, []).append((folder, sources))
    frame = pd.concat(
        [
            _rows(label, folder, sources, source, at_epoch)
            for label, pooled in parts.items()
            for folder, sources in pooled
        ],
        ignore_index=True,
    )
    twice = frame.duplicated(["name", "metric", "source", "target", "seed"])
    if twice.any():
        row = frame[twice].iloc[0]
        raise click.BadParameter(
            f"{row['name']} has the cell {row['source']} -> {row['target']}, seed {row['seed']} in two "
            "folders of one label; give each folder its own sources after '@'",
            param_hint="FOLDERS",
        )
    names = list(dict.fromkeys(frame["name"]))
    pairs = _family_pairs(names, list(baselines))
    for item in versus:
        pairs.append(_split(item, 2, names, "--versus", "s:coda,s:oda"))
    for item in interactions:
        pairs.append(_split(item, 4, names, "--interaction", "a1:coda,a1:oda,a0:coda,a0:oda"))
    click.echo(_markdown(_summary(frame)))
    comparisons = _comparisons(frame, pairs, unit)
    if not comparisons.empty:
        click.echo("\n" + _markdown(comparisons, index=False))
    oracle_title = "ORACLE (uses target labels, for analysis only): accuracy (%) by adaptation epoch\n"
    extras = [
        (diagnostics, _diagnostics, ""),
        (kept, _kept, ""),
        (by_epoch, _by_epoch, ""),
        (oracle, _oracle, oracle_title),
    ]
    for wanted, table_of, title in extras:
        if not wanted:
            continue
        tables = [table_of(label, pooled, source) for label, pooled in parts.items()]
        tables = [t for t in tables if not t.empty]
        if tables:
            click.echo("\n" + title + _markdown(pd.concat(tables)))


if __name__ == "__main__":
    main()
