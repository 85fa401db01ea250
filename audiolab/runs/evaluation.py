"""`audiolab evaluate`: embedding metrics for a finished run, or for any two folders, after the fact."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from audiolab.config.overrides import apply_overrides
from audiolab.config.schema import EVAL_METRICS, MetricsConfig, validate_metrics
from audiolab.metrics.evaluate import (
    EmbeddingCache,
    build_embedder,
    compute_metrics,
    embed_batch,
    embed_folder,
    evaluate_folders,
    validation_key,
)
from audiolab.runs.record import RunRecord
from audiolab.runs.session import load_resolved_config
from audiolab.train.checkpoint import load_checkpoint
from audiolab.train.device import autocast_dtype, pick_device
from audiolab.train.state import checkpoint_step, inference_weights
from audiolab.train.trainer import build_data, build_model
from audiolab.train.validate import Validator

log = logging.getLogger("audiolab")


def _metrics_config(cfg: DictConfig) -> DictConfig:
    """The run's metrics section typed by its schema, with every metric when none was asked for at train time."""
    metrics = OmegaConf.merge(OmegaConf.structured(MetricsConfig), cfg.get("metrics") or {})
    if not metrics.eval:
        metrics.eval = list(EVAL_METRICS[:3])  # fad, kid, diversity
    validate_metrics(metrics)
    return metrics


def run_outputs(cfg: DictConfig, checkpoint: dict[str, Any], device: torch.device) -> tuple[Any, torch.Tensor, Any]:
    """Rebuild the run's validation set and model, and return (validator, outputs, data) for the checkpoint."""
    data = build_data(cfg.data)
    task = instantiate(cfg.task, sample_rate=data.sample_rate)
    validator = Validator(data, task, device, n_samples=0)
    model = build_model(cfg.model, device)
    model.load_state_dict(inference_weights(checkpoint))
    _, outputs = validator.run(model, autocast_dtype(device, cfg.trainer.precision))
    return validator, outputs, data


def evaluate_run(run_dir: Path, overrides: list[str] | None = None, reference: Path | None = None,
                 candidates: Path | None = None, checkpoint: str = "best") -> dict[str, float] | None:
    """Embedding metrics of a run's `checkpoint` (best or last) outputs vs its validation targets, or a folder.

    The results go where the end of a training run puts them: metrics.jsonl (at the checkpoint's step),
    run.json (`eval`) and, when the run has one, its W&B summary.
    """
    cfg = apply_overrides(load_resolved_config(run_dir), list(overrides or []))
    metrics = _metrics_config(cfg)
    device = pick_device(cfg.trainer.device)
    cache = EmbeddingCache(Path(cfg.paths.cache) / "embeddings")
    embedder = build_embedder(metrics, device)
    if embedder is None:
        return None
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no checkpoints/{checkpoint}.pt to evaluate")
    saved = load_checkpoint(path, map_location="cpu", trust=bool(cfg.trainer.get("trust_checkpoint")))
    step = checkpoint_step(saved)
    batch = int(metrics.batch_size)
    if reference is None or candidates is None:
        validator, outputs, data = run_outputs(cfg, saved, device)
        key = validation_key(data.info, data.validation_segment, len(validator.targets),
                             OmegaConf.to_container(cfg.task))
    if reference is not None:
        ref, _ = embed_folder(embedder, reference, cache)
    else:
        ref = cache.get_or_make(cache.key(*key, embedder.identity()),
                                lambda: embed_batch(embedder, validator.targets, data.sample_rate, batch))
    if candidates is not None:
        cand, _ = embed_folder(embedder, candidates, cache)
    else:
        stat = path.stat()
        cand = cache.get_or_make(cache.key("run-outputs", str(path.resolve()), stat.st_size, stat.st_mtime_ns, *key,
                                           embedder.identity()),
                                 lambda: embed_batch(embedder, outputs, data.sample_rate, batch))
    results = compute_metrics(list(metrics.eval), ref, cand, embedder.name, int(metrics.kid.n_subsets),
                              int(metrics.kid.subset_size))
    record = RunRecord(run_dir)
    record.log_metrics(step, results)
    evaluations = dict(record.data.get("evaluations") or {})
    evaluations[f"{embedder.name}:{checkpoint}"] = {
        "step": step, "checkpoint": checkpoint, "reference": str(reference) if reference else "validation targets",
        "candidates": str(candidates) if candidates else f"outputs of {checkpoint}.pt", **results}
    record.update(eval={**(record.data.get("eval") or {}), **results}, evaluations=evaluations)
    _update_wandb_summary(cfg, run_dir, record, results)
    return results


def _update_wandb_summary(cfg: DictConfig, run_dir: Path, record: RunRecord, results: dict[str, float]) -> None:
    """Reopen the run's W&B run (same id) just to add the results to its summary."""
    run_id = record.data.get("wandb_id")
    if not run_id or not cfg.get("logger"):
        return
    tracker = instantiate(cfg.logger)
    tracker.start(run_dir, name=run_dir.name, group=record.data.get("study") or "single",
                  config=OmegaConf.to_container(cfg), run_id=run_id)
    tracker.summary(results)
    tracker.finish(record.data.get("status") or "completed")


def evaluate_paths(reference: Path, candidates: Path, overrides: list[str],
                   config_dir: Path) -> dict[str, float] | None:
    """The metrics between two folders, with the metrics config composed from conf/ plus overrides."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir.absolute()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return evaluate_folders(_metrics_config(cfg), reference, candidates,
                            EmbeddingCache(Path(cfg.paths.cache) / "embeddings"), pick_device(cfg.trainer.device))
