"""Discriminators: output contract, dac reuse, RAVE v2 shapes and sizes, batch independence, gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from audiolab.models.discriminators import (
    RaveV2Discriminator,
    dac_discriminator,
    split_features,
)

PERIODS = (2, 3, 5, 7, 11)
T_RAVE = 4097  # a multiple of none of the periods, and odd so the 2x pooling drops a sample


def small_rave(**kwargs: object) -> RaveV2Discriminator:
    """RAVE v2 layout with narrow convs, to keep the tests fast."""
    torch.manual_seed(0)
    return RaveV2Discriminator(capacity=4, **kwargs)


@pytest.fixture(scope="module")
def dac_disc() -> nn.Module:
    torch.manual_seed(0)
    return dac_discriminator()


@pytest.fixture(scope="module")
def small_dac() -> nn.Module:
    """Same class with fewer sub-discriminators, for the heavier checks (split, backward, autocast)."""
    torch.manual_seed(0)
    return dac_discriminator(periods=(2, 3), fft_sizes=(512,))


def assert_contract(features: object, batch: int, n_sub: int) -> None:
    assert isinstance(features, list) and len(features) == n_sub
    for maps in features:
        assert isinstance(maps, list) and len(maps) >= 2
        for m in maps:
            assert isinstance(m, torch.Tensor) and m.shape[0] == batch and torch.isfinite(m).all()
        assert maps[-1].shape[1] == 1  # a single-channel score map


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def stack_params(kernel: int, capacity: int = 96, n_layers: int = 4) -> int:
    """Closed-form size of one RAVE conv stack: weight + bias + weight-norm gain per conv, then a 1x1 to 1."""
    widths = [1] + [capacity * 2**i for i in range(n_layers)]
    convs = sum(c_in * c_out * kernel + 2 * c_out for c_in, c_out in zip(widths[:-1], widths[1:], strict=True))
    return convs + widths[-1] + 1


# ------------------------------------------------------------------------------------------------- dac


def test_dac_reuses_package_class_and_follows_contract(dac_disc: nn.Module) -> None:
    from dac.model.discriminator import MPD, MRD, Discriminator

    assert isinstance(dac_disc, Discriminator)
    subs = list(dac_disc.discriminators)
    assert [type(d) for d in subs] == [MPD] * 5 + [MRD] * 3
    assert [d.period for d in subs[:5]] == list(PERIODS)
    assert [d.window_length for d in subs[5:]] == [2048, 1024, 512]
    for b, t in ((2, 4096), (1, 8192)):
        with torch.no_grad():
            features = dac_disc(torch.randn(b, 1, t))
        assert_contract(features, batch=b, n_sub=8)
        assert [len(maps) for maps in features] == [6] * 5 + [26] * 3
        for maps, p in zip(features[:5], PERIODS, strict=True):
            assert all(m.shape[-1] == p for m in maps)


def assert_one_pass_matches_two(disc: nn.Module, length: int) -> None:
    """Scoring cat(real, fake) once and splitting gives the maps of two separate passes."""
    real, fake = torch.randn(2, 1, length), 0.3 * torch.randn(3, 1, length)
    with torch.no_grad():
        joint = split_features(disc(torch.cat([real, fake])), n_real=2)
        separate = (disc(real), disc(fake))
    for got, want in zip(joint, separate, strict=True):
        for maps_got, maps_want in zip(got, want, strict=True):
            for a, b in zip(maps_got, maps_want, strict=True):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_dac_split_matches_separate_runs(small_dac: nn.Module) -> None:
    assert_one_pass_matches_two(small_dac, 4096)


def test_dac_is_deep_copyable_when_fresh() -> None:
    disc = dac_discriminator(periods=(2,), fft_sizes=(512,))
    clone = copy.deepcopy(disc)  # plain dac.Discriminator() refuses this (legacy weight norm)
    x = torch.randn(2, 1, 4096)
    with torch.no_grad():
        torch.testing.assert_close(clone(x)[-1][-1], disc(x)[-1][-1])
    with pytest.raises(ValueError):
        clone(torch.randn(2, 2, 4096))  # the input check travels with the copy


def test_dac_gradients_reach_all_parameters(small_dac: nn.Module) -> None:
    small_dac.zero_grad()
    features = small_dac(torch.randn(2, 1, 4096))
    assert_contract(features, batch=2, n_sub=3)
    sum(maps[-1].mean() for maps in features).backward()
    for name, p in small_dac.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_dac_runs_under_cpu_bf16_autocast(small_dac: nn.Module) -> None:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = small_dac(torch.randn(2, 1, 4096))
    assert_contract(features, batch=2, n_sub=3)


@pytest.mark.parametrize("shape", [(2, 4096), (2, 2, 4096), (2, 1, 1, 4096), (2, 1, 100)])
def test_dac_rejects_bad_shapes(small_dac: nn.Module, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        small_dac(torch.randn(*shape))


# --------------------------------------------------------------------------------------------- RAVE v2


def test_rave_v2_default_layout_and_size() -> None:
    torch.manual_seed(0)
    disc = RaveV2Discriminator()
    assert len(disc.period_discriminators) == 5 and len(disc.scale_discriminators) == 3
    expected = 5 * stack_params(kernel=5) + 3 * stack_params(kernel=15)
    print(f"rave_v2 default parameters: {n_params(disc):,}")
    assert n_params(disc) == expected
    assert 20e6 < expected < 35e6
    with torch.no_grad():
        features = disc(torch.randn(2, 1, T_RAVE))
    assert_contract(features, batch=2, n_sub=8)
    assert all(len(maps) == 5 for maps in features)  # 4 strided convs + the logit
    assert [m.shape[1] for m in features[0]] == [96, 192, 384, 768, 1]


def test_rave_v2_map_shapes() -> None:
    disc = small_rave()
    with torch.no_grad():
        features = disc(torch.randn(2, 1, T_RAVE))
    assert_contract(features, batch=2, n_sub=8)
    for maps, p in zip(features[:5], PERIODS, strict=True):
        assert maps[0].ndim == 4
        assert all(m.shape[-1] == p for m in maps)
        assert maps[0].shape[2] == ceil_div(ceil_div(T_RAVE, p), 4)  # the fold has ceil(T / p) rows, then stride 4
    lengths = [maps[0].shape[-1] for maps in features[5:]]
    assert lengths == [ceil_div(t, 4) for t in (T_RAVE, T_RAVE // 2, T_RAVE // 4)]  # scales see T, T // 2, T // 4


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_rave_v2_split_matches_separate_runs(pad_mode: str) -> None:
    assert_one_pass_matches_two(small_rave(period_pad_mode=pad_mode), T_RAVE)


def test_rave_v2_has_no_batch_mixing_layers() -> None:
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
    assert not any(isinstance(m, norms) for m in RaveV2Discriminator().modules())


def test_rave_v2_gradients_reach_all_parameters() -> None:
    disc = small_rave()
    features = disc(torch.randn(2, 1, T_RAVE))
    sum(maps[-1].mean() for maps in features).backward()
    names = [name for name, _ in disc.named_parameters()]
    assert any("parametrizations.weight.original0" in n for n in names)  # weight norm is the parametrization API
    for name, p in disc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_rave_v2_bf16_autocast_and_deepcopy() -> None:
    disc = small_rave()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = disc(torch.randn(2, 1, T_RAVE))
    assert_contract(features, batch=2, n_sub=8)
    clone = copy.deepcopy(disc)  # parametrized weight norm survives deepcopy, unlike the legacy hook
    x = torch.randn(2, 1, T_RAVE)
    torch.testing.assert_close(clone(x)[-1][-1], disc(x)[-1][-1])


@pytest.mark.parametrize("shape", [(2, 4096), (2, 2, 4096), (2, 1, 1, 4096), (2, 1, 1)])
def test_rave_v2_rejects_bad_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        small_rave()(torch.randn(*shape))


# ------------------------------------------------------------------------------------------------ helpers


def test_split_features() -> None:
    maps = [[torch.arange(5.0).reshape(5, 1), torch.arange(10.0).reshape(5, 2)]]
    real, fake = split_features(maps, n_real=2)
    assert [m.shape[0] for m in real[0]] == [2, 2] and [m.shape[0] for m in fake[0]] == [3, 3]
    torch.testing.assert_close(fake[0][0], torch.tensor([[2.0], [3.0], [4.0]]))
    with pytest.raises(ValueError):
        split_features(maps, n_real=6)
