"""``hcibench analyze``: how adaptation changes a feature extractor (the paper's Figures 5 and 6).

* ``cka``: linear CKA (Kornblith et al., 2019) between the blocks of two feature extractors
  saved as stages of a run, on the images of one source, as a heatmap;
* ``embedding``: a 2-D embedding (UMAP when installed, else PCA) of one feature extractor's
  class-token features on some sources, coloured by mechanism of action and by source.

A stage file (``RUN/stages/<ID>.pt``) holds state dicts under keys like ``teacher``/``student``
(DINO) or ``encoder`` (MAE), and ``predictor`` names the one that predicts. The extractor is
rebuilt from the run's ``manifest.json`` (``config.backbone``, or ``config.profile`` in a run on
profiles, whose blocks are the MLP's) and the dataset from its ``dataset`` entry. The dataset
plugins are loaded only when a command runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from hcibench.errors import UsageError
from hcibench.train.modality import modality_of

# --------------------------------------------------------------------------- CKA


def _centred(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        x = x.reshape(len(x), -1)
    return x - x.mean(axis=0, keepdims=True)


def linear_cka(x, y) -> float:
    """Linear CKA of two feature matrices on the same n examples (n×d1 and n×d2).

    CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with linear kernels on column-centred
    features, i.e. ||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F); computed on n×n Gram matrices when the
    features are wider than n. In [0, 1]; invariant to orthogonal maps and isotropic scaling.
    More than two dimensions (n×tokens×d) are flattened per example. A constant feature matrix
    has no variance to compare: NaN.
    """
    x, y = _centred(x), _centred(y)
    if len(x) != len(y):
        raise ValueError(f"CKA needs the same examples: {len(x)} vs {len(y)} rows")
    if max(x.shape[1], y.shape[1]) > len(x):
        k, l_ = x @ x.T, y @ y.T
        cross, norm_x, norm_y = np.sum(k * l_), np.linalg.norm(k), np.linalg.norm(l_)
    else:
        cross = np.linalg.norm(y.T @ x) ** 2
        norm_x, norm_y = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    if norm_x == 0 or norm_y == 0:
        return float("nan")
    return float(cross / (norm_x * norm_y))


def cka_matrix(features_a: list, features_b: list) -> np.ndarray:
    """``M[i, j]`` = linear CKA of layer i of A and layer j of B."""
    return np.array([[linear_cka(a, b) for b in features_b] for a in features_a])


def fe_blocks(fe) -> list:
    """The layers whose outputs are compared: a ViT's blocks, or for a profile MLP the layer
    norm that ends each of its blocks and its output."""
    from torch import nn

    if hasattr(fe, "blocks"):
        return list(fe.blocks)
    return [m for m in fe.body if isinstance(m, nn.LayerNorm)]


def block_features(fe, images, tokens: str = "cls", batch_size: int = 64) -> list[np.ndarray]:
    """Per block of ``fe`` (:func:`fe_blocks`), its output on ``images`` (already prepared): for
    a ViT the class token (``tokens="cls"``, n×d) or every token (``"all"``, n×T×d); for a
    profile MLP the n×d output either way. Collected with forward hooks."""
    import torch

    blocks = fe_blocks(fe)
    outputs: list[list] = [[] for _ in blocks]
    handles = []
    for i, block in enumerate(blocks):

        def hook(_module, _inputs, output, i=i):
            token = tokens == "cls" and output.dim() == 3
            outputs[i].append((output[:, 0] if token else output).detach().cpu())

        handles.append(block.register_forward_hook(hook))
    try:
        fe.eval()
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                fe.forward_features(images[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(chunks).numpy() for chunks in outputs]


# --------------------------------------------------------------------------- embedding


def embed_2d(features) -> tuple[np.ndarray, str]:
    """2-D coordinates of n×d features and the name of the method used: UMAP when the
    ``umap`` package is importable, else PCA (scikit-learn if installed, else numpy's SVD)."""
    x = np.asarray(features, dtype=np.float64)
    try:
        import umap  # optional: umap-learn
    except ImportError:
        umap = None
    if umap is not None:
        return umap.UMAP(n_components=2, random_state=0).fit_transform(x), "UMAP"
    try:
        from sklearn.decomposition import PCA
    except ImportError:
        centred = x - x.mean(axis=0, keepdims=True)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        coords = centred @ vt[:2].T
        if coords.shape[1] < 2:
            coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
        return coords, "PCA"
    return PCA(n_components=2, random_state=0).fit_transform(x), "PCA"


# --------------------------------------------------------------------------- run folder


def _manifest(run: Path) -> dict:
    path = run / "manifest.json"
    if not path.is_file():
        raise UsageError(f"{run} has no manifest.json: give the folder of a `hcibench run`")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read {path}: {error}") from None


def stage_listing(run: Path) -> list[str]:
    """Stage file stems of a run with what stages.json says about them."""
    described = {}
    path = run / "stages.json"
    if path.is_file():
        try:
            described = json.loads(path.read_text())
        except (OSError, ValueError):
            described = {}
    lines = []
    for file in sorted((run / "stages").glob("[!.]*.pt")):  # not the progress of one underway
        entry = described.get(file.stem, {})
        key = entry.get("key", {}) if isinstance(entry, dict) else {}
        extra = ", ".join(f"{k} {key[k]}" for k in ("source", "seed") if k in key)
        target = (key.get("settings") or {}).get("target") if isinstance(key, dict) else None
        if target:
            extra += f", adapted to {target}"
        lines.append(f"{file.stem}{f' ({extra})' if extra else ''}")
    return lines


def _no_stage(run: Path, what: str) -> UsageError:
    listing = stage_listing(run)
    known = "; ".join(listing) if listing else "none (run a dual-model or MAE method first)"
    return UsageError(f"{what}. Stages of {run}: {known}")


def load_stage_fe(run: Path, stage: str | None, config: dict):
    """The feature extractor saved in stage ``stage`` of ``run``, in eval mode: a ViT, or the
    profile MLP in a run on profiles."""
    from hcibench.run.storage import load_torch
    from hcibench.train.modality import create_backbone

    if not stage:
        raise _no_stage(run, "no stage given")
    path = run / "stages" / f"{Path(stage).stem}.pt"
    if not path.is_file():
        raise _no_stage(run, f"unknown stage '{stage}'")
    try:
        result = load_torch(path)
    except Exception as error:  # noqa: BLE001 - a damaged or foreign file
        raise UsageError(f"cannot read stage {path}: {error}") from None
    if not isinstance(result, dict):
        raise UsageError(f"stage {path.stem} is not a stage result")
    key = result.get("predictor", "teacher" if "teacher" in result else "encoder")
    state = result.get(key)
    # The first weight tells the input width: image channels, or profile features.
    first = modality_of(config).first_weight
    if not isinstance(state, dict) or first not in state:
        keys = ", ".join(k for k, v in result.items() if isinstance(v, dict)) or "none"
        raise UsageError(
            f"stage {path.stem} holds no feature extractor (its state dicts: "
            f"{keys}); choose a fe-* or adapt* stage"
        )
    fe = create_backbone(config, int(state[first].shape[1]))
    try:
        fe.load_state_dict(state)
    except RuntimeError as error:
        raise UsageError(
            f"stage {path.stem} does not fit the run's feature extractor: {str(error).splitlines()[0]}"
        ) from None
    return fe.eval().requires_grad_(False)


def load_images(manifest: dict, source: str, max_images: int, seed: int = 0):
    """(prepared images, metadata) of up to ``max_images`` samples of ``source`` (a fixed random
    subset when the source is larger), read with the run's dataset settings."""
    import torch

    from hcibench import plugins
    from hcibench.data import take
    from hcibench.train.classifier import prepare_images

    config = manifest.get("config") or {}
    dataset_entry = manifest.get("dataset") or {}
    name = dataset_entry.get("name") if isinstance(dataset_entry, dict) else dataset_entry
    if not name:
        raise UsageError("the run's manifest names no dataset")
    options = config.get("dataset", dataset_entry.get("options") or {})
    dataset = plugins.datasets().get(name)(data=dataset_entry.get("data"), **options)
    known = dataset.sources()
    if source not in known:
        from hcibench.errors import unknown_name

        raise unknown_name("source", source, known)
    domain = dataset.domain(source)
    positions = np.arange(len(domain))
    if len(positions) > max_images:
        generator = np.random.default_rng(seed)
        positions = np.sort(generator.choice(positions, max_images, replace=False))
    images = take(domain.images, positions)
    images = prepare_images(images, config.get("input_size", images.shape[-1]), training=False)
    return torch.as_tensor(images), domain.meta.iloc[positions].reset_index(drop=True)


# --------------------------------------------------------------------------- figures


def _save(figure, out: Path) -> None:
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out, dpi=120, bbox_inches="tight")
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot write {out}: {getattr(error, 'strerror', None) or error}") from None


def cka_figure(matrix: np.ndarray, label_a: str, label_b: str, title: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, cols = matrix.shape
    figure = Figure(figsize=(0.55 * cols + 2.6, 0.5 * rows + 1.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="magma", vmin=0, vmax=1, origin="lower")
    if rows * cols <= 400:
        for i in range(rows):
            for j in range(cols):
                value = matrix[i, j]
                axes.text(
                    j,
                    i,
                    "–" if np.isnan(value) else f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value < 0.6 else "black",
                )
    axes.set_xticks(range(cols), [str(j + 1) for j in range(cols)])
    axes.set_yticks(range(rows), [str(i + 1) for i in range(rows)])
    axes.set_xlabel(f"block of {label_b}")
    axes.set_ylabel(f"block of {label_a}")
    axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, label="linear CKA")
    return figure


def embedding_figure(coords: np.ndarray, meta, method: str, title: str):
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, 2)
    for axes, column, name in zip(panels, ("label", "source"), ("mechanism of action", "source")):
        values = meta[column].fillna("unlabelled").astype(str).to_numpy()
        groups = list(dict.fromkeys(sorted(values)))
        palette = colormaps["tab20" if len(groups) > 10 else "tab10"].colors
        for k, group in enumerate(groups):
            mask = values == group
            axes.scatter(
                coords[mask, 0],
                coords[mask, 1],
                s=9,
                alpha=0.75,
                label=group,
                color=palette[k % len(palette)],
                linewidths=0,
            )
        axes.set_title(f"coloured by {name}", fontsize=10)
        axes.set_xlabel(f"{method} 1")
        axes.set_ylabel(f"{method} 2")
        axes.legend(fontsize=7, markerscale=1.5, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.suptitle(title, fontsize=10)
    return figure


# --------------------------------------------------------------------------- commands


def cka_command(run, stage_a, stage_b, source, out, tokens="cls", max_images=512) -> np.ndarray:
    """The work of ``hcibench analyze cka``; returns the CKA matrix and writes the heatmap."""
    run = Path(run)
    manifest = _manifest(run)
    config = manifest.get("config") or {}
    fe_a = load_stage_fe(run, stage_a, config)
    fe_b = load_stage_fe(run, stage_b, config)
    if not source:
        raise UsageError("no --source given: the images the two extractors are compared on")
    images, _ = load_images(manifest, source, max_images)
    matrix = cka_matrix(block_features(fe_a, images, tokens), block_features(fe_b, images, tokens))
    samples = modality_of(config).nouns[0]
    if modality_of(config).name == "profile":
        what = "block outputs"
    else:
        what = "class token" if tokens == "cls" else "all tokens"
    title = (
        f"Linear CKA ({what}) on {len(images)} {samples} of {source}\n"
        f"A = {Path(stage_a).stem}, B = {Path(stage_b).stem}"
    )
    _save(cka_figure(matrix, "A", "B", title), out)
    return matrix


def embedding_command(run, stage, sources: list[str], out, max_images=512) -> str:
    """The work of ``hcibench analyze embedding``; returns the embedding method's name."""
    import pandas as pd

    run = Path(run)
    manifest = _manifest(run)
    config = manifest.get("config") or {}
    fe = load_stage_fe(run, stage, config)
    if not sources:
        raise UsageError("no --sources given, e.g. --sources S3,S5")
    features, metas = [], []
    for source in sources:
        images, meta = load_images(manifest, source, max_images)
        features.append(block_features(fe, images, "cls")[-1])
        metas.append(meta)
    coords, method = embed_2d(np.concatenate(features))
    meta = pd.concat(metas, ignore_index=True)
    how = method if method == "UMAP" else f"{method} (umap-learn is not installed)"
    features_of, samples = (
        ("FE outputs", "profiles")
        if modality_of(config).name == "profile"
        else ("class-token features (last block)", "images")
    )
    title = f"{how} of {features_of} of {Path(stage).stem} on {', '.join(sources)} ({len(meta)} {samples})"
    _save(embedding_figure(coords, meta, method, title), out)
    return method


@click.group()
def analyze():
    """Compare feature extractors saved in a run: CKA between layers, feature embeddings."""


@analyze.command()
@click.argument("run", type=click.Path())
@click.option("--stage-a", help="Stage file stem of the first extractor (RUN/stages/ID.pt).")
@click.option("--stage-b", help="Stage file stem of the second extractor.")
@click.option("--source", help="Source whose images both are run on, e.g. S5.")
@click.option(
    "--out",
    default="cka.png",
    show_default=True,
    type=click.Path(),
    help="Heatmap file (.png, .svg or .pdf).",
)
@click.option(
    "--tokens",
    type=click.Choice(["cls", "all"]),
    default="cls",
    show_default=True,
    help="Compare class tokens or every token of each block.",
)
@click.option(
    "--max-images",
    default=512,
    show_default=True,
    type=click.IntRange(2),
    help="A fixed random subset of at most this many images.",
)
def cka(run, stage_a, stage_b, source, out, tokens, max_images):
    """Linear CKA between every block of two feature extractors of RUN."""
    matrix = cka_command(run, stage_a, stage_b, source, out, tokens, max_images)
    diagonal = np.diag(matrix) if matrix.shape[0] == matrix.shape[1] else []
    if len(diagonal):
        click.echo("CKA of block i of A with block i of B: " + " ".join(f"{value:.3f}" for value in diagonal))
    click.echo(f"wrote {out}", err=True)


@analyze.command()
@click.argument("run", type=click.Path())
@click.option("--stage", help="Stage file stem of the extractor (RUN/stages/ID.pt).")
@click.option("--sources", help="Comma-separated sources, e.g. S3,S5.")
@click.option(
    "--out",
    default="embedding.png",
    show_default=True,
    type=click.Path(),
    help="Figure file (.png, .svg or .pdf).",
)
@click.option(
    "--max-images",
    default=512,
    show_default=True,
    type=click.IntRange(2),
    help="At most this many images per source (a fixed random subset).",
)
def embedding(run, stage, sources, out, max_images):
    """2-D embedding of class-token features, coloured by MoA and by source (Figure 5)."""
    names = [s.strip() for s in (sources or "").split(",") if s.strip()]
    method = embedding_command(run, stage, names, out, max_images)
    click.echo(f"wrote {out} ({method})", err=True)
