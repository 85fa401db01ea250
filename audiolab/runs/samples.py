"""Audio samples and spectrogram comparisons written at each validation."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs write PNGs, never open windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402


def log_spectrogram_db(audio: np.ndarray, n_fft: int = 2048) -> np.ndarray:
    """Magnitude spectrogram in dB (freq, frames) for plotting, computed in fp32."""
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32)).reshape(-1)
    spec = torch.stft(x, n_fft, n_fft // 4, window=torch.hann_window(n_fft), return_complex=True).abs()
    return (20 * torch.log10(spec.clamp_min(1e-5))).numpy()


def write_samples(directory: Path, step: int, clips: dict[str, list[np.ndarray]], sample_rate: int,
                  notes: dict[str, list[str]] | None = None, run_name: str | None = None
                  ) -> tuple[dict[str, Path], Path]:
    """Write WAVs for each role (input/output/target) of each clip and one PNG comparing spectrograms.

    `clips` maps a role name to one (channels, T) array per clip; `notes` optionally adds a text per
    role and clip to the panel titles (the discriminator's verdict in phase 2). Returns the WAV paths
    by `clip{i}/{role}` and the PNG path.
    """
    notes = notes or {}
    directory.mkdir(parents=True, exist_ok=True)
    roles = list(clips)
    n_clips = len(clips[roles[0]])
    wavs: dict[str, Path] = {}
    fig, axes = plt.subplots(n_clips, len(roles), figsize=(4 * len(roles), 2.8 * n_clips), squeeze=False,
                             sharex=True, sharey=True)
    for i in range(n_clips):
        for j, role in enumerate(roles):
            audio = np.asarray(clips[role][i], dtype=np.float32)
            path = directory / f"step{step:07d}_clip{i}_{role}.wav"
            sf.write(path, audio.T, sample_rate, subtype="FLOAT")
            wavs[f"clip{i}/{role}"] = path
            db = log_spectrogram_db(audio)
            seconds = audio.shape[-1] / sample_rate
            axes[i][j].imshow(db, origin="lower", aspect="auto", vmin=-100, vmax=db.max(), cmap="magma",
                              extent=(0, seconds, 0, sample_rate / 2000))
            note = f" ({notes[role][i]})" if role in notes else ""
            axes[i][j].set_title(f"clip {i}: {role}{note}", fontsize=9)
            if j == 0:
                axes[i][j].set_ylabel("kHz")
        axes[i][-1].set_xlabel("s")
    fig.suptitle(f"{run_name} · step {step}" if run_name else f"step {step}")
    fig.tight_layout()
    png = directory / f"step{step:07d}_spectrograms.png"
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return wavs, png
