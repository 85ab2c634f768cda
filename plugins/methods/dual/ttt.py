"""Test-time training with masked autoencoders (Gandelsman et al. 2022).

For each test image alone: start from the trained feature extractor, take K optimisation steps of
the MAE loss on a batch of augmented copies of that image, predict with the frozen classifier,
then reset. ``ttt_sequential`` does exactly that, one image at a time; ``ttt_batched`` adapts many
images at once, each with its own copy of the weights, through ``torch.func`` (``vmap`` over
per-image parameters). Both draw the same augmentations and masks for an image (from a generator
seeded by the image's position), so they give the same predictions up to floating-point error.
Predictions after 0, 1, ..., K steps are returned, since TTT is reported that way, with each
image's FE embedding (class token) after the last step.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from hcibench.run.accelerator import device_of, to_device
from hcibench.run.progress import Progress
from hcibench.train.classifier import prepare_images
from hcibench.train.mae import MaskedAutoencoder

from .steps import embedding


@dataclass
class TTTSettings:
    steps: int = 5  # K: MAE steps per test image
    copies: int = 16  # augmented copies of the image per step
    lr: float = 5e-3  # SGD, as in the TTT-MAE paper
    momentum: float = 0.9
    chunk: int = 32  # test images adapted in parallel by the batched path
    batched: bool = True


@dataclass
class TTTOutput:
    """Logits after 0, 1, ..., K steps (K+1 tensors, each B×classes) and the FE embeddings
    after the last step (B×D)."""

    logits: list[torch.Tensor]
    embeddings: torch.Tensor


class FeClassifier(nn.Module):
    """Image -> FE tokens -> (task model logits, FE embedding), as one module for functional
    calls."""

    def __init__(self, encoder: nn.Module, task: nn.Module):
        super().__init__()
        self.encoder, self.task = encoder, task

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder.forward_features(x)
        return self.task(features), embedding(features)


def image_views(
    image: torch.Tensor, index: int, seed: int, settings: TTTSettings, input_size: int, n_patches: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented copies (K×copies×C×H×W) and masking noise (K×copies×N) for one test image."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    copies = image.unsqueeze(0).expand(settings.steps * settings.copies, *image.shape)
    views = prepare_images(copies.contiguous(), input_size, True, generator)
    noise = torch.rand(settings.steps * settings.copies, n_patches, generator=generator)
    noise = noise.to(image.device)
    return (
        views.reshape(settings.steps, settings.copies, *views.shape[1:]),
        noise.reshape(settings.steps, settings.copies, n_patches),
    )


def _eval_input(images: torch.Tensor, input_size: int) -> torch.Tensor:
    return prepare_images(images, input_size, training=False)


def ttt_sequential(
    mae: MaskedAutoencoder,
    task: nn.Module,
    images: torch.Tensor,
    settings: TTTSettings,
    input_size: int,
    seed: int = 0,
    first_index: int = 0,
) -> TTTOutput:
    """The reference loop, one image at a time."""
    trained = {k: v.clone() for k, v in mae.encoder.state_dict().items()}
    classifier = FeClassifier(mae.encoder, task).eval()
    n_patches = mae.noise_size(input_size)
    per_step = [[] for _ in range(settings.steps + 1)]
    embeddings = []
    for i, image in enumerate(images):
        mae.encoder.load_state_dict(trained)
        optimizer = torch.optim.SGD(mae.encoder.parameters(), lr=settings.lr, momentum=settings.momentum)
        views, noise = image_views(image, first_index + i, seed, settings, input_size, n_patches)
        x = _eval_input(image.unsqueeze(0), input_size)
        with torch.no_grad():
            logits, features = classifier(x)
        per_step[0].append(logits)
        for k in range(settings.steps):
            loss = mae(views[k], noise[k])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                logits, features = classifier(x)
            per_step[k + 1].append(logits)
        embeddings.append(features)
    mae.encoder.load_state_dict(trained)  # leave the trained FE as it was
    return TTTOutput([torch.cat(step) for step in per_step], torch.cat(embeddings))


def ttt_batched(
    mae: MaskedAutoencoder,
    task: nn.Module,
    images: torch.Tensor,
    settings: TTTSettings,
    input_size: int,
    seed: int = 0,
    first_index: int = 0,
) -> TTTOutput:
    """Same result as ``ttt_sequential``, adapting ``len(images)`` weight copies in parallel."""
    classifier = FeClassifier(mae.encoder, task).eval()
    n_patches = mae.noise_size(input_size)
    names = [name for name, p in mae.encoder.named_parameters() if p.requires_grad]
    trained = {name: p.detach() for name, p in mae.encoder.named_parameters() if name in names}
    b = len(images)
    params = {k: v.unsqueeze(0).repeat(b, *([1] * v.dim())) for k, v in trained.items()}
    momentum = {k: torch.zeros_like(v) for k, v in params.items()}
    views, noise = zip(
        *(
            image_views(image, first_index + i, seed, settings, input_size, n_patches)
            for i, image in enumerate(images)
        )
    )
    views, noise = torch.stack(views), torch.stack(noise)  # B×K×copies×..., B×K×copies×N
    x = _eval_input(images, input_size).unsqueeze(1)  # B×1×C×H×W: one image per weight copy

    def loss(own, v, n):
        return functional_call(mae, {f"encoder.{k}": p for k, p in own.items()}, (v, n))

    def outputs(own, image):
        logits, features = functional_call(classifier, {f"encoder.{k}": p for k, p in own.items()}, (image,))
        return logits[0], features[0]

    per_image_grad = vmap(grad(loss))
    per_image_outputs = vmap(outputs)
    with unfused_attention(mae, task):
        with torch.no_grad():
            logits, features = per_image_outputs(params, x)
        per_step = [logits]
        for k in range(settings.steps):
            grads = per_image_grad(params, views[:, k], noise[:, k])
            with torch.no_grad():
                for name in params:  # SGD with momentum, as torch.optim.SGD computes it
                    momentum[name] = (
                        grads[name] if k == 0 else (momentum[name] * settings.momentum + grads[name])
                    )
                    params[name] = params[name] - settings.lr * momentum[name]
                logits, features = per_image_outputs(params, x)
            per_step.append(logits)
    return TTTOutput(per_step, features)


@contextmanager
def unfused_attention(*modules: nn.Module):
    """Use timm's explicit attention (matmul + softmax) instead of the fused kernel, which has no
    vmap batching rule on CPU and would fall back to a slow per-sample loop."""
    switched = [m for root in modules for m in root.modules() if getattr(m, "fused_attn", False)]
    for module in switched:
        module.fused_attn = False
    try:
        yield
    finally:
        for module in switched:
            module.fused_attn = True


def ttt_predict(
    mae: MaskedAutoencoder,
    task: nn.Module,
    images_batches,
    settings: TTTSettings,
    input_size: int,
    seed: int = 0,
    progress: Progress | None = None,
    total: int | None = None,
) -> TTTOutput:
    """TTT over an iterable of image batches (e.g. ``domain.batches(chunk)``), on the device of
    ``mae``; the outputs are on the CPU."""
    run = ttt_batched if settings.batched else ttt_sequential
    progress = progress or Progress()
    device = device_of(mae)
    outputs, first = [], 0
    for images in progress.track(images_batches, total=total, description="test-time training"):
        output = run(mae, task, to_device(images, device), settings, input_size, seed, first)
        outputs.append(TTTOutput([x.cpu() for x in output.logits], output.embeddings.cpu()))
        first += len(images)
    logits = [torch.cat([chunk.logits[k] for chunk in outputs]) for k in range(settings.steps + 1)]
    return TTTOutput(logits, torch.cat([chunk.embeddings for chunk in outputs]))
