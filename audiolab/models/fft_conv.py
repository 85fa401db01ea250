"""Depthwise 1-D convolution by FFT (torch-fftconv), for the default ConvNeXt-1D's long kernels.

PyTorch's CPU depthwise Conv1d costs time in proportion to the kernel and has no FFT algorithm. Measured on
the project's 2-core CPU, forward plus backward of batch 8 at the default model's first level (16 channels,
4096 frames): kernel 7, 7.4 ms direct against 11.3 ms by FFT; kernel 127, 34.2 ms direct against 12.2 ms with
torch-fftconv. The weights stay in the block's nn.Conv1d, so checkpoints, Muon's parameter groups and the
streaming export (which rebuilds its own convolutions from those weights) do not see the difference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch_fftconv import fft_conv1d

# At and above this kernel the FFT path is the faster one on the CPU: the measured crossover lies between
# 31 (within noise of each other at most levels) and 63 (FFT 2 to 4 times faster at every level).
FFT_MIN_KERNEL = 48


def same_depthwise_conv1d_fft(x: torch.Tensor, conv: torch.nn.Conv1d) -> torch.Tensor:
    """What `conv` (depthwise, stride 1, padding "same") computes on (B, C, T), by FFT in fp32."""
    kernel = conv.kernel_size[0]
    left = (kernel - 1) // 2  # "same" puts the odd sample of an even kernel's padding on the right
    padded = F.pad(x.float(), (left, kernel - 1 - left))
    bias = conv.bias.float() if conv.bias is not None else None
    return fft_conv1d(padded, conv.weight.float(), bias, groups=conv.groups).to(x.dtype)
