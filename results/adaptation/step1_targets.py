"""How peaked step 1's DINO teacher targets are at the end of step 1, from a run's stage files.

    python results/adaptation/step1_targets.py runs/adapt/base-culture1/stages

For every step-1 stage (fe-dino, fe-dino-cb): the teacher's target entropy as a share of the
largest (ln K) in the first and the last epoch, the prototype usage in the last, and the DINO
loss in the first and last epoch; then the mean per kind. Source images only: no labels. Stages
that chose their epoch by k-NN accuracy on the source's validation plate (dino.select=knn) also
show that curve (source labels) and the epoch kept, and are summarised apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch


def main(folder: str) -> None:
    rows: dict[str, list] = {}
    for path in sorted(Path(folder).glob("fe-dino*.pt")):
        stats = torch.load(path, weights_only=False)["stats"]
        kind = "fe-dino-cb" if stats["cross_batch"] else "fe-dino"
        if "knn_accuracy" in stats:
            kind += " (knn)"
            curve = " ".join(f"{v:.2f}" for v in stats["knn_accuracy"])
            print(f"{path.stem:<24} k-NN accuracy by epoch {curve}; kept epoch {stats['selected_epoch']}")
        row = (
            stats["target_entropy"][0],
            stats["target_entropy"][-1],
            stats["target_usage"][-1],
            stats["epoch_losses"][0],
            stats["epoch_losses"][-1],
        )
        rows.setdefault(kind, []).append(row)
        print(
            f"{path.stem:<24} entropy {row[0]:.3f} -> {row[1]:.3f}  usage {row[2]:.3f}  "
            f"loss {row[3]:.2f} -> {row[4]:.2f}"
        )
    for kind, values in rows.items():
        if values:
            mean = np.mean(values, axis=0)
            print(
                f"{kind:<12} mean of {len(values)}: entropy {mean[0]:.2f} -> {mean[1]:.2f}, "
                f"usage {mean[2]:.2f}, loss {mean[3]:.2f} -> {mean[4]:.2f}"
            )


if __name__ == "__main__":
    main(sys.argv[1])
