"""Audio embedders for the distribution metrics in `audiolab.metrics.distribution`.

An embedder maps a batch of mono clips to one vector per clip. `identity()` names the embedder and
everything that changes its output, so cached embeddings can be keyed by it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torchaudio

# Power floor before the log. For the default n_fft=2048 a full-scale sine's peak bin has power
# (n_fft/4)^2 = 2.6e5, so 1e-5 sits about 104 dB below it: digital silence maps to log(1e-5) = -11.5 instead
# of -inf, and the quantisation noise of 16-bit audio (about 6e-8 per FFT bin, at most a few 1e-6 per mel band)
# stays under the floor instead of spreading near-silent bands over a wide, meaningless range of log values.
LOG_MEL_FLOOR = 1e-5


@runtime_checkable
class Embedder(Protocol):
    """Maps (N, T) mono audio at `sample_rate` to (N, D) float32 CPU embeddings."""

    name: str
    sample_rate: int

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        """(N, T) mono float audio at `sample_rate` -> (N, D) float32 on the CPU."""
        ...

    def identity(self) -> str:
        """A string naming the embedder and its weights or parameters, used as an embedding-cache key."""
        ...


class LogMelEmbedder:
    """Mean and standard deviation over time of log-mel frames: a weight-free embedding that is sensitive to damage.

    D = 2 * n_mels: the first n_mels values are the per-band mean of log(mel power + 1e-5), the rest the
    per-band population standard deviation over frames (0 rather than NaN for a one-frame clip).
    The mel spectrogram is torchaudio's (Hann window of n_fft, centred frames, HTK mel scale, power 2).
    """

    name = "logmel"

    def __init__(self, sample_rate: int = 44100, n_fft: int = 2048, hop_length: int = 512, n_mels: int = 64,
                 device: str | torch.device = "cpu") -> None:
        """Build the mel filterbank on `device`; audio passed to embed() must be at `sample_rate`."""
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.device = torch.device(device)
        self._mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, power=2.0,
        ).to(self.device, torch.float32)

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        """(N, T) or (N, 1, T) mono audio at `sample_rate` -> (N, 2 * n_mels) float32 on the CPU."""
        if audio.dim() == 3 and audio.shape[1] == 1:
            audio = audio[:, 0]
        if audio.dim() != 2:
            raise ValueError(f"expected mono audio of shape (N, T) or (N, 1, T), got {tuple(audio.shape)}")
        # fp32 whatever the caller's autocast or dtype: log-mel statistics of low-level bands lose their
        # meaning in half precision, and embeddings must not depend on the caller's precision settings.
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            x = audio.to(self.device, torch.float32)
            logmel = torch.log(self._mel(x) + LOG_MEL_FLOOR)  # (N, n_mels, frames)
            emb = torch.cat([logmel.mean(dim=-1), logmel.std(dim=-1, correction=0)], dim=-1)
        return emb.float().cpu()

    def identity(self) -> str:
        """E.g. 'logmel-sr44100-fft2048-hop512-mels64'."""
        return f"{self.name}-sr{self.sample_rate}-fft{self.n_fft}-hop{self.hop_length}-mels{self.n_mels}"


def file_fingerprint(path: str | Path) -> str:
    """Path, size and mtime of a file: enough to notice a replaced checkpoint without hashing 600 MB."""
    stat = Path(path).stat()
    return hashlib.sha256(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


class ClapEmbedder:
    """LAION CLAP's audio tower (loaded offline from a checkpoint file) as an embedder of clips of any length.

    Clips of at most 10 s are repeated to fill the window and zero-padded, as laion-clap's `repeatpad`
    does. Longer clips are cut into 10 s windows `hop_seconds` apart (the last one ends at the clip's
    end); their embeddings are averaged and renormalised, so every clip gives one unit-norm 512-d vector.
    laion-clap itself takes one random 10 s crop of a long clip; fixed windows keep evaluation deterministic.
    """

    name = "clap"

    def __init__(self, checkpoint: str | Path, trust_checkpoint: bool = False, hop_seconds: float = 10.0,
                 batch_size: int = 8, device: str | torch.device = "cpu", audio_model: str = "HTSAT-base") -> None:
        from audiolab.metrics.clap import CLAP_SAMPLE_RATE, CLAP_WINDOW, load_clap_tower

        self.sample_rate = CLAP_SAMPLE_RATE
        self.window = CLAP_WINDOW
        self.hop = max(1, round(hop_seconds * CLAP_SAMPLE_RATE))
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.tower = load_clap_tower(checkpoint, trust_checkpoint=trust_checkpoint, map_location=self.device,
                                     audio_model=audio_model)
        self._identity = f"clap-{audio_model}-{file_fingerprint(checkpoint)}-hop{self.hop}"

    def windows(self, clip: torch.Tensor) -> torch.Tensor:
        """(T,) audio -> (W, window) windows: repeat-padded when short, hop-spaced when long."""
        length = clip.shape[-1]
        if length == 0:
            raise ValueError("cannot embed an empty clip")
        if length <= self.window:
            repeated = clip.repeat(self.window // length)
            return torch.nn.functional.pad(repeated, (0, self.window - repeated.shape[-1]))[None]
        starts = list(range(0, length - self.window + 1, self.hop))
        if starts[-1] != length - self.window:
            starts.append(length - self.window)
        return torch.stack([clip[s:s + self.window] for s in starts])

    @torch.no_grad()
    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        """(N, T) mono audio at 48 kHz -> (N, 512) unit-norm float32 embeddings on the CPU."""
        audio = audio.reshape(audio.shape[0], -1) if audio.dim() == 3 else audio
        per_clip = [self.windows(clip.float().cpu()) for clip in audio]
        flat = torch.cat(per_clip)
        out = torch.cat([self.tower(flat[i:i + self.batch_size].to(self.device)).float().cpu()
                         for i in range(0, len(flat), self.batch_size)])
        means, start = [], 0
        for windows in per_clip:
            means.append(out[start:start + len(windows)].mean(dim=0))
            start += len(windows)
        return torch.nn.functional.normalize(torch.stack(means), dim=-1)

    def identity(self) -> str:
        """The checkpoint file's fingerprint and the window hop."""
        return self._identity
