"""The FFT path of the long depthwise kernels computes what nn.Conv1d computes, values and gradients."""

from __future__ import annotations

import pytest
import torch

from audiolab.models.convnext1d import ConvNeXtBlock
from audiolab.models.fft_conv import FFT_MIN_KERNEL, same_depthwise_conv1d_fft


@pytest.mark.parametrize("kernel, length", [(127, 1000), (64, 300), (49, 17), (255, 64)])
def test_fft_conv_equals_direct_conv_with_its_gradients(kernel: int, length: int) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, kernel, padding="same", groups=6)
    x = torch.randn(3, 6, length, requires_grad=True)
    direct = conv(x)
    grads_direct = torch.autograd.grad(direct.square().sum(), [x, conv.weight, conv.bias])
    by_fft = same_depthwise_conv1d_fft(x, conv)
    grads_fft = torch.autograd.grad(by_fft.square().sum(), [x, conv.weight, conv.bias])
    assert by_fft.shape == direct.shape
    torch.testing.assert_close(by_fft, direct, atol=2e-5, rtol=1e-4)
    for g_fft, g_direct in zip(grads_fft, grads_direct, strict=True):
        torch.testing.assert_close(g_fft, g_direct, atol=1e-3, rtol=1e-3)


def test_a_block_takes_the_fft_path_only_for_long_1d_kernels_and_gives_the_same_output() -> None:
    torch.manual_seed(0)
    long_block = ConvNeXtBlock(8, kernel_size=127)
    assert long_block.fft and not ConvNeXtBlock(8, kernel_size=7).fft
    assert not ConvNeXtBlock(8, kernel_size=FFT_MIN_KERNEL + 1, spatial_dims=2).fft
    with torch.no_grad():
        long_block.gamma.fill_(1.0)  # make the block's branch count, not the 1e-6 layer scale
    x = torch.randn(2, 8, 500)
    by_fft = long_block(x)
    long_block.fft = False
    torch.testing.assert_close(by_fft, long_block(x), atol=2e-5, rtol=1e-4)
