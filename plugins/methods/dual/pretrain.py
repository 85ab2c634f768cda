"""``hcibench pretrain``: a feature extractor trained with DINO on every image of a corpus of
sources, without labels, written as a weights file for ``--pretrained FILE``.

The CODA paper starts its FE from ImageNet weights, learned on data disjoint from every source
and target. This is the same starting point for any dataset plugin: pretrain on sources that a
run neither trains on nor tests on (for the synthetic data, labs drawn from another seed with
``--set dataset.labs=N``: sources L1..LN), then give the file to the runs. The backbone and
DINO settings are the preset's with ``--set`` changes, exactly as in a run's step 1; the file
holds the teacher's backbone weights (what a run's FE starts from) and how they were made.

A killed pretraining goes on from its saved progress (kept beside ``--out`` until the file is
written); the file appears only when complete.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import click
import pandas as pd
import torch
from rich.console import Console

from hcibench import __version__
from hcibench.data import Domain, TensorImages
from hcibench.errors import UsageError
from hcibench.run import accelerator, storage
from hcibench.run.display import progress_bars
from hcibench.run.progress import Progress as Silent
from hcibench.run.progress import RichProgress
from hcibench.run.runner import Grid, Run, RunSpec, prepare
from hcibench.run.stages import Context, StageCache
from hcibench.train.modality import backbone_settings

from .steps import dino_settings, run_dino


def pooled(domains: list[Domain], name: str) -> Domain:
    """One domain holding every image of ``domains``, in order."""
    meta = [domain.meta for domain in domains]
    images = torch.cat([domain.stack() for domain in domains])
    return Domain(name, pd.concat(meta, ignore_index=True), TensorImages(images), domains[0].classes)


def progress_folder(out: Path) -> Path:
    """Where a pretraining for ``out`` keeps its progress until the file is written."""
    return out.parent / f".{out.name}.progress"


def pretrain(run: Run, out: Path, progress=None) -> dict:
    """Pretrain on every image of ``run``'s sources (a prepared run, see
    :func:`hcibench.run.runner.prepare`); returns what the file holds."""
    config, spec = run.config, run.spec
    if config.get("modality", "image") != "image":
        raise UsageError("hcibench pretrain trains image backbones; this dataset holds profiles")
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    device = accelerator.resolve_device(config.get("device"))
    precision = accelerator.resolve_precision(config.get("precision"), device)
    corpus = pooled([run.dataset.domain(source) for source in run.grid.sources], "corpus")
    settings = dino_settings(config["dino"], cross_batch=False, precision=precision)
    # The stage's key holds the corpus (dataset, its options, sources), so saved progress of one
    # corpus is never resumed by a command for another that writes the same file.
    context = Context(
        config,
        seed=run.grid.seeds[0],
        source="+".join(run.grid.sources),
        dataset={"name": spec.dataset, "data": spec.data, "options": config["dataset"]},
        stages=StageCache(progress_folder(out)),
        progress=progress or Silent(),
        device=device,
        precision=precision,
    )
    backbone = backbone_settings(config)
    key = {"backbone": backbone, "dino": asdict(settings)}
    started = time.perf_counter()
    result = context.stage(
        "pretrain",
        key,
        lambda: run_dino(
            config,
            corpus.images[0].shape[0],
            corpus,
            settings,
            context,
            None,
            f"pretraining on {len(corpus)} images",
        ),
    )
    return {
        "teacher": result["teacher"],
        "backbone": backbone,
        "dino": asdict(settings),
        "corpus": {
            "dataset": spec.dataset,
            "data": spec.data,
            "options": config["dataset"],
            "sources": run.grid.sources,
            "images": len(corpus),
        },
        "seed": run.grid.seeds[0],
        "loss": result["stats"]["epoch_losses"],
        "seconds": time.perf_counter() - started,
        "hcibench": __version__,
        "torch": str(torch.__version__),
    }


@click.command(name="pretrain")
@click.option("--sources", required=True, help="The corpus: sources whose images (all of them) train the FE.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The weights file to write.")
@click.option("--dataset", default="synthetic", show_default=True, help="Dataset plugin.")
@click.option("--data", "data_path", help="Path to the dataset on disk, for datasets that read one.")
@click.option("--preset", type=click.Choice(["quick", "paper"]), default="quick", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="A setting, as for `hcibench run` (e.g. --set dino.epochs=100 --set dataset.labs=8).",
)
def pretrain_command(sources, out, dataset, data_path, preset, seed, overrides):
    """Pretrain a feature extractor with DINO on every image of SOURCES (no labels used) and
    write its weights to OUT, for `hcibench run --pretrained OUT`."""
    names = [s.strip() for s in sources.split(",") if s.strip()]
    if not names:
        raise UsageError("--sources is empty: name the corpus's sources, e.g. --sources L1,L2,L3")
    if out.exists():
        raise UsageError(f"{out} exists: remove it or give another --out")
    if not out.parent.is_dir():
        raise UsageError(f"folder {out.parent} does not exist")
    spec = RunSpec(
        grid=Grid(["dual-dino"], names, names, [seed]),
        out=out.parent,
        dataset=dataset,
        data=data_path,
        preset=preset,
        overrides=list(overrides),
    )
    run = prepare(spec)  # every name and setting checked before anything is shown or written
    console = Console()
    with progress_bars(console) as display:
        weights = pretrain(run, out, RichProgress(display))
    storage.save_torch(out, weights)
    shutil.rmtree(progress_folder(out), ignore_errors=True)
    console.print(
        f"{out}: FE pretrained on {weights['corpus']['images']} images of {', '.join(names)} "
        f"({weights['dino']['epochs']} epochs, last loss {weights['loss'][-1]:.3f}); "
        f"use it with `hcibench run --pretrained {out}`"
    )
