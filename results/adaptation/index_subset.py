"""Write a smaller index of a microscope world: some labs keep only their first batches.

The target-size experiment reads one world through two indexes in the same folder, so that
the images they share are the same files:

    # every lab with its first 3 batches (the size of the default world)
    python results/adaptation/index_subset.py runs/adapt/microscope-world-b8 small.csv --batches 3
    # the training lab with 3 batches, every other lab with all of its batches
    python results/adaptation/index_subset.py runs/adapt/microscope-world-b8 large.csv \
        --batches 3 --labs LabNorth

``hcibench run --dataset folder --set dataset.index=small.csv`` then reads it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("world", type=Path, help="a folder written by microscope_world.py")
    parser.add_argument("name", help="file name of the new index, written beside index.csv")
    parser.add_argument("--batches", type=int, required=True, help="batches kept per cut lab")
    parser.add_argument("--labs", default="", help="comma-separated labs to cut (default: every lab)")
    args = parser.parse_args(argv)
    index = args.world / "index.csv"
    if not index.is_file():
        print(f"error: {index} does not exist; give a folder written by microscope_world.py", file=sys.stderr)
        return 2
    if args.batches < 1:
        print(f"error: --batches is {args.batches}; give 1 or more", file=sys.stderr)
        return 2
    table = pd.read_csv(index)
    labs = set(args.labs.split(",")) if args.labs else set(table["source"])
    unknown = labs - set(table["source"])
    if unknown:
        print(
            f"error: no lab {sorted(unknown)} in {index}; it has {sorted(set(table['source']))}",
            file=sys.stderr,
        )
        return 2
    # Batches are named <lab>-B<number>, numbered from 0 in the order they were imaged.
    number = table["batch"].str.rsplit("-B", n=1).str[1].astype(int)
    keep = ~table["source"].isin(labs) | (number < args.batches)
    out = args.world / args.name
    partial = out.with_suffix(".partial")
    table[keep].to_csv(partial, index=False)
    partial.replace(out)
    counts = table[keep].groupby("source").size()
    print(f"{out}: " + ", ".join(f"{lab} {n}" for lab, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
