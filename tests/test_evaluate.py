"""Embedding metrics end to end: at the end of a training run, and `audiolab evaluate` on runs and folders."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiolab.cli import main
from audiolab.config import ConfigError
from audiolab.metrics.clap import ClapAudioTower
from audiolab.runs.record import read_metrics

EVAL = "metrics.eval=[fad,kid,diversity]"
SR = 44100


def _clip(seed: int, seconds: float = 0.5, noise_db: float | None = None) -> np.ndarray:
    """A decaying harmonic tone with a random pitch; optionally with white noise at `noise_db` below it."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = rng.uniform(110, 440)
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 8)) * np.exp(-3 * t)
    x = 0.3 * x / np.abs(x).max()
    if noise_db is not None:
        x = x + rng.standard_normal(len(t)) * np.sqrt(np.mean(x ** 2)) * 10 ** (noise_db / 20)
    return x.astype(np.float32)


def _folder(root: Path, seeds: range, noise_db: float | None = None) -> Path:
    root.mkdir(parents=True)
    for seed in seeds:
        sf.write(root / f"clip{seed:03d}.wav", _clip(seed, noise_db=noise_db), SR, subtype="FLOAT")
    return root


@pytest.fixture(scope="session")
def clap_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised CLAP audio tower saved in the released checkpoint's layout (module. prefix).

    HTSAT-tiny (the tower of LAION's 630k checkpoints) runs the same code as the music model's HTSAT-base at
    about half the cost; tests/test_clap.py builds the base one.
    """
    torch.manual_seed(0)
    tower = ClapAudioTower("HTSAT-tiny")
    path = tmp_path_factory.mktemp("clap") / "music_audioset_random.pt"
    torch.save({"epoch": 15, "state_dict": {f"module.{k}": v for k, v in tower.state_dict().items()}}, path)
    return path


def test_training_run_records_logmel_metrics(run_tiny) -> None:
    run_dir, result = run_tiny(EVAL, "metrics.embedder=logmel")
    info = json.loads((run_dir / "run.json").read_text())
    keys = {"eval/logmel/fad", "eval/logmel/kid", "eval/logmel/kid_std", "eval/logmel/diversity",
            "eval/logmel/diversity_ref"}
    assert set(info["eval"]) == keys and keys <= set(info["final"])
    assert info["eval"]["eval/logmel/fad"] > 0 and 0 < info["eval"]["eval/logmel/diversity_ref"] <= 2
    last = read_metrics(run_dir)[-1]
    assert last["step"] == 3 and keys <= set(last)
    assert "eval/logmel/fad" in (run_dir / "train.log").read_text()


def test_training_run_records_clap_metrics_from_a_checkpoint(run_tiny, clap_checkpoint: Path) -> None:
    run_dir, _ = run_tiny(EVAL, "metrics.embedder=clap", f"metrics.clap.checkpoint={clap_checkpoint}",
                          "metrics.clap.audio_model=HTSAT-tiny",
                          "data.val_max_crops=3", "metrics.kid.subset_size=3")
    info = json.loads((run_dir / "run.json").read_text())
    assert {"eval/clap/fad", "eval/clap/kid", "eval/clap/diversity"} <= set(info["eval"])
    assert all(math.isfinite(v) for v in info["eval"].values())


def test_no_clap_checkpoint_skips_the_metrics_with_one_line(run_tiny, caplog, monkeypatch) -> None:
    monkeypatch.delenv("AUDIOLAB_CLAP_CHECKPOINT", raising=False)
    with caplog.at_level(logging.WARNING):
        run_dir, result = run_tiny(EVAL, "metrics.embedder=clap")
    assert result.status == "completed" and "eval" not in json.loads((run_dir / "run.json").read_text())
    lines = [r.getMessage() for r in caplog.records if "metrics.clap.checkpoint" in r.getMessage()]
    assert len(lines) == 1 and "fad, kid, diversity skipped" in lines[0]
    assert math.isfinite(result.best_value)  # the fixed spectral validation ran regardless


def test_bad_metric_settings_fail_before_training(run_tiny, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="metrics.eval"):
        run_tiny("metrics.eval=[fad,frechet]")
    with pytest.raises(ConfigError, match=r"metrics.clap.checkpoint='.*nowhere.pt': no such file"):
        run_tiny(EVAL, f"metrics.clap.checkpoint={tmp_path / 'nowhere.pt'}")


def test_evaluate_two_folders_noisy_is_farther_than_clean(tmp_path: Path, capsys) -> None:
    clean_a = _folder(tmp_path / "clean_a", range(0, 16))
    clean_b = _folder(tmp_path / "clean_b", range(100, 116))
    noisy = _folder(tmp_path / "noisy", range(100, 116), noise_db=-20.0)
    common = ["metrics.embedder=logmel", f"paths.cache={tmp_path / 'cache'}", "metrics.kid.subset_size=16"]

    def fad(candidates: Path) -> float:
        assert main(["evaluate", "--reference", str(clean_a), "--candidates", str(candidates), *common]) == 0
        out = capsys.readouterr().out
        return float(next(line.split()[-1] for line in out.splitlines() if "eval/logmel/fad " in line + " "))

    clean, damaged = fad(clean_b), fad(noisy)
    assert damaged > 2 * clean > 0
    cached = len(list((tmp_path / "cache" / "embeddings").glob("*.npy")))
    assert cached == 48  # one embedding per file
    assert fad(noisy) == pytest.approx(damaged) and len(list((tmp_path / "cache" / "embeddings").glob("*.npy"))) == 48
    assert main(["evaluate", "--reference", str(clean_a), *common]) == 2
    assert "give a run" in capsys.readouterr().err


def test_evaluate_a_finished_run_after_the_fact(run_tiny, outputs: Path, capsys, cache_dir: Path) -> None:
    run_dir, _ = run_tiny("trainer.max_steps=2", "trainer.val_every=1")
    args = ["evaluate", run_dir.name, "--outputs", str(outputs), "metrics.embedder=logmel"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert f"{run_dir.name} (best.pt):" in first and "eval/logmel/fad" in first
    info = json.loads((run_dir / "run.json").read_text())
    assert set(info["evaluations"]) == {"logmel:best"} and info["evaluations"]["logmel:best"]["step"] == 2
    assert "eval/logmel/kid" in info["eval"]
    assert "eval/logmel/fad" in read_metrics(run_dir)[-1]
    embeddings = sorted((cache_dir / "embeddings").glob("*.npy"))
    assert main(args) == 0  # again: both embedding sets come from the cache
    assert capsys.readouterr().out == first and sorted((cache_dir / "embeddings").glob("*.npy")) == embeddings
    folder = _folder(run_dir.parent / "refs", range(8))
    assert main([*args, "--reference", str(folder), "--checkpoint", "last"]) == 0
    info = json.loads((run_dir / "run.json").read_text())
    assert info["evaluations"]["logmel:last"]["reference"] == str(folder)


def test_a_broken_clap_checkpoint_is_reported_without_failing_the_run(run_tiny, tmp_path: Path) -> None:
    broken = tmp_path / "broken.pt"
    torch.save({"state_dict": {"module.audio_projection.0.weight": torch.zeros(2, 2)}}, broken)
    run_dir, result = run_tiny(EVAL, f"metrics.clap.checkpoint={broken}", "metrics.clap.audio_model=HTSAT-tiny")
    info = json.loads((run_dir / "run.json").read_text())
    assert result.status == "completed" and info["status"] == "completed"
    assert "missing keys" in info["eval_error"] and "eval" not in info


def test_evaluate_folders_with_clap(tmp_path: Path, clap_checkpoint: Path, capsys) -> None:
    ref, cand = _folder(tmp_path / "ref", range(0, 4)), _folder(tmp_path / "cand", range(10, 14))
    args = ["evaluate", "--reference", str(ref), "--candidates", str(cand), "metrics.embedder=clap",
            f"metrics.clap.checkpoint={clap_checkpoint}", "metrics.clap.audio_model=HTSAT-tiny",
            f"paths.cache={tmp_path / 'cache'}", "metrics.kid.subset_size=4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "eval/clap/fad" in out and "eval/clap/kid" in out and "eval/clap/diversity_ref" in out
    assert main([*args[:5], f"metrics.clap.checkpoint={tmp_path / 'ref' / 'clip000.wav'}",
                 f"paths.cache={tmp_path / 'cache'}"]) == 2  # not a checkpoint: a clear error, exit 2
    err = capsys.readouterr().err
    assert "CLAP checkpoint" in err and "clip000.wav could not be read" in err
