"""MAE loss on masked patches only; batched TTT equals the one-image-at-a-time reference."""

import torch

from hcibench.train.backbones import create_vit
from hcibench.train.classifier import prepare_images
from hcibench.train.mae import (
    MaeSettings,
    MaskedAutoencoder,
    build_decoder,
    mae_loss,
    masking_order,
    patchify,
)
from hcibench_plugins.methods.dual.steps import TaskModel
from hcibench_plugins.methods.dual.ttt import TTTSettings, ttt_batched, ttt_sequential

VIT = {
    "model": "vit_tiny_patch16_224",
    "img_size": 16,
    "patch_size": 4,
    "embed_dim": 32,
    "depth": 1,
    "num_heads": 2,
}


def test_mae_loss_counts_masked_patches_only():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 8, 8)
    target = patchify(images, 4)  # 2×4×48
    _, _, mask = masking_order(torch.rand(2, 4), mask_ratio=0.5)
    assert mask.sum().item() == 4
    prediction = torch.randn_like(target)
    loss = mae_loss(prediction, images, mask, 4)
    changed_visible = prediction.clone()
    changed_visible[mask == 0] += 10.0
    assert torch.equal(mae_loss(changed_visible, images, mask, 4), loss)
    changed_masked = prediction.clone()
    changed_masked[mask == 1] += 10.0
    assert mae_loss(changed_masked, images, mask, 4) > loss
    # the formula: mean over masked patches of the per-patch MSE against normalised pixels
    normalised = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    expected = ((prediction - normalised) ** 2).mean(-1)[mask == 1].mean()
    assert torch.allclose(loss, expected)


def _models():
    torch.manual_seed(0)
    encoder = create_vit(VIT)
    settings = MaeSettings(decoder_dim=16, decoder_depth=1, decoder_heads=2)
    mae = MaskedAutoencoder(encoder, build_decoder(encoder, settings, 3), settings)
    mae.decoder.requires_grad_(False)
    task = TaskModel(32, {**VIT, "embed_dim": 16}, 5).eval().requires_grad_(False)
    return mae, task


def test_batched_ttt_matches_the_reference_and_never_leaks_between_images():
    mae, task = _models()
    trained = {k: v.clone() for k, v in mae.encoder.state_dict().items()}
    images = torch.rand(3, 3, 16, 16)
    settings = TTTSettings(steps=2, copies=4, lr=0.05)
    reference = ttt_sequential(mae, task, images, settings, 16, seed=3)
    assert all(torch.equal(trained[k], v) for k, v in mae.encoder.state_dict().items())
    batched = ttt_batched(mae, task, images, settings, 16, seed=3)
    assert len(batched.logits) == settings.steps + 1
    for ref, fast in zip(reference.logits, batched.logits):
        assert torch.allclose(ref, fast, atol=1e-5)
    assert not torch.allclose(reference.logits[0], reference.logits[-1])  # the FE did change
    # Embeddings: the adapted FE's class token of each image, the same on both paths.
    assert reference.embeddings.shape == (3, 32)
    assert torch.allclose(reference.embeddings, batched.embeddings, atol=1e-5)
    with torch.no_grad():
        untouched = mae.encoder.forward_features(prepare_images(images, 16, training=False))[:, 0]
    assert not torch.allclose(reference.embeddings, untouched, atol=1e-4)
    # An image adapted alone predicts exactly as when adapted beside others.
    alone = ttt_batched(mae, task, images[2:], settings, 16, seed=3, first_index=2)
    assert torch.allclose(alone.logits[-1], reference.logits[-1][2:], atol=1e-6)
    assert torch.allclose(alone.embeddings, reference.embeddings[2:], atol=1e-6)
    assert all(torch.equal(trained[k], v) for k, v in mae.encoder.state_dict().items())


def test_an_mae_stage_killed_mid_training_goes_on_from_its_saved_progress(tmp_path, monkeypatch):
    import pytest
    from test_dino import domain

    from hcibench.run.stages import StageCache
    from hcibench.train.mae import train_mae

    monkeypatch.setenv("HCIBENCH_CHECKPOINT_SECONDS", "0")
    settings = MaeSettings(
        epochs=4, batch_size=8, warmup_epochs=1, decoder_dim=16, decoder_depth=1, decoder_heads=2
    )

    def compute(kill_after=None):
        torch.manual_seed(0)
        encoder = create_vit(VIT, drop_path=0.1)  # drop-path draws from the global RNG
        mae = MaskedAutoencoder(encoder, build_decoder(encoder, settings, 3), settings)

        def on_epoch(epoch):
            if epoch == kill_after:
                raise KeyboardInterrupt

        stats = train_mae(
            mae, domain(), settings, 16, generator=torch.Generator().manual_seed(1), on_epoch=on_epoch
        )
        return {"encoder": mae.encoder.state_dict(), "losses": stats["epoch_losses"]}

    reference = StageCache(tmp_path / "whole").get("fe-mae", {"k": 1}, compute)
    with pytest.raises(KeyboardInterrupt):
        StageCache(tmp_path / "killed").get("fe-mae", {"k": 1}, lambda: compute(kill_after=2))
    resumed = StageCache(tmp_path / "killed").get("fe-mae", {"k": 1}, compute)
    assert resumed["losses"] == reference["losses"]
    assert all(torch.equal(resumed["encoder"][k], v) for k, v in reference["encoder"].items())
