"""The ``synthetic`` dataset: six generated imaging sources named after the paper's (Table 1).

Every source holds the same compounds, each on every plate. What differs is the source: its
lab's culture and staining (cell spreading, texture, organelle stain) and its microscope (pixel
scale, blur, haze, illumination, gain, gamma, noise, crosstalk), drifting slightly per batch
and plate. The rendering is in
``synthetic_render``; this module lays out plates and wells, seeds the generators and caches
domains.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import click
import pandas as pd
import torch

import hcibench
from hcibench.errors import unknown_name
from hcibench_plugins.datasets import synthetic_artifacts as artifacts
from hcibench_plugins.datasets import synthetic_render as render

# (batches, plates) per source: Table 1 scaled down, keeping at least 3 plates (train,
# validation and test plates) and 2 batches (cross-batch pairs) everywhere.
SOURCE_LAYOUT = {"S3": (4, 6), "S5": (6, 6), "S8": (3, 3), "S11": (2, 4), "S7": (3, 3), "S10": (3, 3)}
# The layout of every source of ``synthetic-labs`` (L1, L2, ...: labs drawn from the seed).
LAB_LAYOUT = (3, 3)
# The quick preset's starting point for every backbone on this data: the quick FE pretrained with
# DINO on synthetic-labs (8 labs, seed 1, 4,320 images, 30 epochs; `hcibench pretrain`), as the
# paper's FEs start from ImageNet. Chosen on the source's validation plate, where it lifts every
# model (results/adaptation, section 13); --set backbone.pretrained=null starts from random weights.
PRETRAINED_QUICK = Path(__file__).parent / "data" / "synthetic-labs" / "fe-quick.pt"
COMPOUNDS_PER_CLASS = 3
WELLS_PER_COMPOUND = 2
SITES_PER_WELL = 3  # at scale 1.0
CHUNK = 64  # images rendered together; each chunk has its own generator, so memory stays flat
PLATE_ROWS, PLATE_COLUMNS = "ABCDEFGHIJKLMNOP", 24  # a 384-well plate
PERTURBATION = 0.05  # relative spread of a compound's morphology around its class's
CULTURE = 1.0  # how far each lab's culture moves morphology (0: not at all)
ARTIFACTS = 0.0  # strength of the batch artifacts (0: none, the default; 1: strong)


def generator(seed: int, *keys) -> torch.Generator:
    """A generator seeded from ``seed`` and names, so that each part of the data has its own
    stream and nothing depends on the order in which parts are generated."""
    digest = hashlib.sha256("/".join(map(str, (seed, *keys))).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _plates_per_batch(batches: int, plates: int) -> list[int]:
    return [plates // batches + (i < plates % batches) for i in range(batches)]


class SyntheticDataset(hcibench.Dataset):
    name = "synthetic"
    description = "Generated Cell-Painting-like images from six simulated microscopes (S3..S10)"

    OPTIONS = {"wells_per_compound": int, "sites_per_well": int, "compounds_per_class": int}

    @classmethod
    def default_settings(cls, preset: str) -> dict:
        # The paper preset crops 224 px inputs, so it renders larger fields.
        return {
            "seed": 0,
            "image_size": 256 if preset == "paper" else 32,
            "scale": 1.0,
            "culture": CULTURE,
            "artifacts": ARTIFACTS,
        }

    @classmethod
    def preset_settings(cls, preset: str) -> dict[str, dict]:
        if preset == "quick":
            return {"backbone": {"pretrained": str(PRETRAINED_QUICK)}}
        return {}

    def __init__(self, data=None, seed=0, image_size=32, scale=1.0, culture=None, artifacts=None, **options):
        if data:
            raise hcibench.UsageError(
                f"the synthetic dataset is generated and reads no data path (got '{data}')"
            )
        for key in options:
            if key not in self.OPTIONS:
                raise hcibench.UsageError(
                    f"unknown option '{key}' for dataset 'synthetic'. Known: seed, image_size, "
                    f"scale, culture, artifacts, {', '.join(self.OPTIONS)}."
                )
        super().__init__(data, **options)
        self.seed = _number("seed", seed, int)
        self.image_size = _number("image_size", image_size, int)
        self.scale = _number("scale", scale, float)
        self.culture = _number("culture", CULTURE if culture is None else culture, float)
        self.artifacts = _number("artifacts", ARTIFACTS if artifacts is None else artifacts, float)
        if self.image_size < 8 or self.scale <= 0:
            raise hcibench.UsageError(
                f"synthetic dataset needs image_size >= 8 and scale > 0 (got {image_size} and {scale})"
            )
        if self.artifacts < 0:
            raise hcibench.UsageError(
                f"synthetic dataset option 'artifacts' is a strength >= 0 (0: none, 1: strong), "
                f"got {artifacts}"
            )
        self.wells_per_compound = _number(
            "wells_per_compound", options.get("wells_per_compound", WELLS_PER_COMPOUND), int
        )
        self.sites_per_well = _number(
            "sites_per_well", options.get("sites_per_well", max(1, round(SITES_PER_WELL * self.scale))), int
        )
        self.compounds_per_class = _number(
            "compounds_per_class", options.get("compounds_per_class", COMPOUNDS_PER_CLASS), int
        )
        if min(self.wells_per_compound, self.sites_per_well, self.compounds_per_class) < 1:
            raise hcibench.UsageError("synthetic dataset options must be positive integers")
        self._domains: dict[str, hcibench.Domain] = {}
        self._compounds: tuple[pd.DataFrame, torch.Tensor] | None = None

    def sources(self) -> list[str]:
        return list(SOURCE_LAYOUT)

    def classes(self) -> list[str]:
        return list(render.MOA_TABLE)

    def domain(self, source: str) -> hcibench.Domain:
        if source not in self.sources():
            raise unknown_name("source", source, self.sources())
        if source not in self._domains:
            meta = self._layout(source)
            images = self._render(source, meta)
            self._domains[source] = hcibench.Domain(
                source, meta.drop(columns=["compound_index"]), hcibench.TensorImages(images), self.classes()
            )
        return self._domains[source]

    def _profile(self, source: str) -> render.SourceProfile:
        if source in render.SOURCE_PROFILES:
            return render.SOURCE_PROFILES[source]
        return render.drawn_profile(generator(self.seed, source, "lab"))

    def _artifact_kinds(self, source: str) -> tuple:
        if source in artifacts.SOURCE_ARTIFACTS:
            return artifacts.SOURCE_ARTIFACTS[source]
        kinds = sorted({kind for kinds in artifacts.SOURCE_ARTIFACTS.values() for kind in kinds})
        draw = torch.randint(len(kinds), (), generator=generator(self.seed, source, "artifact kind"))
        return (kinds[int(draw)],)

    def compounds(self) -> pd.DataFrame:
        """The compounds shared by all sources: id, label (MoA) and wells on every plate."""
        return self._compound_table()[0]

    def _compound_table(self) -> tuple[pd.DataFrame, torch.Tensor]:
        """The compound table and each compound's morphology (rows in MORPHOLOGY order)."""
        if self._compounds is None:
            gen = generator(self.seed, "compounds")
            classes = self.classes()
            count = len(classes) * self.compounds_per_class
            # Shuffled so that compound numbers say nothing about the class.
            label = (torch.randperm(count, generator=gen) % len(classes)).tolist()
            base = torch.tensor([render.MOA_TABLE[classes[i]] for i in label])
            morph = base * (1 + PERTURBATION * torch.randn(base.shape, generator=gen))
            # One plate map (TARGET2-like) for all plates of all sources.
            wells = [f"{r}{c:02d}" for r in PLATE_ROWS for c in range(1, PLATE_COLUMNS + 1)]
            slots = torch.randperm(len(wells), generator=gen)[: count * self.wells_per_compound]
            table = pd.DataFrame(
                {
                    "compound": [f"cmpd-{i + 1:03d}" for i in range(count)],
                    "label": [classes[i] for i in label],
                    "wells": [[wells[s] for s in slots[i::count].tolist()] for i in range(count)],
                }
            )
            self._compounds = table, morph
        return self._compounds

    def _layout(self, source: str) -> pd.DataFrame:
        batches, plates = SOURCE_LAYOUT.get(source, LAB_LAYOUT)
        compounds = self.compounds()
        rows = []
        plate = 0
        for batch, size in enumerate(_plates_per_batch(batches, plates)):
            for _ in range(size):
                plate += 1
                for index, compound in compounds.iterrows():
                    for well in compound["wells"]:
                        for site in range(1, self.sites_per_well + 1):
                            rows.append(
                                (
                                    source,
                                    f"{source}-B{batch + 1:02d}",
                                    f"{source}-P{plate:02d}",
                                    well,
                                    compound["compound"],
                                    compound["label"],
                                    site,
                                    index,
                                )
                            )
        meta = pd.DataFrame(rows, columns=[*hcibench.META_COLUMNS, "site", "compound_index"])
        return meta.sort_values(["plate", "well", "site"], kind="stable").reset_index(drop=True)

    def _render(self, source: str, meta: pd.DataFrame) -> torch.Tensor:
        profile = self._profile(source)
        settings = render.imaging_settings(
            profile, _codes(meta["batch"]), _codes(meta["plate"]), generator(self.seed, source, "imaging")
        )
        morph = self._compound_table()[1][torch.tensor(meta["compound_index"].to_numpy())]
        batch = _codes(meta["batch"])
        looks = artifacts.batch_artifacts(
            self._artifact_kinds(source),
            int(batch.max()) + 1,
            generator(self.seed, source, "artifacts"),
        )
        out = torch.empty(len(meta), 3, self.image_size, self.image_size)
        for chunk, start in enumerate(range(0, len(meta), CHUNK)):
            part = slice(start, start + CHUNK)
            gen = generator(self.seed, source, "chunk", chunk)
            specimen = render.render_specimen(morph[part], profile, self.image_size, gen, self.culture)
            # Their own stream, so that the strength changes nothing else in the images.
            extra = (
                artifacts.render_artifacts(
                    looks,
                    batch[part],
                    self.image_size,
                    self.artifacts,
                    generator(self.seed, source, "artifacts", chunk),
                )
                if self.artifacts
                else None
            )
            recorded = render.image_specimen(specimen, _rows(settings, part), gen, extra)
            out[part] = render.quantise(recorded)
        return out


def _number(name: str, value, kind: type):
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise hcibench.UsageError(
            f"synthetic dataset option '{name}' must be a number, got '{value}'"
        ) from None


def _codes(column: pd.Series) -> torch.Tensor:
    return torch.as_tensor(pd.factorize(column, sort=True)[0], dtype=torch.long)


def _rows(settings: dict, part: slice) -> dict:
    """The per-image settings of some images (source-wide matrices stay whole)."""
    return {key: value if key == "crosstalk" else value[part] for key, value in settings.items()}


@click.command("synth")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="New (or empty) folder to write index.csv and images/ into.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--image-size", default=32, show_default=True, type=int)
@click.option("--scale", default=1.0, show_default=True, type=float, help="Multiplies the images per plate.")
@click.option(
    "--culture",
    default=CULTURE,
    show_default=True,
    type=float,
    help="Scale of each lab's morphology shift (0: none).",
)
@click.option(
    "--artifacts",
    default=ARTIFACTS,
    show_default=True,
    type=float,
    help="Strength of the batch artifacts (0: none).",
)
@click.option("--sources", default=None, help="Comma-separated subset, e.g. S3,S5 (default: all).")
def synth_command(out, seed, image_size, scale, culture, artifacts, sources):
    """Write the synthetic dataset to a folder in the generic index format."""
    from hcibench_plugins.datasets.files.folder_format import write_folder

    dataset = SyntheticDataset(
        seed=seed, image_size=image_size, scale=scale, culture=culture, artifacts=artifacts
    )
    names = [s.strip() for s in sources.split(",") if s.strip()] if sources else None
    index = write_folder(dataset, out, names)
    click.echo(
        f"wrote {len(index)} images from {index['source'].nunique()} source(s) "
        f"({', '.join(pd.unique(index['source']))}) to {out}"
    )


class SyntheticLabs(SyntheticDataset):
    """Sources L1..LN whose labs and microscopes are drawn from the seed (each setting between
    the lowest and highest of S3..S10's, :func:`synthetic_render.drawn_profile`), and, with the
    default seed 1, other compounds than ``synthetic``'s (seed 0) of the same mechanisms. An
    unlabelled corpus disjoint from every source of ``synthetic``: what ``hcibench pretrain``
    learns a starting point on, as the CODA paper's FE started from ImageNet."""

    name = "synthetic-labs"
    description = "Generated images from N labs and microscopes drawn at random (L1..LN), for pretraining"

    @classmethod
    def default_settings(cls, preset: str) -> dict:
        return {**super().default_settings(preset), "seed": 1, "labs": 8}

    @classmethod
    def preset_settings(cls, preset: str) -> dict[str, dict]:
        return {}  # the corpus a starting point is learned on starts from random weights

    def __init__(self, data=None, seed=1, labs=8, **options):
        super().__init__(data, seed=seed, **options)
        self.labs = _number("labs", labs, int)
        if self.labs < 1:
            raise hcibench.UsageError(f"synthetic-labs option 'labs' is a count >= 1, got {labs}")

    def sources(self) -> list[str]:
        return [f"L{i}" for i in range(1, self.labs + 1)]


@hcibench.hookimpl
def register_datasets(register):
    register(SyntheticDataset)
    register(SyntheticLabs)


@hcibench.hookimpl
def register_commands(cli):
    cli.commands["data"].add_command(synth_command)


__all__ = ["SyntheticDataset", "SyntheticLabs", "generator"]
