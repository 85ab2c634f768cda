import pytest
import torch

from hcibench.train import augment


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _find(source: torch.Tensor, crop: torch.Tensor) -> bool:
    """Whether ``crop`` (C×h×w) is a window of ``source`` (C×H×W), flipped or not."""
    h, w = crop.shape[-2:]
    windows = source.unfold(1, h, 1).unfold(2, w, 1)  # C×nh×nw×h×w
    for candidate in (crop, crop.flip(-1), crop.flip(-2), crop.flip(-1, -2)):
        if (windows == candidate[:, None, None]).flatten(3).all(-1).all(0).any():
            return True
    return False


def test_random_crops_shape_and_contents_come_from_the_source():
    x = torch.rand(8, 3, 20, 24)
    crops = augment.random_crops(x, 10, _gen())
    assert crops.shape == (8, 3, 10, 10)
    for image, crop in zip(x, crops):
        h = w = 10
        windows = image.unfold(1, h, 1).unfold(2, w, 1)
        assert (windows == crop[:, None, None]).flatten(3).all(-1).all(0).any()


def test_random_crops_offsets_vary_and_full_size_crop_is_identity():
    x = torch.arange(4 * 1 * 16 * 16, dtype=torch.float32).view(4, 1, 16, 16).repeat(16, 1, 1, 1)
    crops = augment.random_crops(x, 4, _gen())
    assert len({c[0, 0, 0].item() for c in crops}) > 1  # different offsets per image
    assert torch.equal(augment.random_crops(x, 16, _gen()), x)
    with pytest.raises(ValueError):
        augment.random_crops(x, 17, _gen())


def test_random_crops_are_reproducible_with_a_generator():
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(augment.random_crops(x, 8, _gen(3)), augment.random_crops(x, 8, _gen(3)))


def test_random_flips_flip_each_image_independently():
    x = torch.rand(64, 2, 5, 7)
    y = augment.random_flips(x, _gen())
    kinds = set()
    for a, b in zip(x, y):
        match = [
            torch.equal(b, a),
            torch.equal(b, a.flip(-1)),
            torch.equal(b, a.flip(-2)),
            torch.equal(b, a.flip(-1, -2)),
        ]
        assert any(match)
        kinds.add(match.index(True))
    assert kinds == {0, 1, 2, 3}


def test_intensity_jitter_is_small_per_channel_and_clipped():
    x = torch.rand(16, 3, 8, 8)
    y = augment.intensity_jitter(x, _gen(), shift_std=0.005, gamma_std=0.005)
    assert y.shape == x.shape
    assert y.min() >= 0 and y.max() <= 1
    assert 0 < (y - x).abs().mean() < 0.05
    # one shift per image and channel: the difference of two constant pixels is the same
    flat = torch.full((2, 3, 4, 4), 0.5)
    z = augment.intensity_jitter(flat, _gen())
    assert torch.allclose(z, z[..., :1, :1].expand_as(z))
    assert not torch.allclose(z[:, 0], z[:, 1])
    big = augment.intensity_jitter(x, _gen(), shift_std=1.0, gamma_std=0.0)
    assert big.min() == 0 and big.max() == 1


def test_self_normalise_gives_zero_mean_unit_std():
    x = torch.rand(5, 3, 12, 12) * 7 + 3
    y = augment.self_normalise(x)
    assert torch.allclose(y.mean(dim=(-2, -1)), torch.zeros(5, 3), atol=1e-5)
    assert torch.allclose(y.std(dim=(-2, -1)), torch.ones(5, 3), atol=1e-4)
    constant = augment.self_normalise(torch.ones(1, 1, 4, 4))
    assert torch.isfinite(constant).all() and constant.abs().max() == 0


def test_multi_crop_views_shapes_order_and_sources():
    x = torch.rand(6, 3, 32, 32)
    views = augment.multi_crop(x, 16, 8, 3, _gen(7), jitter=False)
    assert [tuple(v.shape) for v in views] == [(6, 3, 16, 16)] * 2 + [(6, 3, 8, 8)] * 3
    for v in views:
        assert torch.allclose(v.mean(dim=(-2, -1)), torch.zeros(6, 3), atol=1e-5)
    # the same generator state gives the raw crops: each a (flipped) window of its own image
    g = _gen(7)
    raw = list(augment._crops(x, 16, 2, g, flip=True)) + list(augment._crops(x, 8, 3, g, flip=True))
    for view, crops in zip(views, raw):
        assert torch.allclose(view, augment.self_normalise(crops), atol=1e-5)
        for image, crop in zip(x, crops):
            assert _find(image, crop)


def test_multi_crop_jitters_only_the_global_views():
    x = torch.rand(4, 3, 16, 16)
    plain = augment.multi_crop(x, 12, 6, 2, _gen(1), jitter=False)
    jittered = augment.multi_crop(x, 12, 6, 2, _gen(1), jitter=True)
    # the generator draws crops first, so the same crops are taken in both runs
    assert not torch.allclose(plain[0], jittered[0])
    assert torch.allclose(plain[2], jittered[2]) and torch.allclose(plain[3], jittered[3])


@pytest.mark.parametrize("n_local", [0, 3, 4])
def test_cross_batch_views_take_global_two_and_half_the_locals_from_the_partner(n_local):
    anchor = torch.rand(5, 2, 16, 16)
    partner = torch.rand(5, 2, 16, 16) + 10  # disjoint values tell the sources apart
    views = augment.cross_batch_views(anchor, partner, 12, 6, n_local, _gen(), jitter=False)
    assert len(views) == 2 + n_local
    raw = augment._views(
        [(anchor, 1, (n_local + 1) // 2), (partner, 1, n_local // 2)],
        12,
        6,
        _gen(),
        False,
        augment.Jitter(),
        (0.0, 1.0),
        0,
    )
    assert all(torch.equal(a, b) for a, b in zip(views, raw))
    # check the sources by re-running the crop pipeline without normalisation
    g = _gen()
    a_glob = augment._crops(anchor, 12, 1, g, True)
    p_glob = augment._crops(partner, 12, 1, g, True)
    a_loc = augment._crops(anchor, 6, (n_local + 1) // 2, g, True)
    assert a_glob.max() < 1 and p_glob.min() >= 10 and (a_loc.numel() == 0 or a_loc.max() < 1)
    assert torch.allclose(views[0], augment.self_normalise(a_glob[0]), atol=1e-5)
    assert torch.allclose(views[1], augment.self_normalise(p_glob[0]), atol=1e-5)


def test_odd_local_count_gives_the_anchor_the_extra_view():
    anchor = torch.zeros(2, 1, 8, 8)
    anchor[:, :, ::2] = 1  # striped: rows alternate
    partner = torch.zeros(2, 1, 8, 8)
    partner[:, :, :, ::2] = 1  # columns alternate
    views = augment.cross_batch_views(anchor, partner, 8, 4, 3, _gen(), jitter=False)
    row_striped = [bool((v[..., 0, :] == v[..., 0, :1]).all()) for v in views[2:]]
    assert row_striped == [True, True, False]


def test_intensity_jitter_matches_its_formula():
    x = torch.rand(4, 3, 5, 5)
    x[0, 0, 0, 0] = 0.0
    x[1, 1, 1, 1] = 1.0
    y = augment.intensity_jitter(x, _gen(9), shift_std=0.05, gamma_std=0.2)
    g = _gen(9)
    gamma = (1 + 0.2 * torch.randn(4, 3, generator=g)).clamp_min(1e-3)[..., None, None]
    shift = 0.05 * torch.randn(4, 3, generator=g)[..., None, None]
    assert torch.allclose(y, (x.pow(gamma) + shift).clamp(0, 1), atol=1e-6)
    signed = augment.intensity_jitter(x * 4 - 2, _gen(9), 0.05, 0.2, value_range=(-2.0, 2.0))
    expected = (x.pow(gamma) * 4 - 2 + shift).clamp(-2, 2)
    assert torch.allclose(signed, expected, atol=1e-5)


def test_reference_jitter_leaves_about_half_the_images_alone_and_bounds_the_gamma():
    x = torch.rand(2000, 3, 4, 4) * 0.8 + 0.1
    form = augment.Jitter.reference()
    y = augment.intensity_jitter(
        x, _gen(3), 0.005, 0.5, p=form.p, gamma_clip=form.gamma_clip, shift_first=True
    )
    untouched = ((y - x).abs() < 1e-6).flatten(1).all(1)  # exp(log x) is x to rounding
    assert 0.45 < untouched.float().mean() < 0.55
    # a gamma within 1 ± 0.005 and a shift of sd 0.005 move no pixel by more than a few hundredths,
    # where the unbounded gamma of sd 0.5 would
    assert (y - x).abs().max() < 0.05
    wild = augment.intensity_jitter(x, _gen(3), 0.005, 0.5)
    assert (wild - x).abs().max() > 0.2


def test_shift_first_applies_the_gamma_to_the_shifted_image():
    x = torch.full((1, 1, 2, 2), 0.5)
    g = _gen(4)
    gamma = 1.0 + 0.3 * torch.randn((1, 1), generator=g)
    shift = 0.1 * torch.randn((1, 1), generator=g)
    y = augment.intensity_jitter(x, _gen(4), 0.1, 0.3, shift_first=True)
    expected = (0.5 + shift).clamp(0, 1) ** gamma
    assert torch.allclose(y, expected.expand_as(y), atol=1e-6)


def test_views_come_from_the_central_region_only():
    x = torch.zeros(4, 1, 20, 20)
    x[..., 6:14, 6:14] = 1.0 + torch.rand(4, 1, 8, 8)  # the centre is bright, the border dark
    views = augment.multi_crop(x, 6, 4, 2, _gen(5), jitter=False, region=8)
    raw_globals = augment._crops(augment.central_region(x, 8), 6, 2, _gen(5), True)
    assert (raw_globals > 0.5).all()  # no crop reaches the border
    assert len(views) == 4
    assert augment.central_region(x, 0) is x and augment.central_region(x, 64).shape == x.shape
