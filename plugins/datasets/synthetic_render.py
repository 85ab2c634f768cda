"""Vectorised rendering of Cell-Painting-like images for the synthetic dataset.

Two stages, kept apart because they model different things:

* ``render_specimen``: what lies in the well, cells whose morphology follows the compound's
  mechanism of action (the signal), as grown and stained by the source's lab, whose culture
  conditions move every compound's morphology alike (nuisance);
* ``image_specimen``: how the source's microscope records it, with channel crosstalk, PSF blur,
  out-of-focus haze, uneven illumination, gain, background, noise and camera response
  (nuisance, shifted slightly per batch and plate).

Both kinds of nuisance are set per source in ``SOURCE_PROFILES`` and survive per-image,
per-channel standardisation: only gain and offset would not.

Channels: 0 DNA (nuclei), 1 cytoplasm (AGP-like: textured body, bright cortex), 2 mitochondria
(spots). Lengths are in *base pixels*, 1/32 of the image side, so a scene renders the same at any
``image_size``; ``zoom`` (a source's pixel scale) multiplies every length of the specimen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BASE = 32.0  # the image side in base pixels
MAX_CELLS = 8
MAX_SPOTS = 16  # organelle spots per cell
FIBRE_PERIOD = 2.6  # cytoplasm texture period, base pixels: near the finest detail at 32 px
EDGE = 0.35  # soft edge width of nuclei and cells, base pixels
FIELD_BUDGET = 2**22  # elements per images×cells×H×W intermediate (16 MiB)

# Morphology parameters, in this column order in every ``morph`` tensor.
MORPHOLOGY = (
    "nucleus_radius",
    "elongation",
    "cell_radius",
    "texture",
    "spots",
    "dispersion",
    "colocalisation",
)

# One row per mechanism of action (names from the Drug Repurposing Hub vocabulary). Each class
# departs from a common baseline (last row) in two or three cues, so that no single cue, and in
# particular not size alone, identifies a class.
MOA_TABLE = {
    #                                   nucleus elong cell  texture spots disp  coloc
    "tubulin polymerization inhibitor": (2.0, 0.10, 3.6, 0.20, 4.0, 0.20, 0.10),
    "HDAC inhibitor": (3.1, 0.10, 5.0, 0.50, 6.0, 0.50, 0.60),
    "CDK inhibitor": (2.9, 0.40, 6.0, 0.50, 6.0, 0.50, 0.10),
    "mTOR inhibitor": (2.4, 0.10, 4.2, 0.50, 3.0, 0.50, 0.10),
    "ATPase inhibitor": (2.4, 0.10, 5.0, 0.50, 11.0, 0.90, 0.10),
    "actin polymerization inhibitor": (2.4, 0.30, 4.6, 0.00, 6.0, 0.50, 0.30),
    "topoisomerase inhibitor": (3.4, 0.05, 5.5, 0.80, 6.0, 0.50, 0.10),
    "glucocorticoid receptor agonist": (2.4, 0.10, 6.2, 0.90, 8.0, 0.50, 0.10),
    "HSP inhibitor": (2.4, 0.10, 5.0, 0.50, 8.0, 0.05, 0.60),
    "EGFR inhibitor": (2.4, 0.10, 5.0, 0.50, 6.0, 0.50, 0.10),
}


@dataclass(frozen=True)
class SourceProfile:
    """How one source records a specimen: its lab's culture and staining, and its microscope."""

    # The lab: cell culture and staining protocol. Culture conditions (confluence, substrate,
    # medium) move every compound's morphology the same way, by as much as a MoA does.
    density: float  # mean cells per field at zoom 1 (seeding density)
    spread: float  # cell body size factor: changes nucleus/cell ratios
    elongation: float  # added to every cell's elongation
    texture: float  # cytoplasm texture factor (actin stain quality)
    spots: float  # visible organelle spot count factor (dye loading)
    dispersion: float  # added to the spot dispersion
    ring: float  # cortical (cell edge) stain strength in the cytoplasm channel
    spot_stain: float  # organelle spot brightness relative to the diffuse organelle stain
    # The microscope.
    zoom: float  # apparent size of everything (objective, camera pixel size)
    blur: float  # PSF sigma, base pixels
    haze: float  # out-of-focus light, as a fraction of the in-focus signal (widefield)
    vignette: float  # illumination falloff at the field corners
    centre: tuple[float, float]  # illumination centre, in [-1, 1] field coordinates
    gain: tuple[float, float, float]
    background: tuple[float, float, float]
    gamma: tuple[float, float, float]  # camera / export response per channel
    read_noise: float
    shot_noise: float  # variance per unit of signal
    crosstalk: tuple[tuple[float, float, float], ...]  # rows: recorded channel, cols: stain


def _bleed(dna_agp=0.0, agp_mito=0.0, mito_agp=0.0, dna_mito=0.0):
    """A crosstalk matrix: the identity plus the named bleed-through fractions."""
    return ((1.0, 0.0, 0.0), (dna_agp, 1.0, mito_agp), (dna_mito, agp_mito, 1.0))


SOURCE_PROFILES = {
    "S3": SourceProfile(
        density=4.5,
        spread=1.00,
        elongation=0.00,
        texture=1.0,
        spots=1.0,
        dispersion=0.0,
        ring=0.5,
        spot_stain=1.0,
        zoom=1.00,
        blur=0.45,
        haze=0.35,
        vignette=0.20,
        centre=(0.0, 0.0),
        gain=(0.80, 0.60, 0.80),
        background=(0.04, 0.06, 0.05),
        gamma=(1.0, 1.0, 1.0),
        read_noise=0.015,
        shot_noise=0.004,
        crosstalk=_bleed(dna_agp=0.08),
    ),
    "S5": SourceProfile(
        density=5.5,
        spread=1.30,
        elongation=0.15,
        texture=0.7,
        spots=0.8,
        dispersion=0.25,
        ring=0.3,
        spot_stain=0.7,
        zoom=0.75,
        blur=0.85,
        haze=0.03,
        vignette=0.10,
        centre=(0.05, -0.05),
        gain=(0.90, 0.50, 0.95),
        background=(0.02, 0.02, 0.02),
        gamma=(0.80, 0.75, 0.70),
        read_noise=0.030,
        shot_noise=0.010,
        crosstalk=_bleed(agp_mito=0.15, mito_agp=0.20),
    ),
    "S8": SourceProfile(
        density=3.5,
        spread=0.80,
        elongation=0.00,
        texture=1.5,
        spots=1.5,
        dispersion=-0.25,
        ring=0.8,
        spot_stain=1.3,
        zoom=1.25,
        blur=1.25,
        haze=0.10,
        vignette=0.45,
        centre=(0.25, 0.15),
        gain=(0.70, 0.55, 0.60),
        background=(0.08, 0.05, 0.10),
        gamma=(1.30, 1.20, 1.40),
        read_noise=0.040,
        shot_noise=0.006,
        crosstalk=_bleed(dna_agp=0.25, mito_agp=0.05),
    ),
    "S11": SourceProfile(
        density=3.0,
        spread=0.75,
        elongation=0.30,
        texture=0.4,
        spots=1.4,
        dispersion=0.3,
        ring=0.6,
        spot_stain=1.0,
        zoom=1.35,
        blur=0.40,
        haze=0.50,
        vignette=0.35,
        centre=(-0.20, 0.20),
        gain=(0.80, 0.50, 0.70),
        background=(0.10, 0.08, 0.06),
        gamma=(1.10, 1.50, 1.20),
        read_noise=0.010,
        shot_noise=0.002,
        crosstalk=_bleed(dna_mito=0.20),
    ),
    "S7": SourceProfile(
        density=6.0,
        spread=0.85,
        elongation=0.05,
        texture=1.4,
        spots=0.6,
        dispersion=-0.2,
        ring=0.6,
        spot_stain=1.2,
        zoom=0.85,
        blur=1.05,
        haze=0.05,
        vignette=0.15,
        centre=(-0.05, 0.05),
        gain=(0.95, 0.50, 0.90),
        background=(0.03, 0.02, 0.03),
        gamma=(0.75, 0.80, 0.70),
        read_noise=0.035,
        shot_noise=0.012,
        crosstalk=_bleed(agp_mito=0.12, mito_agp=0.25),
    ),
    "S10": SourceProfile(
        density=5.0,
        spread=1.35,
        elongation=-0.05,
        texture=0.7,
        spots=1.5,
        dispersion=-0.3,
        ring=0.3,
        spot_stain=0.8,
        zoom=0.72,
        blur=0.90,
        haze=0.03,
        vignette=0.12,
        centre=(0.05, 0.0),
        gain=(0.85, 0.50, 1.00),
        background=(0.02, 0.03, 0.02),
        gamma=(0.85, 0.70, 0.75),
        read_noise=0.025,
        shot_noise=0.010,
        crosstalk=_bleed(agp_mito=0.18, mito_agp=0.08),
    ),
}


def drawn_profile(generator: torch.Generator) -> SourceProfile:
    """A lab and microscope of its own: every setting drawn uniformly between the lowest and the
    highest value the named sources have (per channel for channel settings), so that it is as
    far from each of them as they are from each other, but none of them."""
    named = list(SOURCE_PROFILES.values())

    def draw(values):
        first = values[0]
        if isinstance(first, tuple):
            return tuple(draw([v[i] for v in values]) for i in range(len(first)))
        low, high = min(values), max(values)
        return low + (high - low) * float(torch.rand((), generator=generator))

    fields = SourceProfile.__dataclass_fields__
    return SourceProfile(**{name: draw([getattr(p, name) for p in named]) for name in fields})


# Fixed per source name (never drawn from the seed): six recognisable labs and microscopes.
# S5, S7 and S10 are CV7000/CV8000 confocals, so their optics resemble each other (Table 1);
# their labs still differ. Widefield sources (S3, S11) have haze, LED sources (S8, S11) uneven
# illumination, confocals more blur (lower NA) and noise.

# Log-normal spread of the imaging settings between batches; plates drift by half of it.
BATCH_DRIFT = {
    "gain": 0.15,
    "blur": 0.12,
    "gamma": 0.05,
    "vignette": 0.05,
    "centre": 0.08,
    "background": 0.02,
}


def _column(morph: torch.Tensor, name: str) -> torch.Tensor:
    return morph[:, MORPHOLOGY.index(name), None]  # N×1, broadcasts over cells


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in base pixels, shaped to broadcast over N×K×H×W."""
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) * (BASE / size)
    return centres.view(1, 1, size, 1), centres.view(1, 1, 1, size)


def _place_cells(n: int, density: float, zoom: float, gen: torch.Generator) -> dict:
    """Random cell positions, orientations and size jitter; fewer cells fit when zoomed in."""
    mean = density / zoom**2
    count = (mean + torch.randn(n, generator=gen)).round().clamp(1, MAX_CELLS)
    shape = (n, MAX_CELLS)
    return {
        "present": (torch.arange(MAX_CELLS) < count[:, None]).float(),
        "x": torch.rand(shape, generator=gen) * BASE,
        "y": torch.rand(shape, generator=gen) * BASE,
        "angle": torch.rand(shape, generator=gen) * math.pi,
        "size": torch.exp(0.08 * torch.randn(shape, generator=gen)),
        "fibre_angle": torch.rand(shape, generator=gen) * math.pi,
        "fibre_phase": torch.rand(shape, generator=gen) * 2 * math.pi,
        "lobes": 0.08 * torch.rand(shape, generator=gen),
        "lobe_phase": torch.rand(shape, generator=gen) * 2 * math.pi,
    }


def _soft_step(distance: torch.Tensor) -> torch.Tensor:
    """A sigmoid edge; clamped so that far-away pixels never become denormal floats, which
    slow every later operation on the CPU several-fold."""
    return torch.sigmoid(distance.clamp(-20, 20))


def _cell_fields(morph, cells, zoom, size):
    """Nucleus and cell-body masks and the cytoplasm fibre pattern, each N×K×H×W."""
    ys, xs = _grid(size)
    dx, dy = xs - cells["x"][..., None, None], ys - cells["y"][..., None, None]
    cos, sin = torch.cos(cells["angle"])[..., None, None], torch.sin(cells["angle"])[..., None, None]
    u, v = cos * dx + sin * dy, cos * dy - sin * dx  # cell frame: u along the long axis

    elong = _column(morph, "elongation")[..., None, None]
    nuc_r = (_column(morph, "nucleus_radius") * zoom * cells["size"])[..., None, None]
    cell_r = (_column(morph, "cell_radius") * zoom * cells["size"])[..., None, None]
    edge = EDGE * zoom
    # The nucleus sits off-centre in the cell, as in adherent cells.
    nu = u - 0.15 * (cell_r - nuc_r)
    rn = torch.sqrt((nu / (nuc_r * (1 + elong))) ** 2 + (v * (1 + elong) / nuc_r) ** 2 + 1e-8)
    nucleus = _soft_step((1 - rn) * nuc_r / edge)

    lobes = 1 + cells["lobes"][..., None, None] * torch.cos(
        3 * torch.atan2(v, u) + cells["lobe_phase"][..., None, None]
    )
    rc = torch.sqrt((u / (1 + 0.5 * elong)) ** 2 + (v * (1 + 0.5 * elong)) ** 2 + 1e-8)
    body = _soft_step((1 - rc / (cell_r * lobes)) * cell_r / edge)

    fa = cells["fibre_angle"][..., None, None]
    along = torch.cos(fa) * u + torch.sin(fa) * v
    fibre = 0.5 + 0.5 * torch.cos(
        2 * math.pi * along / (FIBRE_PERIOD * zoom) + cells["fibre_phase"][..., None, None]
    )
    return nucleus, body, fibre


def _spot_positions(morph, cells, zoom, gen):
    """Organelle spot centres (base pixels) and presence, N×K×S: perinuclear or dispersed."""
    n = morph.shape[0]
    shape = (n, MAX_CELLS, MAX_SPOTS)
    mean = _column(morph, "spots").expand(n, MAX_CELLS)
    count = torch.poisson(mean, generator=gen)
    present = (torch.arange(MAX_SPOTS) < count[..., None]).float() * cells["present"][..., None]
    nuc_r = (_column(morph, "nucleus_radius") * zoom * cells["size"])[..., None]
    cell_r = (_column(morph, "cell_radius") * zoom * cells["size"])[..., None]
    near = nuc_r * (1.1 + 0.35 * torch.rand(shape, generator=gen))
    far = nuc_r + (cell_r - nuc_r) * torch.sqrt(torch.rand(shape, generator=gen))
    mix = _column(morph, "dispersion")[..., None]
    radius = (1 - mix) * near + mix * far
    angle = torch.rand(shape, generator=gen) * 2 * math.pi
    x = cells["x"][..., None] + radius * torch.cos(angle)
    y = cells["y"][..., None] + radius * torch.sin(angle)
    return x, y, present


def _splat(x, y, weight, size):
    """Bilinear splatting of points (base pixels, N×M) onto N×H×W images."""
    n = x.shape[0]
    px, py = x * (size / BASE) - 0.5, y * (size / BASE) - 0.5
    x0, y0 = torch.floor(px), torch.floor(py)
    fx, fy = px - x0, py - y0
    out = torch.zeros(n * size * size)
    offsets = torch.arange(n).view(n, 1) * size * size
    for ox, oy, w in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        cx, cy = (x0 + ox).long(), (y0 + oy).long()
        inside = (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size)
        index = offsets + cy.clamp(0, size - 1) * size + cx.clamp(0, size - 1)
        out.index_add_(0, index.flatten(), (w * weight * inside).flatten())
    return out.view(n, size, size)


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels, one row per sigma (pixels)."""
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-0.5 * (taps / sigma.clamp_min(1e-3)[:, None]) ** 2)
    return kernels / kernels.sum(1, keepdim=True)


def blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of N×C×H×W images with one sigma (pixels) per image."""
    n, c, h, w = images.shape
    radius = max(1, min(math.ceil(3 * float(sigma.max())), min(h, w) - 1))
    kernels = _gaussian_kernels(sigma, radius).repeat_interleave(c, 0)  # (N·C)×taps
    flat = images.reshape(1, n * c, h, w)
    flat = F.conv2d(
        F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernels.view(n * c, 1, 1, -1), groups=n * c
    )
    flat = F.conv2d(
        F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernels.view(n * c, 1, -1, 1), groups=n * c
    )
    return flat.view(n, c, h, w)


def _cultured(morph: torch.Tensor, profile: SourceProfile, culture: float) -> torch.Tensor:
    """The morphology as grown in one lab: its culture spreads and stretches cells its way.
    ``culture`` scales the lab's departures from a neutral culture (0: none, 1: as profiled)."""

    def factor(value):
        return culture * value + (1 - culture)  # exactly ``value`` at culture 1

    morph = morph.clone()
    morph[:, MORPHOLOGY.index("cell_radius")] *= factor(profile.spread)
    elongation = morph[:, MORPHOLOGY.index("elongation")]
    morph[:, MORPHOLOGY.index("elongation")] = (elongation + culture * profile.elongation).clamp_min(0)
    morph[:, MORPHOLOGY.index("texture")] *= factor(profile.texture)
    morph[:, MORPHOLOGY.index("spots")] *= factor(profile.spots)
    dispersion = morph[:, MORPHOLOGY.index("dispersion")]
    morph[:, MORPHOLOGY.index("dispersion")] = (dispersion + culture * profile.dispersion).clamp(0, 1)
    return morph


def _cell_stains(morph, cells, profile, size):
    """DNA, cytoplasm and diffuse organelle stain of the cells, N×H×W each."""
    nucleus, body, fibre = _cell_fields(morph, cells, profile.zoom, size)
    present = cells["present"][..., None, None]
    texture = _column(morph, "texture")[..., None, None]
    ring = 4 * body * (1 - body)  # cortical actin at the cell edge
    dna = (nucleus * present).sum(1)
    agp = ((body * (0.35 + 0.9 * texture * fibre) * (1 - 0.6 * nucleus) + profile.ring * ring) * present).sum(
        1
    )
    diffuse = (0.12 * body * (1 - nucleus) * present).sum(1)
    return dna, agp, diffuse


def render_specimen(
    morph: torch.Tensor, profile: SourceProfile, size: int, gen: torch.Generator, culture: float = 1.0
) -> torch.Tensor:
    """Noise-free stain intensities (N×3×size×size) of fields whose cells follow ``morph``
    (N×len(MORPHOLOGY), one row per image), grown and stained by the lab of ``profile``
    (``culture``: see :func:`_cultured`)."""
    n, zoom = morph.shape[0], profile.zoom
    morph = _cultured(morph, profile, culture)
    cells = _place_cells(n, profile.density, zoom, gen)
    sx, sy, spot_present = _spot_positions(morph, cells, zoom, gen)
    # Blocks of images keep the N×cells×H×W intermediates small at large image sizes.
    block = max(1, FIELD_BUDGET // (MAX_CELLS * size * size))
    parts = [
        _cell_stains(morph[i : i + block], {k: v[i : i + block] for k, v in cells.items()}, profile, size)
        for i in range(0, n, block)
    ]
    dna, agp, diffuse = (torch.cat(stain) for stain in zip(*parts))

    points = _splat(sx.view(n, -1), sy.view(n, -1), spot_present.view(n, -1), size)
    sigma = torch.full((n,), 0.45 * zoom * size / BASE)
    spots = blur(points[:, None], sigma)[:, 0] * (2 * math.pi * sigma[:, None, None] ** 2)
    coloc = _column(morph, "colocalisation")[..., None]
    return torch.stack([dna, agp + 0.8 * coloc * spots, diffuse + profile.spot_stain * spots], 1)


def imaging_settings(
    profile: SourceProfile, batch: torch.Tensor, plate: torch.Tensor, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """Per-image imaging settings: the source's optics shifted per batch and, by half as much,
    per plate. ``batch`` and ``plate`` are per-image integer codes."""
    n_batches, n_plates = int(batch.max()) + 1, int(plate.max()) + 1

    def drift(key, shape):
        scale = BATCH_DRIFT[key]
        return (scale * torch.randn((n_batches, *shape), generator=gen))[batch] + (
            0.5 * scale * torch.randn((n_plates, *shape), generator=gen)
        )[plate]

    def values(field):
        return torch.tensor(getattr(profile, field), dtype=torch.float32)

    return {
        "gain": values("gain") * torch.exp(drift("gain", (3,))),
        "blur": values("blur") * torch.exp(drift("blur", ())),
        "gamma": values("gamma") * torch.exp(drift("gamma", (3,))),
        "vignette": (values("vignette") + drift("vignette", ())).clamp(0, 0.8),
        "centre": values("centre") + drift("centre", (2,)),
        "background": (values("background") + drift("background", (3,)).abs()),
        "haze": values("haze").expand(len(batch)),
        "read_noise": values("read_noise").expand(len(batch)),
        "shot_noise": values("shot_noise").expand(len(batch)),
        "crosstalk": values("crosstalk"),
    }


def _haze(images: torch.Tensor) -> torch.Tensor:
    """Out-of-focus light: a wide blur, computed at low resolution because it is smooth."""
    size = images.shape[-1]
    low = min(size, 32)
    small = F.adaptive_avg_pool2d(images, low) if low < size else images
    small = blur(small, torch.full((len(images),), 4.0 * low / BASE))
    if low < size:
        return F.interpolate(small, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return small


def _illumination(settings: dict, size: int) -> torch.Tensor:
    """Illumination falloff around an off-centre optical axis, N×1×H×W."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    cx, cy = settings["centre"][:, 0, None, None], settings["centre"][:, 1, None, None]
    r2 = ((coords.view(1, 1, -1) - cx) ** 2 + (coords.view(1, -1, 1) - cy) ** 2) / 2
    return (1 - settings["vignette"][:, None, None] * r2).clamp_min(0.2)[:, None]


def image_specimen(
    specimen: torch.Tensor, settings: dict, gen: torch.Generator, artifacts: torch.Tensor | None = None
) -> torch.Tensor:
    """Record a specimen (N×3×H×W) through per-image ``settings``; values in [0, 1].
    ``artifacts`` (N×3×H×W, optional) join the in-focus image, as debris or banding would."""
    n, _, size, _ = specimen.shape
    x = torch.einsum("cd,ndhw->nchw", settings["crosstalk"], specimen)
    x = blur(x, settings["blur"] * size / BASE) + settings["haze"].view(n, 1, 1, 1) * _haze(x)
    if artifacts is not None:
        x = x + artifacts
    x = x * _illumination(settings, size) * settings["gain"][..., None, None]
    x = x + settings["background"][..., None, None]
    # Shot noise grows with the signal, read noise does not: both survive standardisation.
    shot = torch.sqrt(x.clamp_min(0) * settings["shot_noise"].view(n, 1, 1, 1))
    x = x + shot * torch.randn(x.shape, generator=gen)
    x = x + settings["read_noise"].view(n, 1, 1, 1) * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1) ** settings["gamma"][..., None, None]


def quantise(images: torch.Tensor) -> torch.Tensor:
    """Round to 16-bit levels so that a uint16 TIFF round trip is bit-exact."""
    return torch.round(images.clamp(0, 1) * 65535) / 65535
