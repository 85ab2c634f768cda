"""Batch artifacts of the synthetic dataset: what a batch's plates carry besides the cells.

Real Cell Painting batches differ in more than optics: a stain lot precipitates into bright
debris, a camera or a scanning stage leaves bands across every field, and each batch does it its
own way. Each source is prone to its own kinds of artifact (``SOURCE_ARTIFACTS``); every batch
draws one of them and its look (orientation and period of the bands, size and number of the
debris or fibres, which channels they appear in) from the dataset seed, so that the batches of one
source differ from each other and from every other source's batches.

These artifacts are what cross-batch self-supervision can learn to ignore on unlabelled data: two
images of the same compound from two batches share the cells, not the artifacts.
"""

from __future__ import annotations

import math

import torch

from hcibench_plugins.datasets.synthetic_render import BASE, _splat, blur

BANDING, DEBRIS, FIBRES = 0, 1, 2
# The artifact kinds each source's batches draw from. S5 and S10 share a confocal model and a
# kind; the widefield S3 and S11 both band, differently.
SOURCE_ARTIFACTS = {
    "S3": (BANDING,),
    "S5": (DEBRIS,),
    "S8": (FIBRES,),
    "S11": (BANDING, DEBRIS),
    "S7": (FIBRES, DEBRIS),
    "S10": (DEBRIS,),
}
PERIOD = (2.0, 6.0)  # band period range, base pixels
DEBRIS_COUNT = (4.0, 14.0)  # mean particles per field
DEBRIS_RADIUS = (0.5, 1.6)  # particle radius range, base pixels
FIBRE_COUNT = (1.0, 4.0)  # mean fibres per field
FIBRE_LENGTH = (6.0, 20.0)  # base pixels
FIBRE_WIDTH = (0.3, 0.7)  # base pixels
PARTICLES, FIBRES_MAX = 16, 5


def batch_artifacts(kinds: tuple[int, ...], n_batches: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The artifact of each batch, one of ``kinds``: kind, look and channel mix, one row per
    batch."""

    def uniform(bounds, shape=()):
        low, high = bounds
        return low + (high - low) * torch.rand((n_batches, *shape), generator=gen)

    return {
        "kind": torch.tensor(kinds)[torch.randint(0, len(kinds), (n_batches,), generator=gen)],
        "angle": uniform((0.0, math.pi)),
        "period": uniform(PERIOD),
        "count": uniform(DEBRIS_COUNT),
        "radius": uniform(DEBRIS_RADIUS),
        "fibres": uniform(FIBRE_COUNT),
        "length": uniform(FIBRE_LENGTH),
        "width": uniform(FIBRE_WIDTH),
        # Mostly one or two channels, as a stain precipitate or a filter-specific band would be.
        "channels": torch.softmax(2.0 * torch.randn((n_batches, 3), generator=gen), 1),
    }


def render_artifacts(
    artifacts: dict[str, torch.Tensor], batch: torch.Tensor, size: int, strength: float, gen: torch.Generator
) -> torch.Tensor:
    """Additive artifacts (N×3×size×size) for images of the given per-image batch codes."""
    n = len(batch)
    look = {key: value[batch] for key, value in artifacts.items()}
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) * (BASE / size)
    ys, xs = centres.view(1, size, 1), centres.view(1, 1, size)

    angle, period = look["angle"].view(n, 1, 1), look["period"].view(n, 1, 1)
    phase = 2 * math.pi * torch.rand((n, 1, 1), generator=gen)  # bands move between fields
    bands = 0.5 + 0.5 * torch.cos(
        2 * math.pi * (xs * torch.cos(angle) + ys * torch.sin(angle)) / period + phase
    )

    count = torch.poisson(look["count"], generator=gen).clamp(max=PARTICLES)
    present = (torch.arange(PARTICLES) < count[:, None]).float()
    px = torch.rand((n, PARTICLES), generator=gen) * BASE
    py = torch.rand((n, PARTICLES), generator=gen) * BASE
    sigma = look["radius"] * size / BASE
    debris = blur(_splat(px, py, present, size)[:, None], sigma)[:, 0]
    debris = debris * (2 * math.pi * sigma.view(n, 1, 1) ** 2)  # peak about 1 per particle

    fibres = _fibres(look, n, xs, ys, gen)
    kind = look["kind"].view(n, 1, 1)
    pattern = torch.where(
        kind == BANDING, 0.6 * bands, torch.where(kind == DEBRIS, 1.2 * debris, 1.0 * fibres)
    )
    return strength * pattern[:, None] * look["channels"][..., None, None]


def _fibres(look: dict, n: int, xs: torch.Tensor, ys: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Thin straight fibres (lint) at random places, N×H×W with values up to 1."""
    count = torch.poisson(look["fibres"], generator=gen).clamp(max=FIBRES_MAX)
    present = (torch.arange(FIBRES_MAX) < count[:, None]).float()[..., None, None]
    shape = (n, FIBRES_MAX)
    cx, cy = torch.rand(shape, generator=gen) * BASE, torch.rand(shape, generator=gen) * BASE
    angle = torch.rand(shape, generator=gen) * math.pi
    dx, dy = xs[None] - cx[..., None, None], ys[None] - cy[..., None, None]
    along = torch.cos(angle)[..., None, None] * dx + torch.sin(angle)[..., None, None] * dy
    across = torch.cos(angle)[..., None, None] * dy - torch.sin(angle)[..., None, None] * dx
    half = 0.5 * look["length"].view(n, 1, 1, 1)
    width = look["width"].view(n, 1, 1, 1)
    beyond = (along.abs() - half).clamp_min(0)  # distance past the fibre's ends
    line = torch.exp(-0.5 * (across**2 + beyond**2) / width**2)
    return (line * present).amax(1)
