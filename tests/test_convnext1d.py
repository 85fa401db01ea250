"""Tests for the ConvNeXt-1D waveform U-Net."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from audiolab.models.convnext1d import ConvNeXtUNet1d, _depth_to_space, _space_to_depth

TINY = dict(channels=[1, 4, 8], blocks=[1, 1], factors=[2, 2])


def _perturb(model: nn.Module, seed: int = 0) -> None:
    """Give every parameter (incl. the zero last layer and tiny gammas) a non-trivial random value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("length", [1, 7, 1000, 1023])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_output_shape_matches_input(length: int, alpha: float) -> None:
    model = ConvNeXtUNet1d(**TINY, scale_vs_channels=[alpha, alpha], predict_residual=False)
    x = torch.randn(2, 1, length)
    assert model(x).shape == x.shape


@pytest.mark.parametrize("factors", [[3, 2], [1, 5]])
def test_odd_factors_keep_length(factors: list[int]) -> None:
    model = ConvNeXtUNet1d(channels=[1, 4, 8], blocks=[1, 1], factors=factors, scale_vs_channels=[0.5, 0.5])
    _perturb(model)
    x = torch.randn(1, 1, 101)
    assert model(x).shape == x.shape


def test_residual_model_starts_as_identity() -> None:
    for alpha in (0.0, 0.5, 1.0):
        model = ConvNeXtUNet1d(**TINY, scale_vs_channels=[alpha, alpha], predict_residual=True)
        x = torch.randn(3, 1, 513)
        assert torch.equal(model(x), x)


def test_big_config_parameter_count() -> None:
    model = ConvNeXtUNet1d(channels=[1, 8, 64, 256, 512], blocks=[2, 2, 3, 4], factors=[8, 8, 4, 2])
    assert 21.0e6 <= model.num_parameters <= 22.0e6
    assert model.hop_length == 512
    del model


def test_scale_vs_channels_values() -> None:
    counts = {}
    for alpha in (0.0, 0.5, 1.0):
        model = ConvNeXtUNet1d(**TINY, scale_vs_channels=[alpha, alpha])
        assert model(torch.randn(1, 1, 64)).shape == (1, 1, 64)
        counts[alpha] = model.num_parameters
    assert counts[0.0] != counts[1.0]
    # The mixed setting builds both paths, so it is the largest.
    assert counts[0.5] > max(counts[0.0], counts[1.0])


@pytest.mark.parametrize("bad", [[1.5, 1.0], [-0.1, 0.0], [1.0]])
def test_invalid_scale_vs_channels_raises(bad: list[float]) -> None:
    with pytest.raises(ValueError, match="scale_vs_channels"):
        ConvNeXtUNet1d(**TINY, scale_vs_channels=bad)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(channels=[1, 4], blocks=[1, 1], factors=[2, 2]), "channels"),
        (dict(channels=[1, 4, 8], blocks=[1], factors=[2, 2]), "blocks"),
        (dict(channels=[1, 4, 8], blocks=[1, 1], factors=[2, 0]), "factors"),
        (dict(channels=[1, 0, 8], blocks=[1, 1], factors=[2, 2]), "channels"),
        (dict(channels=[1, 4, 8], blocks=[1, 1], factors=[2, 2], kernel_sizes=[7]), "kernel_sizes"),
        (dict(channels=[1, 4, 8], blocks=[1, 1], factors=[2, 2], kernel_sizes=[7, 0]), "kernel_sizes"),
    ],
)
def test_invalid_structure_raises(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ConvNeXtUNet1d(**kwargs)


def test_kernel_sizes_set_each_level_and_replace_kernel_size() -> None:
    model = ConvNeXtUNet1d(**TINY, kernel_size=3, kernel_sizes=[31, 5])
    for stages in (model.enc, model.dec):
        assert [block.dwconv.kernel_size[0] for stage in stages for block in stage] == [31, 5]
    uniform = ConvNeXtUNet1d(**TINY, kernel_size=9)
    assert {block.dwconv.kernel_size[0] for stage in uniform.enc for block in stage} == {9}
    x = torch.randn(2, 1, 100)
    assert model(x).shape == x.shape


def test_fold_is_lossless() -> None:
    x = torch.randn(2, 3, 12)
    folded = _space_to_depth(x, 4)
    assert folded.shape == (2, 12, 3)
    assert torch.equal(_depth_to_space(folded, 4), x)


def test_dropout_only_active_in_train_mode() -> None:
    torch.manual_seed(0)
    model = ConvNeXtUNet1d(**TINY, dropout=0.5, predict_residual=False)
    _perturb(model)  # gammas of 1e-6 would make the dropout effect vanish in rounding
    x = torch.randn(2, 1, 256)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_gradients_reach_every_parameter(alpha: float) -> None:
    model = ConvNeXtUNet1d(**TINY, scale_vs_channels=[alpha, alpha])
    _perturb(model)
    x = torch.randn(2, 1, 100)
    model(x).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
