"""HCI augmentations on batched tensors (B×C×H×W, float).

The DINO pipeline for one view is: random fixed-size crop (no rescaling) -> vertical and
horizontal flips with p = 0.5 each -> intensity jitter (global views only: per-channel additive
N(0, 0.005) and a gamma drawn from N(1, 0.005), clipped) -> per-image, per-channel
standardisation ("self-normalise"). There is no colour jitter, grayscale, blur or solarise:
Cell Painting channels are not colours.

The CODA authors' code jitters a view with probability 0.5, shifts before the gamma and clips
the gamma to 1 ± 0.005; it also takes every random crop inside the central 448 px of the image.
:class:`Jitter` holds the form of the jitter (``Jitter.reference()`` is theirs) and
``region`` the central area crops are taken from.

Everything works on whole batches with index arithmetic (one ``gather`` per group of crops, with
the flips folded into the gather indices), so augmenting costs a small share of a DINO step and
runs on the batch's device. Randomness comes only from the ``torch.Generator`` passed in; random
numbers are drawn on the generator's device and then moved to the data's device, so a CPU
generator gives the same views on any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "Jitter",
    "center_crop",
    "central_region",
    "cross_batch_views",
    "intensity_jitter",
    "multi_crop",
    "random_crops",
    "random_flips",
    "self_normalise",
]


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _randint(high: int, shape, generator, device) -> torch.Tensor:
    """Integers in [0, high) drawn with ``generator`` and moved to ``device``."""
    values = torch.randint(0, high, shape, generator=generator, device=_gen_device(generator))
    return values.to(device)


def _rand(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=_gen_device(generator)).to(device)


def _randn(shape, generator, device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=_gen_device(generator)).to(device)


def _crops(x: torch.Tensor, size, n: int, generator: torch.Generator | None, flip: bool) -> torch.Tensor:
    """``n`` random crops (each with its own offset and flips) of every image: n×B×C×h×w.

    One ``gather`` reads all of them: the crop offsets and the flips only change which source
    pixel each output pixel reads, so a flipped crop costs the same as a plain one.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a B×C×H×W batch, got shape {tuple(x.shape)}")
    batch, channels, height, width = x.shape
    crop_h, crop_w = _pair(size)
    if crop_h > height or crop_w > width:
        raise ValueError(f"crop {crop_h}×{crop_w} is larger than the images ({height}×{width})")
    device = x.device
    top = _randint(height - crop_h + 1, (n, batch, 1), generator, device)
    left = _randint(width - crop_w + 1, (n, batch, 1), generator, device)
    rows = torch.arange(crop_h, device=device).expand(n, batch, crop_h)
    cols = torch.arange(crop_w, device=device).expand(n, batch, crop_w)
    if flip:
        vertical = _rand((n, batch, 1), generator, device) < 0.5
        horizontal = _rand((n, batch, 1), generator, device) < 0.5
        rows = torch.where(vertical, crop_h - 1 - rows, rows)
        cols = torch.where(horizontal, crop_w - 1 - cols, cols)
    rows = rows + top
    cols = cols + left
    index = (rows[..., :, None] * width + cols[..., None, :]).reshape(n, batch, 1, crop_h * crop_w)
    index = index.expand(n, batch, channels, crop_h * crop_w)
    source = x.reshape(1, batch, channels, height * width).expand(n, batch, channels, height * width)
    return torch.gather(source, 3, index).view(n, batch, channels, crop_h, crop_w)


def center_crop(x: torch.Tensor, size) -> torch.Tensor:
    """The central ``size`` crop of every image (a view, no copy)."""
    crop_h, crop_w = _pair(size)
    height, width = x.shape[-2:]
    if crop_h > height or crop_w > width:
        raise ValueError(f"crop {crop_h}×{crop_w} is larger than the images ({height}×{width})")
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return x[..., top : top + crop_h, left : left + crop_w]


def random_crops(x: torch.Tensor, size, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fixed-size crop at a random offset of each image (no rescaling): B×C×size×size."""
    return _crops(x, size, 1, generator, flip=False)[0]


def random_flips(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image vertically and, independently, horizontally, each with p = 0.5."""
    batch = x.shape[0]
    shape = (batch,) + (1,) * (x.dim() - 1)
    vertical = (_rand(batch, generator, x.device) < 0.5).view(shape)
    horizontal = (_rand(batch, generator, x.device) < 0.5).view(shape)
    x = torch.where(vertical, x.flip(-2), x)
    return torch.where(horizontal, x.flip(-1), x)


@dataclass(frozen=True)
class Jitter:
    """The form of the intensity jitter: the spreads of the shift and the gamma, the chance that
    a view is jittered at all, a bound on the gamma's distance from 1 (0: none) and whether the
    shift comes before the gamma."""

    shift_std: float = 0.005
    gamma_std: float = 0.005
    p: float = 1.0
    gamma_clip: float = 0.0
    shift_first: bool = False

    @classmethod
    def reference(cls) -> Jitter:
        """The CODA authors' jitter: p 0.5, shift first, gamma within 1 ± 0.005."""
        return cls(p=0.5, gamma_clip=0.005, shift_first=True)

    def apply(self, x: torch.Tensor, generator=None, value_range=(0.0, 1.0)) -> torch.Tensor:
        """:func:`intensity_jitter` of ``x`` in this form."""
        return intensity_jitter(
            x,
            generator,
            self.shift_std,
            self.gamma_std,
            value_range,
            p=self.p,
            gamma_clip=self.gamma_clip,
            shift_first=self.shift_first,
        )


def intensity_jitter(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    shift_std: float = 0.005,
    gamma_std: float = 0.005,
    value_range: tuple[float, float] | None = (0.0, 1.0),
    *,
    p: float = 1.0,
    gamma_clip: float = 0.0,
    shift_first: bool = False,
) -> torch.Tensor:
    """Per-image, per-channel gamma ~ N(1, gamma_std) and additive shift ~ N(0, shift_std).

    ``y = clip(clip(x) ** gamma + shift)`` with clipping to ``value_range`` (images are expected
    in [0, 1]; for another range the gamma acts on the intensity rescaled to [0, 1]); with
    ``shift_first``, ``y = clip(clip(x) + shift) ** gamma``. With ``value_range=None`` nothing
    is clipped and the gamma is applied to the magnitude (``sign(x) * |x| ** gamma``) so that
    negative values stay finite. Each image is jittered with probability ``p`` (left as it is
    otherwise); ``gamma_clip`` > 0 keeps the gamma within 1 ± ``gamma_clip``.
    """
    batch, channels = x.shape[:2]
    shape = (batch, channels) + (1,) * (x.dim() - 2)
    gamma = (1.0 + gamma_std * _randn((batch, channels), generator, x.device)).clamp_min(1e-3)
    shift = shift_std * _randn((batch, channels), generator, x.device)
    if gamma_clip > 0:
        gamma = gamma.clamp(1.0 - gamma_clip, 1.0 + gamma_clip)
    if p < 1.0:  # drawn only then, so that p = 1 leaves the random stream as it always was
        skip = (_rand((batch, 1), generator, x.device) >= p).expand(batch, channels)
        gamma, shift = gamma.masked_fill(skip, 1.0), shift.masked_fill(skip, 0.0)
    gamma, shift = gamma.view(shape).to(x.dtype), shift.view(shape).to(x.dtype)
    if value_range is None:
        if shift_first:
            x = x + shift
            return torch.sign(x) * x.abs().pow(gamma)
        return torch.sign(x) * x.abs().pow(gamma) + shift
    low, high = value_range
    y = x.clamp(low, high)
    if shift_first:
        y = y.add_(shift).clamp_(low, high)
    if (low, high) != (0.0, 1.0):  # the gamma acts on the intensity scaled to [0, 1]
        y = y.sub_(low).div_(high - low)
    # in place, and exp(gamma·log y) is faster than pow with a tensor exponent (log 0 -> 0)
    y = y.log_().mul_(gamma).exp_()
    if (low, high) != (0.0, 1.0):
        y = y.mul_(high - low).add_(low)
    if shift_first:
        return y.clamp_(low, high)
    return y.add_(shift).clamp_(low, high)


def central_region(x: torch.Tensor, region: int) -> torch.Tensor:
    """The central ``region`` × ``region`` of images larger than it (``region`` 0: the whole image).

    The CODA authors' code takes every random crop inside the central 448 px; it zero-pads
    smaller images, which here are left as they are (padding would put black borders into
    crops of images that already fit)."""
    if region <= 0:
        return x
    height, width = x.shape[-2:]
    return center_crop(x, (min(region, height), min(region, width)))


def self_normalise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` over H and W, per image and channel (unbiased std)."""
    # Two passes (centre, then the norm of the centred values) are several times faster on a CPU
    # than torch.std_mean, and as accurate.
    count = x.shape[-2] * x.shape[-1]
    centred = x - x.mean(dim=(-2, -1), keepdim=True)
    std = torch.linalg.vector_norm(centred, dim=(-2, -1), keepdim=True) / max(count - 1, 1) ** 0.5
    return centred.div_(std + eps)


def _views(
    sources: list[tuple[torch.Tensor, int, int]],
    global_size,
    local_size,
    generator: torch.Generator | None,
    jitter: bool,
    form: Jitter,
    value_range,
    region: int,
) -> list[torch.Tensor]:
    """Views from (images, n_global, n_local) triples: all globals first, then all locals."""
    sources = [(central_region(x, region), g, k) for x, g, k in sources]
    globals_ = [_crops(x, global_size, k, generator, flip=True) for x, k, _ in sources if k]
    locals_ = [_crops(x, local_size, k, generator, flip=True) for x, _, k in sources if k]
    views = []
    if globals_:
        stacked = torch.cat(globals_) if len(globals_) > 1 else globals_[0]
        if jitter:
            n, batch = stacked.shape[:2]
            flat = stacked.view(n * batch, *stacked.shape[2:])
            flat = form.apply(flat, generator, value_range)
            stacked = flat.view(stacked.shape)
        views += list(self_normalise(stacked).unbind(0))
    if locals_:
        stacked = torch.cat(locals_) if len(locals_) > 1 else locals_[0]
        views += list(self_normalise(stacked).unbind(0))
    return views


def multi_crop(
    x: torch.Tensor,
    global_size,
    local_size,
    n_local: int,
    generator: torch.Generator | None = None,
    jitter: bool = True,
    *,
    n_global: int = 2,
    shift_std: float = 0.005,
    gamma_std: float = 0.005,
    value_range: tuple[float, float] | None = (0.0, 1.0),
    form: Jitter | None = None,
    region: int = 0,
) -> list[torch.Tensor]:
    """DINO views of a batch: ``n_global`` (2) global crops then ``n_local`` local crops.

    Each view is B×C×size×size, cropped at its own random offset per image (inside the central
    ``region``, when > 0), flipped, jittered (globals only, when ``jitter``; ``form``, when
    given, replaces ``shift_std`` and ``gamma_std``) and self-normalised.
    """
    form = form or Jitter(shift_std, gamma_std)
    return _views(
        [(x, n_global, n_local)], global_size, local_size, generator, jitter, form, value_range, region
    )


def cross_batch_views(
    anchor: torch.Tensor,
    partner: torch.Tensor,
    global_size,
    local_size,
    n_local: int,
    generator: torch.Generator | None = None,
    jitter: bool = True,
    *,
    shift_std: float = 0.005,
    gamma_std: float = 0.005,
    value_range: tuple[float, float] | None = (0.0, 1.0),
    form: Jitter | None = None,
    region: int = 0,
) -> list[torch.Tensor]:
    """Cross-batch DINO views: global 1 from ``anchor``, global 2 from ``partner``, then the
    local views, the first ``ceil(n_local / 2)`` from the anchor and the rest from the partner
    (crops, jitter and normalisation as :func:`multi_crop`).

    The teacher sees both globals, so the anchor's teacher output supervises the student's views
    of the partner and vice versa.
    """
    if anchor.shape != partner.shape:
        raise ValueError(f"anchor {tuple(anchor.shape)} and partner {tuple(partner.shape)} differ")
    n_anchor = (n_local + 1) // 2
    form = form or Jitter(shift_std, gamma_std)
    return _views(
        [(anchor, 1, n_anchor), (partner, 1, n_local - n_anchor)],
        global_size,
        local_size,
        generator,
        jitter,
        form,
        value_range,
        region,
    )
