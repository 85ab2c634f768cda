"""One method against another, pooled over the off-diagonal cells of several run folders.

    python results/adaptation/pool.py --pair oda,dual-dino \
        runs/adapt/gpu-step1-budget/dino.epochs=150@S3,S8,S5

Each FOLDER may name the training sources it contributes after an ``@`` (default: all of them),
so that every source comes from the one run in which both methods share their stages: the pairs
are (folder, source, target, seed), the difference is the first method's accuracy minus the
second's, in points. Prints pairs, mean difference, its sample sd, how many pairs are better and
worse, and a two-sided Wilcoxon signed-rank p over the pairs. Target labels are only used here,
to score.
"""

from __future__ import annotations

import click
import numpy as np
import pandas as pd

from hcibench.report.statistics import wilcoxon
from hcibench.report.tables import load_records


def _cells(spec: str) -> pd.DataFrame:
    folder, _, sources = spec.partition("@")
    frame = load_records(folder)
    frame = frame[frame["metric"].astype(str) == "accuracy"].copy()
    for column in ("method", "source", "target"):
        frame[column] = frame[column].astype(str)
    frame = frame[frame["source"] != frame["target"]]
    if sources:
        wanted = sources.split(",")
        missing = sorted(set(wanted) - set(frame["source"]))
        if missing:
            raise click.BadParameter(f"no cells of {', '.join(missing)} in {folder}")
        frame = frame[frame["source"].isin(wanted)]
    frame["folder"] = folder
    return frame.set_index(["folder", "source", "target", "seed", "method"])["value"]


@click.command()
@click.option("--pair", required=True, help="method,baseline: the first against the second.")
@click.argument("folders", nargs=-1, required=True)
def main(pair: str, folders: tuple[str, ...]) -> None:
    names = pair.split(",")
    if len(names) != 2 or not all(names):
        raise click.BadParameter(f"'{pair}': give two methods, e.g. oda,dual-dino", param_hint="--pair")
    method, baseline = names
    cells = pd.concat([_cells(spec) for spec in folders]).unstack("method")
    for name in (method, baseline):
        if name not in cells.columns:
            raise click.BadParameter(f"'{name}' is in none of the folders", param_hint="--pair")
    both = cells[[method, baseline]].dropna()
    diff = (both[method] - both[baseline]).to_numpy() * 100
    test = wilcoxon(both[method].to_numpy(), both[baseline].to_numpy())
    click.echo(
        f"{method} - {baseline}: {len(diff)} pairs, mean {np.mean(diff):+.2f} points "
        f"(sd {np.std(diff, ddof=1):.2f}), better {int(np.sum(diff > 0))}, "
        f"worse {int(np.sum(diff < 0))}, Wilcoxon p {test.p:.2g}"
    )


if __name__ == "__main__":
    main()
