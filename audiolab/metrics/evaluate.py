"""FAD, KID and diversity on embeddings, for a run's validation outputs or for any two folders, offline.

Two sets of clips are embedded (the reference: validation targets or a folder; the candidates: the
model's outputs or another folder) with the configured embedder, and the metrics compare the two
embedding sets (`audiolab.metrics.distribution`). Embeddings are cached on disk under
`${paths.cache}/embeddings`, keyed by what produced them (a file's path, size and mtime, or a run's
checkpoint and validation crops) and by the embedder's identity (its weights and parameters), so
evaluating again, or evaluating many runs against the same validation set, only embeds what is new.

Metric names are `eval/<embedder>/<metric>`: `fad`, `fad_inf`, `kid` (with `kid_std`), and
`diversity` for the candidates beside `diversity_ref` for the reference.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF

from audiolab.metrics.embedders import ClapEmbedder, Embedder, LogMelEmbedder

log = logging.getLogger(__name__)


def build_embedder(metrics: Any, device: torch.device | str = "cpu") -> Embedder | None:
    """The configured embedder; None (after one line saying which key to set) when CLAP has no checkpoint."""
    if metrics.embedder == "logmel":
        return LogMelEmbedder(**dict(metrics.logmel), device=device)
    checkpoint = metrics.clap.checkpoint
    if not checkpoint:
        log.warning("metrics: %s skipped: no CLAP checkpoint; set metrics.clap.checkpoint=/path/to/"
                    "music_audioset_epoch_15_esc_90.14.pt (or AUDIOLAB_CLAP_CHECKPOINT), or use "
                    "metrics.embedder=logmel", ", ".join(metrics.eval) or "embedding metrics")
        return None
    return ClapEmbedder(checkpoint, trust_checkpoint=bool(metrics.clap.trust_checkpoint),
                        hop_seconds=float(metrics.clap.hop_seconds), batch_size=int(metrics.batch_size), device=device,
                        audio_model=str(metrics.clap.audio_model))


def compute_metrics(names: Sequence[str], reference: np.ndarray, candidates: np.ndarray, embedder: str,
                    kid_subsets: int = 100, kid_subset_size: int = 1000) -> dict[str, float]:
    """The requested metrics between two embedding sets, keyed `eval/<embedder>/<name>`."""
    # Here, not at the top: scipy.linalg costs 0.26 s of start-up in every run, and few runs evaluate.
    from audiolab.metrics.distribution import fad, fad_infinity, kid, mean_pairwise_cosine_distance

    out: dict[str, float] = {}
    if "fad" in names:
        out["fad"] = fad(reference, candidates)
    if "fad_inf" in names:
        out["fad_inf"] = fad_infinity(reference, candidates)["fad_inf"]
    if "kid" in names:
        out["kid"], out["kid_std"] = kid(reference, candidates, n_subsets=kid_subsets, subset_size=kid_subset_size)
    if "diversity" in names:
        out["diversity"] = mean_pairwise_cosine_distance(candidates)
        out["diversity_ref"] = mean_pairwise_cosine_distance(reference)
    return {f"eval/{embedder}/{k}": float(v) for k, v in out.items()}


class EmbeddingCache:
    """Embeddings on disk, one .npy per key; a key names the audio's origin and the embedder's identity."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.hits = self.misses = 0

    @staticmethod
    def key(*parts: Any) -> str:
        """A stable digest of the parts (JSON-encoded)."""
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def get_or_make(self, key: str, make: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for `key`, or make, store and return it."""
        path = self.directory / f"{key}.npy" if self.directory is not None else None
        if path is not None and path.is_file():
            self.hits += 1
            return np.load(path)
        self.misses += 1
        value = np.asarray(make(), dtype=np.float32)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_suffix(f".tmp-{id(value)}.npy")
            np.save(staging, value)
            staging.replace(path)  # atomic: a concurrent reader never sees half a file
        return value


def embed_batch(embedder: Embedder, audio: torch.Tensor, sample_rate: int, batch_size: int = 8) -> np.ndarray:
    """Embed (N, T) or (N, C, T) audio at `sample_rate` (channels are averaged): (N, D) float32."""
    if audio.dim() == 3:
        audio = audio.mean(dim=1)
    audio = audio.float()
    if sample_rate != embedder.sample_rate:
        audio = AF.resample(audio, sample_rate, embedder.sample_rate)
    parts = [embedder.embed(audio[i:i + batch_size]) for i in range(0, len(audio), batch_size)]
    return torch.cat(parts).cpu().numpy().astype(np.float32)


def read_mono(path: Path) -> tuple[torch.Tensor, int]:
    """A whole audio file as a mono float32 tensor and its sample rate."""
    import soundfile as sf

    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(audio.mean(axis=1)), rate


def embed_folder(embedder: Embedder, folder: Path, cache: EmbeddingCache) -> tuple[np.ndarray, list[str]]:
    """One embedding per readable audio file under `folder` (cached per file); unreadable files are skipped."""
    from audiolab.data.folder import scan_folder

    scan = scan_folder(folder)
    rows, names = [], []
    for source in scan.files:
        key = cache.key("file", str(source.path.resolve()), source.size, source.mtime_ns, embedder.identity())

        def make(source=source) -> np.ndarray:
            audio, rate = read_mono(source.path)
            return embed_batch(embedder, audio[None], rate)[0]

        try:
            rows.append(cache.get_or_make(key, make))
            names.append(source.rel)
        except Exception as err:  # noqa: BLE001 - one bad file must not stop an evaluation
            log.warning("evaluate: skipped %s: %s", source.rel, err)
    if len(rows) < 2:
        raise ValueError(f"{folder}: need at least 2 readable audio files to compare, found {len(rows)}")
    return np.stack(rows), names


def validation_key(data_info: dict[str, Any], segment: int, n_crops: int, task: Any) -> list[Any]:
    """What fixes a run's validation targets: the dataset cache, the crops and the task's settings."""
    return ["val-targets", data_info.get("cache"), segment, n_crops, task]


def evaluate_validation(metrics: Any, targets: torch.Tensor, outputs: torch.Tensor, sample_rate: int,
                        device: torch.device | str, cache: EmbeddingCache, reference_key: list[Any],
                        candidate_key: list[Any] | None = None) -> dict[str, float] | None:
    """Embed validation targets (reference) and model outputs (candidates) and compute `metrics.eval`."""
    embedder = build_embedder(metrics, device)
    if embedder is None:
        return None
    batch = int(metrics.batch_size)
    reference = cache.get_or_make(cache.key(*reference_key, embedder.identity()),
                                  lambda: embed_batch(embedder, targets, sample_rate, batch))
    make_candidates = lambda: embed_batch(embedder, outputs, sample_rate, batch)  # noqa: E731
    candidates = (cache.get_or_make(cache.key(*candidate_key, embedder.identity()), make_candidates)
                  if candidate_key is not None else make_candidates())
    return compute_metrics(list(metrics.eval), reference, candidates, embedder.name,
                           int(metrics.kid.n_subsets), int(metrics.kid.subset_size))


def evaluate_folders(metrics: Any, reference: Path, candidates: Path, cache: EmbeddingCache,
                     device: torch.device | str = "cpu") -> dict[str, float] | None:
    """The metrics between the audio files of two folders (one embedding per file)."""
    embedder = build_embedder(metrics, device)
    if embedder is None:
        return None
    ref, _ = embed_folder(embedder, Path(reference), cache)
    cand, _ = embed_folder(embedder, Path(candidates), cache)
    return compute_metrics(list(metrics.eval), ref, cand, embedder.name, int(metrics.kid.n_subsets),
                           int(metrics.kid.subset_size))
