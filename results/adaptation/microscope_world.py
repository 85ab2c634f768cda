"""Write a Cell-Painting-like image set whose nuisance model hcibench's renderer does not share.

hcibench's own synthetic data draws cells and lab effects with ``plugins/datasets/
synthetic_render.py``. This program is deliberately separate from it (numpy and scipy only, no
hcibench import): other cells, other compounds, and labs that differ by their *microscope* only,
through effects the project's renderer does not model in this form:

- pixel scale (the same cells imaged at another magnification),
- anisotropic blur (a tilted, astigmatic point-spread function) and per-site focus jitter,
- channel misregistration (each channel shifted by up to a few pixels),
- vignetting and a linear illumination gradient,
- per-channel gain, background and crosstalk between channels,
- a camera response (gamma), shot noise at the lab's photon budget and read noise,
- a drift of gain and background from batch to batch within a lab (small by default;
  ``--batch-drift``),
- optionally, batches that differ the way labs do (``--batch-scope``): each batch images with
  its own microscope, the lab's moved part of the way towards a freshly drawn one;
- optionally, artifacts of each batch's own (``--batch-artifacts``): stain crystals on the
  specimen, unbound dye as a haze over the field, or dust on the optics that shades the same
  places of every field of the batch; each batch draws one kind and its look.

No lab changes the cells themselves: a compound's morphology is the same everywhere.

The output is the generic index CSV that ``hcibench --dataset folder`` reads: ``index.csv``
(path, source, batch, plate, well, site, compound, label), ``classes.txt`` and one 8-bit RGB
PNG per image (channels: DNA, cytoplasm, mitochondria).

    python results/adaptation/microscope_world.py --out data/microscope-world
"""

from __future__ import annotations

import argparse
import copy
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

CLASSES = ["actin", "dna-damage", "mitotic", "metabolic", "er-stress", "control"]
# Per class, the mean cell morphology: nucleus radius, nucleus elongation, cytoplasm radius
# (relative to the nucleus), cytoplasm brightness, mitochondria count, their spread (relative to
# the cytoplasm), nucleus texture (granularity), cytoplasm edge roughness.
MORPHOLOGY = {
    "actin": (5.0, 1.15, 2.4, 0.55, 14, 0.70, 0.10, 0.45),
    "dna-damage": (6.4, 1.05, 1.9, 0.45, 10, 0.55, 0.45, 0.10),
    "mitotic": (3.8, 1.00, 1.5, 0.75, 6, 0.45, 0.20, 0.05),
    "metabolic": (5.0, 1.10, 2.1, 0.40, 28, 0.85, 0.12, 0.12),
    "er-stress": (5.4, 1.35, 2.6, 0.85, 12, 0.60, 0.15, 0.20),
    "control": (5.0, 1.15, 2.1, 0.55, 14, 0.65, 0.12, 0.12),
}
SPREAD = np.array([0.10, 0.05, 0.08, 0.10, 0.15, 0.08, 0.20, 0.25])  # compound around its class
CELL_SPREAD = np.array([0.12, 0.06, 0.10, 0.12, 0.25, 0.10, 0.25, 0.30])  # cell around compound
RENDER = 96  # cells are drawn on a larger canvas, then imaged at the lab's scale


@dataclass(frozen=True)
class Microscope:
    scale: float  # pixels of the canvas per output pixel
    blur: tuple[float, float, float]  # sigma along x, along y (pixels), rotation (radians)
    shift: np.ndarray  # 3 × 2 channel offsets (pixels)
    vignetting: float
    gradient: np.ndarray  # illumination slope along x and y
    gain: np.ndarray  # 3
    background: np.ndarray  # 3
    crosstalk: np.ndarray  # 3 × 3 (rows: camera channel, columns: dye)
    gamma: float
    photons: float  # photons at full scale (shot noise)
    read_noise: float


def draw_microscope(rng: np.random.Generator) -> Microscope:
    crosstalk = np.eye(3)
    crosstalk[~np.eye(3, dtype=bool)] = rng.uniform(0.0, 0.3, 6)
    return Microscope(
        scale=float(rng.uniform(1.1, 2.0)),
        blur=(float(rng.uniform(0.2, 1.6)), float(rng.uniform(0.2, 1.6)), float(rng.uniform(0, np.pi))),
        shift=rng.uniform(-2.5, 2.5, (3, 2)),
        vignetting=float(rng.uniform(0.0, 0.5)),
        gradient=rng.uniform(-0.3, 0.3, 2),
        gain=rng.uniform(0.5, 1.6, 3),
        background=rng.uniform(0.0, 0.15, 3),
        crosstalk=crosstalk,
        gamma=float(rng.uniform(0.6, 1.5)),
        photons=float(np.exp(rng.uniform(np.log(30), np.log(400)))),
        read_noise=float(rng.uniform(0.005, 0.03)),
    )


def blend(lab: Microscope, other: Microscope, weight: float) -> Microscope:
    """The lab's microscope moved ``weight`` of the way towards ``other`` in every setting.

    Photon budgets are blended on a log scale (they span an order of magnitude); the blur's
    orientation is blended as an angle, which keeps it a valid rotation.
    """

    def mix(a, b):
        return (1 - weight) * np.asarray(a, dtype=float) + weight * np.asarray(b, dtype=float)

    return Microscope(
        scale=float(mix(lab.scale, other.scale)),
        blur=tuple(float(v) for v in mix(lab.blur, other.blur)),
        shift=mix(lab.shift, other.shift),
        vignetting=float(mix(lab.vignetting, other.vignetting)),
        gradient=mix(lab.gradient, other.gradient),
        gain=mix(lab.gain, other.gain),
        background=mix(lab.background, other.background),
        crosstalk=mix(lab.crosstalk, other.crosstalk),
        gamma=float(mix(lab.gamma, other.gamma)),
        photons=float(np.exp(mix(np.log(lab.photons), np.log(other.photons)))),
        read_noise=float(mix(lab.read_noise, other.read_noise)),
    )


def draw_cell(canvas: np.ndarray, rng: np.random.Generator, centre: np.ndarray, morph: np.ndarray) -> None:
    """Add one cell (nucleus, cytoplasm, mitochondria) to the 3 × RENDER × RENDER canvas."""
    nucleus, elongation, cyto, cyto_bright, spots, spot_spread, texture, rough = morph
    yy, xx = np.mgrid[0:RENDER, 0:RENDER].astype(float)
    angle = rng.uniform(0, np.pi)
    dx, dy = xx - centre[0], yy - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    radius = np.hypot(u / elongation, v * elongation)
    theta = np.arctan2(v, u)
    nuc = 1 / (1 + np.exp((radius - nucleus) * 2.0))
    grain = ndimage.gaussian_filter(rng.normal(0, 1, (RENDER, RENDER)), 1.0)
    canvas[0] += nuc * (0.8 + texture * grain)
    wobble = 1 + rough * np.sin(5 * theta + rng.uniform(0, 2 * np.pi)) * np.cos(3 * theta)
    cyto_radius = nucleus * cyto * wobble
    canvas[1] += cyto_bright / (1 + np.exp((np.hypot(u, v) - cyto_radius) * 1.2)) * (1 - 0.6 * nuc)
    count = max(1, int(round(spots)))
    r = np.sqrt(rng.uniform(0.15, 1.0, count)) * nucleus * cyto * spot_spread * 1.4
    phi = rng.uniform(0, 2 * np.pi, count)
    for px, py in zip(centre[0] + r * np.cos(phi), centre[1] + r * np.sin(phi)):
        canvas[2] += 0.7 * np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / 2.0)


def render_specimen(rng: np.random.Generator, compound_morph: np.ndarray) -> np.ndarray:
    canvas = np.zeros((3, RENDER, RENDER))
    for _ in range(rng.integers(3, 7)):
        morph = compound_morph * (1 + CELL_SPREAD * rng.normal(0, 1, len(compound_morph)))
        draw_cell(canvas, rng, rng.uniform(12, RENDER - 12, 2), np.maximum(morph, 0.05))
    return canvas


CRYSTALS, HAZE, DUST = "crystals", "haze", "dust"


@dataclass(frozen=True)
class BatchArtifact:
    """What one batch's plates carry besides the cells, drawn once per batch."""

    kind: str
    channels: np.ndarray  # 3, the dyes (crystals, haze) the artifact shows in; sums to 1
    count: float  # crystals per field (mean)
    size: float  # crystal half-width or haze grain (canvas pixels)
    dust: np.ndarray  # k × 3: centre x, centre y (output fraction), radius (output fraction)


def draw_batch_artifact(rng: np.random.Generator) -> BatchArtifact:
    weights = np.exp(2.0 * rng.normal(0, 1, 3))
    return BatchArtifact(
        kind=str(rng.choice([CRYSTALS, HAZE, DUST])),
        channels=weights / weights.sum(),
        count=float(rng.uniform(4, 12)),
        size=float(rng.uniform(2.0, 5.0)),
        dust=_dust_specks(rng),
    )


def _dust_specks(rng: np.random.Generator) -> np.ndarray:
    count = int(rng.integers(3, 9))
    return np.column_stack([rng.uniform(0.1, 0.9, (count, 2)), rng.uniform(0.08, 0.2, count)])


def with_specimen_artifact(specimen: np.ndarray, artifact: BatchArtifact, strength: float, rng) -> np.ndarray:
    """One field's canvas with crystals or haze added: they lie on the specimen, so the
    microscope blurs, scales and colours them as it does the cells."""
    if artifact.kind == CRYSTALS:
        yy, xx = np.mgrid[0:RENDER, 0:RENDER].astype(float)
        layer = np.zeros((RENDER, RENDER))
        for _ in range(rng.poisson(artifact.count)):
            cx, cy = rng.uniform(0, RENDER, 2)
            angle = rng.uniform(0, np.pi / 2)
            u = np.abs((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle))
            v = np.abs(-(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle))
            half = artifact.size * rng.uniform(0.6, 1.4)
            layer = np.maximum(layer, 1.5 * (np.maximum(u, v) <= half))  # sharp, brighter than nuclei
    elif artifact.kind == HAZE:
        cloud = ndimage.gaussian_filter(rng.normal(0, 1, (RENDER, RENDER)), 4 * artifact.size)
        layer = np.clip(cloud / (cloud.std() + 1e-8), 0, None) * 0.4
    else:
        return specimen
    return specimen + strength * layer[None] * artifact.channels[:, None, None]


def dust_shade(artifact: BatchArtifact, strength: float, size: int) -> np.ndarray | None:
    """The share of light that reaches each output pixel past the batch's dust (1: all): soft
    dark discs at the same places in every field of the batch; None for other kinds."""
    if artifact.kind != DUST:
        return None
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    shade = np.ones((size, size))
    for cx, cy, radius in artifact.dust:
        disc = 1 / (1 + np.exp((np.hypot(xx - cx, yy - cy) - radius) / (0.2 * radius)))
        shade *= 1 - min(0.95, 0.7 * strength) * disc
    return shade


def image(
    specimen: np.ndarray,
    scope: Microscope,
    drift: np.ndarray,
    size: int,
    rng: np.random.Generator,
    shade: np.ndarray | None = None,
) -> np.ndarray:
    """What the lab's microscope records of a specimen: size × size × 3 in [0, 1]; ``shade``
    (size × size) dims the light where dust sits in the optics."""
    sx, sy, rot = scope.blur
    focus = rng.uniform(0.8, 1.3)  # per-site focus jitter
    out = np.empty((3, size, size))
    grid = (np.mgrid[0:size, 0:size].astype(float) - size / 2) * scope.scale + RENDER / 2
    for c in range(3):
        rotated = ndimage.rotate(specimen[c], np.degrees(rot), reshape=False, order=1)
        blurred = ndimage.gaussian_filter(rotated, (sy * focus * scope.scale, sx * focus * scope.scale))
        back = ndimage.rotate(blurred, -np.degrees(rot), reshape=False, order=1)
        coords = grid + scope.shift[c][::-1, None, None] * scope.scale
        out[c] = ndimage.map_coordinates(back, coords, order=1, mode="constant")
    out = np.einsum("cd,dhw->chw", scope.crosstalk, out)
    yy, xx = (np.mgrid[0:size, 0:size] / (size - 1) - 0.5) * 2
    light = (1 - scope.vignetting * (xx**2 + yy**2) / 2) * (
        1 + scope.gradient[0] * xx + scope.gradient[1] * yy
    )
    if shade is not None:
        light = light * shade
    gain = scope.gain * (1 + drift[:3])
    out = out * light * gain[:, None, None] + (scope.background * (1 + drift[3:]))[:, None, None]
    out = np.clip(out, 0, None) ** scope.gamma
    out = rng.poisson(np.clip(out, 0, 4) * scope.photons) / scope.photons
    out = out + rng.normal(0, scope.read_noise, out.shape)
    return np.clip(out, 0, 1).transpose(1, 2, 0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labs", default="LabNorth,LabEast,LabSouth,LabWest")
    parser.add_argument("--compounds-per-class", type=int, default=4)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--plates-per-batch", type=int, default=2)
    parser.add_argument("--wells", type=int, default=2, help="wells per compound and plate")
    parser.add_argument("--sites", type=int, default=2, help="images per well")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--batch-drift",
        type=float,
        default=0.05,
        help="sd of the relative change of gain and background from batch to batch within a lab",
    )
    parser.add_argument(
        "--batch-scope",
        type=float,
        default=0.0,
        help="how far (0-1) each batch's microscope moves from the lab's towards a freshly drawn "
        "one; 0 (default) images every batch of a lab with the same microscope",
    )
    parser.add_argument(
        "--batch-artifacts",
        type=float,
        default=0.0,
        help="strength of each batch's own artifacts (0, the default: none; 1: crystals and haze "
        "as bright as the cells, dust that takes 70 %% of the light)",
    )
    args = parser.parse_args(argv)
    if args.batch_artifacts < 0:
        print(f"error: --batch-artifacts is {args.batch_artifacts}; give a strength >= 0", file=sys.stderr)
        return 2
    if not 0.0 <= args.batch_scope <= 1.0:
        print(f"error: --batch-scope is {args.batch_scope}; give a value from 0 to 1", file=sys.stderr)
        return 2
    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out} is not empty; give a new folder with --out", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    # Batch microscopes come from their own stream, so that cells, compounds, the labs'
    # microscopes and the noise are the same whatever --batch-scope is.
    batch_rng = np.random.default_rng([args.seed, 1])
    # Artifacts likewise: their looks and their places in each field have streams of their own.
    look_rng, artifact_rng = np.random.default_rng([args.seed, 2]), np.random.default_rng([args.seed, 3])
    compounds = []
    for label in CLASSES:
        base = np.array(MORPHOLOGY[label], dtype=float)
        for k in range(args.compounds_per_class):
            compounds.append((f"{label}-{k}", label, base * (1 + SPREAD * rng.normal(0, 1, len(base)))))
    rows = []
    labs = args.labs.split(",")
    for lab in labs:
        scope = draw_microscope(rng)
        for batch in range(args.batches):
            # Clipped so that no batch loses its signal (never reached at the default spread).
            drift = np.clip(rng.normal(0, args.batch_drift, 6), -0.8, None)
            batch_scope = scope
            if args.batch_scope > 0:
                batch_scope = blend(scope, draw_microscope(batch_rng), args.batch_scope)
            artifact = draw_batch_artifact(look_rng) if args.batch_artifacts > 0 else None
            shade = dust_shade(artifact, args.batch_artifacts, args.size) if artifact else None
            for p in range(args.plates_per_batch):
                plate = f"{lab}-B{batch}-P{p}"
                folder = args.out / lab / plate
                folder.mkdir(parents=True, exist_ok=True)
                wells = iter(f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25))
                for name, label, morph in compounds:
                    for _ in range(args.wells):
                        well = next(wells)
                        for site in range(args.sites):
                            specimen = render_specimen(rng, morph)
                            if artifact is None:
                                pixels = image(specimen, batch_scope, drift, args.size, rng)
                            else:
                                # numpy's Poisson sampler takes a number of draws that depends on
                                # the pixel values; imaging the clean field with the main stream
                                # keeps every later cell and microscope as without artifacts, and
                                # a twin of the stream gives the field with them the same focus
                                # and noise draws.
                                twin = copy.deepcopy(rng)
                                image(specimen, batch_scope, drift, args.size, rng)
                                dirty = with_specimen_artifact(
                                    specimen, artifact, args.batch_artifacts, artifact_rng
                                )
                                pixels = image(dirty, batch_scope, drift, args.size, twin, shade)
                            path = folder / f"{well}-{site}.png"
                            Image.fromarray((pixels * 255).round().astype(np.uint8)).save(path)
                            rows.append(
                                [
                                    path.relative_to(args.out).as_posix(),
                                    lab,
                                    f"{lab}-B{batch}",
                                    plate,
                                    well,
                                    site,
                                    name,
                                    label,
                                ]
                            )
        print(f"{lab}: {sum(r[1] == lab for r in rows)} images", file=sys.stderr)
    with open(args.out / "index.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "source", "batch", "plate", "well", "site", "compound", "label"])
        writer.writerows(rows)
    (args.out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
