"""loss=cdpam and metrics.val_cdpam: the frozen CDPAM wrapper against the package's own code, and through runs.

Needs the optional `cdpam` extra (installed by `make install`); skipped without it. CDPAM costs about
0.2 TFLOP per second of 22.05 kHz audio per forward pass, so the clips here are short.
"""

from __future__ import annotations

import functools
import json
import math
import pickle
import socket
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from audiolab.config.schema import ConfigError, validate_config, validate_metrics
from audiolab.losses import cdpam as cdpam_module
from audiolab.losses.cdpam import CDPAM_SAMPLE_RATE, CdpamLoss, cdpam_missing, load_cdpam_state, weights_path
from conftest import compose_config

pytestmark = pytest.mark.skipif(cdpam_missing() is not None, reason=f"{cdpam_missing()}")

N = 2048  # samples at 22.05 kHz per test clip (93 ms)


def _clips(n: int = N, rate: int = CDPAM_SAMPLE_RATE) -> torch.Tensor:
    """Two decaying harmonic tones in [-1, 1], (2, n)."""
    t = torch.arange(n) / rate
    tone = sum(0.2 / k * torch.sin(2 * math.pi * 220 * k * t) for k in range(1, 6)) * torch.exp(-3 * t)
    return torch.stack([tone, 0.7 * torch.roll(tone, 100)])


def _noise(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def loss() -> CdpamLoss:
    return CdpamLoss(sample_rate=CDPAM_SAMPLE_RATE)


def _unsafe_load(path: Path) -> dict:
    """The package's file through full unpickling: an independent reference for the tests only (trusted here)."""
    return torch.load(path, map_location="cpu", weights_only=False)


# --- weights -------------------------------------------------------------------------------------------


def test_weights_load_with_weights_only_and_equal_the_unrestricted_load(monkeypatch: pytest.MonkeyPatch) -> None:
    path = weights_path()
    # Why there is a rewrite at all: torch's weights_only unpickler refuses the Python 2 file as it is.
    with pytest.raises(pickle.UnpicklingError, match="Unsupported operand 73"):
        torch.load(path, map_location="cpu", weights_only=True)

    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    state = load_cdpam_state()
    monkeypatch.undo()
    assert calls and all(w is True for w in calls), calls  # never anything but weights_only=True

    reference = _unsafe_load(path)["state"]
    assert list(state) == list(reference)
    for key, value in reference.items():
        assert torch.equal(state[key], value), key
    assert sum(v.numel() for v in state.values()) > 26_000_000  # the real 16-layer encoder, not a stub


def test_the_rewrite_changes_only_integer_opcodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A protocol-2 pickle with Python 2's text INT opcodes reads back equal after the rewrite, now via weights_only."""
    import io

    from torch import _weights_only_unpickler

    # [2**40 + 7, -(2**50), True, 3], as Python 2's pickler wrote it: EMPTY_LIST, BINPUT, MARK, INT x3 (the
    # last a boolean), BININT1, APPENDS, STOP; followed by bytes that are not a pickle (a file's raw storages).
    raw = b"\x80\x02]q\x00(I1099511627783\nI-1125899906842624\nI01\nK\x03e." + b"raw storages"
    expected = [2**40 + 7, -(2**50), True, 3]
    assert pickle.loads(raw) == expected
    with pytest.raises(pickle.UnpicklingError, match="Unsupported operand 73"):
        _weights_only_unpickler.load(io.BytesIO(raw), encoding="utf-8")
    monkeypatch.setattr(cdpam_module, "_LEGACY_PICKLES", 1)  # one pickle here, not a legacy torch file's five
    out = cdpam_module._reencode_text_ints(raw)
    assert out.endswith(b".raw storages") and b"I" not in out[: -len(b"raw storages")]
    assert pickle.loads(out) == expected
    assert _weights_only_unpickler.load(io.BytesIO(out), encoding="utf-8") == expected


# --- the distance ----------------------------------------------------------------------------------------


def test_distance_equals_the_packages_own_forward(loss: CdpamLoss, monkeypatch: pytest.MonkeyPatch) -> None:
    """cdpam.CDPAM(dev='cpu').forward on 22.05 kHz int16-range input gives the wrapper's distance."""
    import cdpam

    # The package's class loads with a bare torch.load: weights_only=True on torch >= 2.6, which refuses the file.
    with pytest.raises(pickle.UnpicklingError):
        cdpam.CDPAM(dev="cpu")
    monkeypatch.setattr(torch, "load", functools.partial(torch.load, weights_only=False))
    package = cdpam.CDPAM(dev="cpu")
    monkeypatch.undo()

    clean = _clips()
    noisy = clean + 0.003 * _noise(clean.shape)
    expected = package.forward(clean * 32768, noisy * 32768).detach()
    got = loss.distance(noisy, clean)
    assert got.shape == (2,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss(noisy, clean), expected.mean(), rtol=1e-5, atol=1e-7)

    # At another rate, stereo: mono mix, resample to 22050, int16 scale, then the same network.
    import torchaudio.functional as AF

    at_44k = CdpamLoss(sample_rate=44100)
    stereo_clean = torch.stack([_clips(N, 44100), 0.5 * _clips(N, 44100)], dim=1)  # (2, 2, 2048)
    stereo_noisy = stereo_clean + 0.003 * _noise(stereo_clean.shape, seed=1)
    prepared = [AF.resample(x.mean(dim=1), 44100, 22050) * 32768 for x in (stereo_clean, stereo_noisy)]
    expected = package.forward(*prepared).detach()
    torch.testing.assert_close(at_44k.distance(stereo_noisy, stereo_clean), expected, rtol=1e-5, atol=1e-7)


def test_identical_audio_is_zero_and_more_noise_is_farther(loss: CdpamLoss) -> None:
    clean = _clips()
    noise = _noise(clean.shape)
    assert float(loss(clean, clean)) == pytest.approx(0.0, abs=1e-6)
    d = [loss.distance(clean + a * noise, clean) for a in (0.001, 0.003, 0.01)]
    for lower, higher in zip(d, d[1:], strict=False):
        assert torch.all(higher > lower), d
    assert torch.all(d[0] > 1e-3), d


def test_gradient_reaches_the_output_and_not_the_weights(loss: CdpamLoss, monkeypatch: pytest.MonkeyPatch) -> None:
    clean = _clips(N // 2).unsqueeze(1)  # (B, 1, T), what the training loop passes
    output = (clean + 0.003 * _noise(clean.shape)).requires_grad_()
    value = loss(output, clean)
    value.backward()
    assert output.grad is not None and torch.isfinite(output.grad).all() and output.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in loss.parameters())

    # Activation checkpointing: same value and gradient.
    monkeypatch.setattr(loss, "checkpointing", True)
    again = output.detach().clone().requires_grad_()
    value_ckpt = loss(again, clean)
    value_ckpt.backward()
    torch.testing.assert_close(value_ckpt, value.detach())
    torch.testing.assert_close(again.grad, output.grad)


def test_stays_in_eval_mode_fp32_and_moves_with_to(loss: CdpamLoss) -> None:
    from audiolab.losses.composite import WeightedLoss

    clean = _clips()
    noisy = clean + 0.003 * _noise(clean.shape)
    before = loss(noisy, clean)
    composite = WeightedLoss({"cdpam": loss}, {"cdpam": 1.0}).to("cpu").train()
    assert loss.training and not any(m.training for m in (*loss.encoder.modules(), *loss.dist.modules()))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the term turns autocast off: BatchNorm running stats, fp32
        total, terms = composite(noisy, clean)
        direct = loss(noisy, clean)
    assert direct.dtype == torch.float32
    torch.testing.assert_close(direct, before)
    torch.testing.assert_close(terms["cdpam"], before)
    loss.eval()


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("cdpam", "cdpam.models", "cdpam.cdpam"):
        monkeypatch.setitem(sys.modules, name, None)  # `import cdpam` now raises ImportError
    with pytest.raises(ImportError, match=r"--extra cdpam.*pip install 'audiolab\[cdpam\]'"):
        CdpamLoss()
    assert "cdpam not installed" in cdpam_missing()
    with pytest.raises(ConfigError, match=r"metrics\.val_cdpam=true: cdpam not installed.*--extra cdpam"):
        validate_metrics(OmegaConf.create({"val_cdpam": True}))


# --- through the config and real runs ----------------------------------------------------------------


def test_loss_cdpam_config_validates_and_builds() -> None:
    from audiolab.losses.composite import build_loss

    cfg = compose_config(["loss=cdpam", "metrics.val_cdpam=true"])
    validate_config(cfg)
    term = OmegaConf.to_container(cfg.loss.terms.cdpam, resolve=True)
    assert term == {"_target_": "audiolab.losses.cdpam.CdpamLoss", "weight": 1.0, "sample_rate": 44100,
                    "resample": True, "checkpointing": False}
    assert compose_config([]).metrics.val_cdpam is False
    built = build_loss(cfg.loss)
    assert isinstance(built.terms["cdpam"], CdpamLoss) and built.weights == {"cdpam": 1.0}
    assert built.terms["cdpam"].sample_rate == 44100
    with pytest.raises(Exception, match="val_cdpam"):
        compose_config(["metrics.val_cdpam=sometimes"])  # typed bool by MetricsConfig


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_training_with_loss_cdpam_runs_offline(run_tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):
        raise OSError("network use in an offline test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    run_dir, result = run_tiny("loss=cdpam")
    assert result.status == "completed"
    train = [line["train/cdpam"] for line in _lines(run_dir) if "train/cdpam" in line]
    assert len(train) == 3 and all(math.isfinite(v) and v > 0 for v in train), train
    assert not any("val/cdpam" in line for line in _lines(run_dir))  # metrics.val_cdpam is off by default


def test_val_cdpam_is_logged(run_tiny) -> None:
    run_dir, result = run_tiny("metrics.val_cdpam=true")
    assert result.status == "completed"
    val = [line for line in _lines(run_dir) if "val/spec_loss" in line]
    assert val and all(math.isfinite(line["val/cdpam"]) and line["val/cdpam"] > 0 for line in val), val


def test_val_cdpam_is_the_crop_weighted_mean_and_deterministic(tiny_overrides: list[str]) -> None:
    """Batches of 3 over 4 crops (3 + 1): the figure is the mean over crops, the same for the same outputs."""
    from audiolab.train.trainer import build_training

    cfg = compose_config([*tiny_overrides, "metrics.val_cdpam=true", "data.batch_size=3"])
    training = build_training(cfg)
    validator = training.validator
    assert len(validator.targets) == 4 and not validator.cdpam.training
    metrics, outputs = validator.run(training.state.eval_model, training.amp)
    with torch.no_grad():
        per_crop = torch.cat([validator.cdpam.distance(outputs[i:i + 1], validator.targets[i:i + 1])
                              for i in range(len(outputs))])
    assert metrics["val/cdpam"] == pytest.approx(float(per_crop.mean()), rel=1e-5)
    assert validator.mean_cdpam(outputs) == metrics["val/cdpam"]  # bitwise: same batches, same order


def test_resample_false_feeds_the_audio_at_its_own_rate() -> None:
    audio = torch.randn(1, 1, 4410)
    assert CdpamLoss(sample_rate=44100, resample=False).prepare(audio).shape[-1] == 4410
    assert CdpamLoss(sample_rate=44100).prepare(audio).shape[-1] == 2205
