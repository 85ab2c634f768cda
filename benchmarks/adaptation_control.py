"""Adaptation on a target whose only shift is pixel noise: a control for ODA and CODA.

The synthetic sources differ in culture and optics, shifts that unlabelled adaptation has no
means to undo (they move every image of a source the same way). Pixel noise is different: it is
independent between two crops of one image and between the two images of a cross-batch pair, so
DINO's view consistency and CODA's pairs both push a feature extractor to ignore it. This
experiment trains every method on S3's training plates, then scores it on S3's held-out
(validation and test) plates with added Gaussian noise of each given strength, adapting the
dual models' feature extractors to those noisy plates first. Where adaptation works, ODA and
CODA recover part of what the noise costs; Supervised and the unadapted dual models cannot.

    python benchmarks/adaptation_control.py --noise 0,0.12 --seeds 0 --set adapt.epochs=30

Stages are cached in ``--stages`` (a run folder: an ``hcibench run`` folder with the same
settings shares its step-1 and step-2 stages). Prints a markdown table of accuracy (%).
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import pandas as pd
import torch

import hcibench
from hcibench import plugins
from hcibench.run import runner
from hcibench.run.stages import Context, StageCache, digest, seed_everything

METHODS = ("supervised", "dual-dino", "oda", "dual-cb", "coda")
SOURCE = "S3"


def noisy_held_out(split, strength: float, seed: int) -> hcibench.Domain:
    """The source's validation and test plates with N(0, strength²) noise on every pixel
    (clipped to the [0, 1] range of the images)."""
    held = [split.val, split.test]
    images = torch.cat([part.stack() for part in held])
    if strength:
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
        images = (images + strength * noise).clamp(0, 1)
    meta = pd.concat([part.meta for part in held], ignore_index=True)
    # The name keys the adaptation stage, so each strength adapts its own feature extractor.
    return hcibench.Domain(
        f"{SOURCE}-held-out-noise{strength:g}", meta, hcibench.TensorImages(images), split.test.classes
    )


def prepare(seeds: list[int], overrides: list[str], stages: str) -> runner.Run:
    """The run ``hcibench run`` would prepare for these methods on S3, so that its settings,
    and so its stages, are the same."""
    grid = runner.Grid(list(METHODS), [SOURCE], [SOURCE], seeds)
    return runner.prepare(runner.RunSpec(grid, Path(stages), overrides=overrides))


@click.command()
@click.option(
    "--noise",
    default="0,0.12",
    show_default=True,
    help="Comma-separated noise strengths (std of the added noise, images in [0, 1]).",
)
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a quick-preset setting, e.g. adapt.epochs=30 (repeatable).",
)
@click.option(
    "--stages",
    default="runs/adaptation-control",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Run folder whose stage cache is used.",
)
def main(noise, seeds, overrides, stages):
    strengths = _numbers(noise, float, "--noise", "0,0.12")
    seed_list = _numbers(seeds, int, "--seeds", "0,1,2")
    if min(strengths) < 0 or min(seed_list) < 0:
        raise click.BadParameter("noise strengths and seeds must be >= 0")
    try:
        run = prepare(seed_list, list(overrides), stages)
    except hcibench.UsageError as error:
        raise click.BadParameter(str(error), param_hint="--set") from None
    identity = {"name": run.spec.dataset, "data": run.spec.data, "options": run.config["dataset"]}
    split = runner.DomainCache(run).split(SOURCE)
    scores: dict[tuple[str, float], list[float]] = {}
    for seed in seed_list:
        context = Context(run.config, seed=seed, source=SOURCE, dataset=identity, stages=StageCache(run.out))
        targets = {strength: noisy_held_out(split, strength, seed) for strength in strengths}
        for name in METHODS:
            started = time.time()
            seed_everything(int(digest([name, SOURCE, seed, "fit"]), 16) % 2**31)
            method = plugins.methods().get(name)(context)
            method.fit(split.train, split.val)
            for strength, target in targets.items():
                seed_everything(int(digest([name, SOURCE, target.name, seed]), 16) % 2**31)
                logits = method.predict(target).logits
                accuracy = (logits.argmax(1) == target.labels).float().mean().item()
                scores.setdefault((name, strength), []).append(100 * accuracy)
            click.echo(
                f"seed {seed} {name}: "
                + ", ".join(f"noise {s:g} {scores[(name, s)][-1]:.1f}" for s in strengths)
                + f" ({time.time() - started:.0f} s)",
                err=True,
            )
    header = ["Method", *(f"noise {s:g}" for s in strengths)]
    click.echo(f"| {' | '.join(header)} |")
    click.echo(f"| {' | '.join(['---'] + ['---:'] * len(strengths))} |")
    for name in METHODS:
        cells = [f"{sum(v) / len(v):.1f}" for v in (scores[(name, s)] for s in strengths)]
        click.echo(f"| {name} | {' | '.join(cells)} |")
    click.echo(
        f"\nAccuracy (%) on {SOURCE}'s held-out plates, mean over seeds "
        f"{', '.join(map(str, seed_list))}; settings changed: "
        f"{', '.join(overrides) or 'none'}."
    )


def _numbers(text: str, kind: type, option: str, example: str) -> list:
    try:
        return [kind(part) for part in text.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated numbers such as {example}, got '{text}'", param_hint=option
        ) from None


if __name__ == "__main__":
    main()
