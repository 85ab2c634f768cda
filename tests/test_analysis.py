"""Linear CKA's defining properties, and the analyze commands on a tiny run folder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import hcibench
from hcibench import plugins
from hcibench.analysis import (
    block_features,
    cka_command,
    cka_matrix,
    embed_2d,
    embedding_command,
    linear_cka,
)
from hcibench.errors import UsageError
from hcibench.train.backbones import create_vit

BACKBONE = {
    "model": "vit_tiny_patch16_224",
    "img_size": 16,
    "patch_size": 4,
    "embed_dim": 32,
    "depth": 3,
    "num_heads": 2,
}


def test_cka_of_a_matrix_with_itself_is_one():
    x = np.random.default_rng(0).normal(size=(50, 20))
    assert linear_cka(x, x) == pytest.approx(1.0)


def test_cka_is_invariant_to_orthogonal_maps_and_isotropic_scaling():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 12))
    y = x @ rng.normal(size=(12, 8)) + 0.5 * rng.normal(size=(60, 8))
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    reference = linear_cka(x, y)
    assert 0.0 < reference < 1.0
    assert linear_cka(x @ q, y) == pytest.approx(reference)
    assert linear_cka(3.7 * x, 0.2 * y) == pytest.approx(reference)
    assert linear_cka(y, x) == pytest.approx(reference)  # symmetric
    assert linear_cka(x + 5.0, y) == pytest.approx(reference)  # centred


def test_gram_and_feature_forms_agree():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(10, 30)), rng.normal(size=(10, 4))  # wider than n: Gram form
    xc, yc = x - x.mean(0), y - y.mean(0)
    direct = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert linear_cka(x, y) == pytest.approx(direct)
    assert np.isnan(linear_cka(np.ones((5, 3)), y[:5]))


def test_layer_matrix_of_a_network_with_itself_has_a_unit_diagonal():
    torch.manual_seed(0)
    vit = create_vit(BACKBONE, in_chans=3)
    images = torch.randn(24, 3, 16, 16)
    for tokens in ("cls", "all"):
        features = block_features(vit, images, tokens, batch_size=10)
        assert len(features) == 3 and features[0].shape[0] == 24
        matrix = cka_matrix(features, features)
        np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-6)
        np.testing.assert_allclose(matrix, matrix.T, atol=1e-6)
    assert not vit.blocks[0]._forward_hooks  # hooks removed


def test_embedding_falls_back_to_a_stated_method():
    features = np.random.default_rng(3).normal(size=(40, 6))
    coords, method = embed_2d(features)
    assert coords.shape == (40, 2) and method in {"UMAP", "PCA"}


# --------------------------------------------------------------------------- commands


class TinyDataset(hcibench.Dataset):
    name = "tiny-analysis"
    description = "two sources of random 3x16x16 images"

    def sources(self):
        return ["S3", "S5"]

    def classes(self):
        return ["a", "b", "c"]

    def domain(self, source):
        n = 18
        generator = torch.Generator().manual_seed(7 if source == "S3" else 8)
        meta = pd.DataFrame(
            {
                "source": source,
                "batch": [f"B{i % 2}" for i in range(n)],
                "plate": [f"P{i % 3}" for i in range(n)],
                "well": [f"A{i:02d}" for i in range(n)],
                "compound": [f"c{i % 6}" for i in range(n)],
                "label": [["a", "b", "c"][i % 3] for i in range(n)],
            }
        )
        images = torch.rand(n, 3, 20, 20, generator=generator)
        return hcibench.Domain(source, meta, hcibench.TensorImages(images), self.classes())


class TinyPlugin:
    @hcibench.hookimpl
    def register_datasets(self, register):
        register(TinyDataset)


@pytest.fixture
def run(tmp_path):
    plugins.manager().register(TinyPlugin(), name="tiny-analysis")
    run = tmp_path / "run"
    (run / "stages").mkdir(parents=True)
    manifest = {
        "dataset": {"name": "tiny-analysis", "data": None, "options": {}},
        "config": {"backbone": BACKBONE, "input_size": 16, "dataset": {}},
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    torch.manual_seed(0)
    first, second = create_vit(BACKBONE, in_chans=3), create_vit(BACKBONE, in_chans=3)
    torch.save(
        {"student": first.state_dict(), "teacher": first.state_dict(), "stats": {}},
        run / "stages" / "fe-dino-aaa.pt",
    )
    torch.save(
        {"encoder": second.state_dict(), "predictor": "encoder", "stats": {}},
        run / "stages" / "fe-mae-bbb.pt",
    )
    torch.save({"state": {"head.weight": torch.zeros(2)}}, run / "stages" / "task-ccc.pt")
    (run / "stages.json").write_text(
        json.dumps({"fe-dino-aaa": {"name": "fe-dino", "key": {"source": "S3", "seed": 0}}})
    )
    return run


def test_cka_command_writes_a_heatmap(run, tmp_path):
    out = tmp_path / "figs" / "cka.png"
    same = cka_command(run, "fe-dino-aaa", "fe-dino-aaa", "S5", out)
    np.testing.assert_allclose(np.diag(same), 1.0, atol=1e-6)
    assert out.read_bytes()[:4] == b"\x89PNG"
    other = cka_command(
        run, "fe-dino-aaa", "fe-mae-bbb.pt", "S3", tmp_path / "b.svg", tokens="all", max_images=10
    )
    assert other.shape == (3, 3) and not np.allclose(np.diag(other), 1.0)


def test_embedding_command_writes_a_figure(run, tmp_path):
    out = tmp_path / "embedding.png"
    method = embedding_command(run, "fe-mae-bbb", ["S3", "S5"], out)
    assert method in {"UMAP", "PCA"} and out.stat().st_size > 1000


def test_unknown_or_missing_stage_lists_the_stages(run, tmp_path):
    with pytest.raises(
        UsageError, match="unknown stage 'fe-x'.*fe-dino-aaa \\(source S3, seed 0\\).*fe-mae-bbb"
    ):
        cka_command(run, "fe-x", "fe-mae-bbb", "S5", tmp_path / "x.png")
    with pytest.raises(UsageError, match="no stage given"):
        embedding_command(run, None, ["S3"], tmp_path / "x.png")
    with pytest.raises(UsageError, match="task-ccc holds no feature extractor"):
        embedding_command(run, "task-ccc", ["S3"], tmp_path / "x.png")
    with pytest.raises(UsageError, match="unknown source 'S9'"):
        embedding_command(run, "fe-mae-bbb", ["S9"], tmp_path / "x.png")
    with pytest.raises(UsageError, match="no manifest.json"):
        cka_command(tmp_path, "a", "b", "S3", tmp_path / "x.png")


def test_analyze_cli_exits_2_with_one_line(run, tmp_path, capsys):
    from hcibench.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "analyze",
                "cka",
                str(run),
                "--stage-a",
                "nope",
                "--stage-b",
                "fe-mae-bbb",
                "--source",
                "S3",
                "--out",
                str(tmp_path / "c.png"),
            ]
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown stage 'nope'") and len(err.strip().splitlines()) == 1
    main(
        [
            "analyze",
            "cka",
            str(run),
            "--stage-a",
            "fe-dino-aaa",
            "--stage-b",
            "fe-dino-aaa",
            "--source",
            "S3",
            "--out",
            str(tmp_path / "c.png"),
        ]
    )
    assert "CKA of block i of A with block i of B: 1.000 1.000 1.000" in capsys.readouterr().out


class TinyProfiles(hcibench.Dataset):
    name = "tiny-analysis-profiles"
    description = "one source of random 12-feature profiles"
    modality = "profile"

    def sources(self):
        return ["S1"]

    def classes(self):
        return ["a", "b"]

    def domain(self, source):
        n = 16
        meta = pd.DataFrame(
            {
                "source": source,
                "batch": "B0",
                "plate": "P0",
                "well": [f"A{i:02d}" for i in range(n)],
                "compound": [f"c{i % 4}" for i in range(n)],
                "label": [["a", "b"][i % 2] for i in range(n)],
            }
        )
        profiles = torch.randn(n, 12, generator=torch.Generator().manual_seed(1))
        return hcibench.Domain(source, meta, hcibench.TensorImages(profiles), self.classes())


def test_analyze_works_on_a_run_on_profiles(tmp_path):
    from hcibench.run import presets
    from hcibench.train.modality import create_backbone

    class Plugin:
        @hcibench.hookimpl
        def register_datasets(self, register):
            register(TinyProfiles)

    plugins.manager().register(Plugin(), name="tiny-analysis-profiles")
    run = tmp_path / "run"
    (run / "stages").mkdir(parents=True)
    config = {"modality": "profile", "profile": presets.profile_settings("quick"), "dataset": {}}
    (run / "manifest.json").write_text(
        json.dumps(
            {"dataset": {"name": "tiny-analysis-profiles", "data": None, "options": {}}, "config": config}
        )
    )
    torch.manual_seed(0)
    mlp = create_backbone(config, 12)
    torch.save({"teacher": mlp.state_dict(), "stats": {}}, run / "stages" / "fe-dino-ppp.pt")
    depth = config["profile"]["fe"]["depth"]

    matrix = cka_command(run, "fe-dino-ppp", "fe-dino-ppp", "S1", tmp_path / "cka.png")
    assert matrix.shape == (depth + 1, depth + 1)  # each block's layer norm, then the output's
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-6)
    method = embedding_command(run, "fe-dino-ppp", ["S1"], tmp_path / "embedding.png")
    assert method in {"UMAP", "PCA"} and (tmp_path / "embedding.png").stat().st_size > 1000
