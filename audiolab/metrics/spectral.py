"""The fixed validation distance `val/spec_loss`, identical for every run whatever its training loss.

Its resolutions live here, in code, not in any config group: changing them would make runs recorded
before and after incomparable, so a change must be a deliberate code change (bump `SPEC_LOSS_VERSION`).
"""

from __future__ import annotations

import auraloss
import torch

SPEC_LOSS_VERSION = 1
SPEC_FFT_SIZES = (4096, 2048, 1024, 512, 256, 128)
SPEC_HOP_SIZES = tuple(n // 4 for n in SPEC_FFT_SIZES)


class SpecDistance(torch.nn.Module):
    """Multi-resolution STFT distance (spectral convergence + log-magnitude L1), always in fp32."""

    def __init__(self) -> None:
        super().__init__()
        self.stft = auraloss.freq.MultiResolutionSTFTLoss(
            fft_sizes=list(SPEC_FFT_SIZES), hop_sizes=list(SPEC_HOP_SIZES), win_lengths=list(SPEC_FFT_SIZES),
            w_sc=1.0, w_log_mag=1.0, w_lin_mag=0.0, w_phs=0.0,
        )

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean distance over the batch of (B, C, T) tensors."""
        with torch.autocast(device_type=output.device.type, enabled=False):
            return self.stft(output.float(), target.float())
