"""`audiolab apply`: a trained run over real files, in cross-faded windows, with bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiolab.inference.apply import Applier, Windows, apply_run
from audiolab.inference.run_model import load_run_model
from conftest import train_run


@pytest.fixture(scope="module")
def restore_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A tiny trained restoration run (debug=fast ConvNeXt-1D: segment 4096, hop 256 -> 16 windows per 50k)."""
    return train_run(tmp_path_factory.mktemp("apply") / "outputs", cache_dir)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A tiny trained autoencoder run (debug=fast PQMF VAE)."""
    return train_run(tmp_path_factory.mktemp("apply_vae") / "outputs", cache_dir, "experiment=rave_v2_small",
                  "data.segment=8192")


def _noise(seconds: float, rate: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)[:, None]
    return (tone + 0.05 * rng.standard_normal((len(t), channels))).astype(np.float32)


def _identity(run_dir: Path):
    """The run's model with its last layer zeroed: a residual model that returns its input exactly."""
    run = load_run_model(run_dir, device="cpu")
    for p in run.model.up[0].parameters():
        torch.nn.init.zeros_(p)
    x = torch.randn(1, 1, 4096)
    assert torch.equal(run.model(x), x)
    return run


def test_an_identity_model_gives_every_file_back_across_the_window_seams(restore_run: Path, tmp_path: Path) -> None:
    run = _identity(restore_run)
    w = Windows(run.segment, run.hop)
    assert w.overlap > 0 and w.step < run.segment
    rate = run.sample_rate
    length = 5 * w.step + 1234  # several seams and a ragged end
    sources = {"stereo.wav": _noise(length / rate, rate, 2), "mono.wav": _noise(length / rate, rate, 1, seed=1)}
    for name, audio in sources.items():
        sf.write(tmp_path / name, audio, rate, subtype="FLOAT")
    outcomes = apply_run(run, [tmp_path / n for n in sources], tmp_path / "out", progress=False)
    assert [o.error for o in outcomes] == [None, None]
    for name, audio in sources.items():
        back, back_rate = sf.read(tmp_path / "out" / name, dtype="float32", always_2d=True)
        assert back_rate == rate and back.shape == audio.shape
        assert np.abs(back - audio).max() < 1e-5
        seams = [i * w.step + j for i in range(1, 5) for j in range(w.overlap)]
        assert np.abs(back[seams] - audio[seams]).max() < 1e-5


def test_the_crossfade_weights_are_complementary() -> None:
    w = Windows(4096, 256)
    assert np.allclose(w.fade_in + w.fade_in[::-1], 1.0, atol=1e-6)  # sin^2 + cos^2: symmetric and complementary
    assert w.fade_in[0] < 0.01 and w.fade_in[-1] > 0.99


def test_apply_restores_a_folder_of_mixed_rates_and_channels_and_names_the_bad_files(
        restore_run: Path, tmp_path: Path, cli_env: dict[str, str]) -> None:
    data = tmp_path / "takes"
    (data / "sub").mkdir(parents=True)
    sf.write(data / "stereo48k.wav", _noise(1.3, 48000, 2), 48000, subtype="PCM_16")
    sf.write(data / "sub" / "mono22k.flac", _noise(0.7, 22050, 1), 22050)
    sf.write(data / "song.mp3", _noise(1.0, 44100, 1)[:, 0], 44100, format="MP3")
    sf.write(data / "quad.wav", _noise(0.5, 44100, 4), 44100)  # a mono model takes each channel alone
    (data / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    nan = _noise(0.5, 44100, 1)
    nan[1000] = np.nan
    sf.write(data / "nan.wav", nan, 44100, subtype="FLOAT")
    out = tmp_path / "restored"
    done = subprocess.run([sys.executable, "-m", "audiolab", "apply", str(restore_run), str(data), "-o", str(out),
                           "--no-progress"], cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # two inputs failed, the others were written
    assert "broken.wav: not readable as audio" in done.stderr
    assert "nan.wav: input sample 1000 is NaN" in done.stderr
    assert "on 4 of 6 files" in done.stdout
    for rel, src in [("stereo48k.wav", "stereo48k.wav"), ("sub/mono22k.flac", "sub/mono22k.flac"),
                     ("song.flac", "song.mp3"), ("quad.wav", "quad.wav")]:
        a, b = sf.info(str(data / src)), sf.info(str(out / rel))
        assert (b.samplerate, b.channels, b.frames) == (a.samplerate, a.channels, a.frames), rel
        y, _ = sf.read(out / rel, dtype="float32")
        assert np.isfinite(y).all() and np.abs(y).max() > 0.05
    assert not (out / "broken.wav").exists() and not (out / "nan.wav").exists()
    assert not list(out.rglob("*.tmp"))


def test_memory_does_not_grow_with_the_files_length(restore_run: Path, tmp_path: Path) -> None:
    run = load_run_model(restore_run, device="cpu")
    peaks = {}
    for seconds in (8, 64):
        src = tmp_path / f"long{seconds}.wav"
        sf.write(src, _noise(seconds, run.sample_rate, 1), run.sample_rate, subtype="FLOAT")
        tracemalloc.start()
        Applier(run, batch=8, progress=False).audio(src, tmp_path / "out" / src.name)
        peaks[seconds] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    file_bytes = 64 * run.sample_rate * 4
    assert peaks[64] < 0.1 * file_bytes, peaks  # a few blocks and windows, not the file
    assert peaks[64] < 1.5 * peaks[8] + (1 << 20), peaks


def test_the_best_checkpoint_uses_the_ema_weights_and_last_the_trained_ones(
        tmp_path: Path, cache_dir: Path) -> None:
    run_dir = train_run(tmp_path / "outputs", cache_dir, "trainer.ema_decay=0.5")
    best, last = load_run_model(run_dir, "best", "cpu"), load_run_model(run_dir, "last", "cpu")
    assert (best.weights, last.weights) == ("ema", "model")
    payload = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    trained = payload["model"]
    name = next(k for k in trained if k.endswith("weight"))
    assert torch.equal(last.model.state_dict()[name], trained[name])
    assert not torch.equal(best.model.state_dict()[name], trained[name])


def test_an_autoencoder_writes_latents_and_decodes_them_back_to_the_files_rate_and_length(
        vae_run: Path, tmp_path: Path) -> None:
    run = load_run_model(vae_run, device="cpu")
    assert run.task == "autoencode"
    src = tmp_path / "in" / "clip.wav"
    src.parent.mkdir()
    audio = _noise(1.1, 48000, 2)
    sf.write(src, audio, 48000, subtype="FLOAT")
    [enc] = apply_run(run, [src], tmp_path / "z", mode="latents", progress=False)
    assert enc.error is None
    z = np.load(tmp_path / "z" / "clip.npy")
    model_samples = -(-len(audio) * run.sample_rate // 48000)
    assert z.shape == (2, run.model.latent_size, -(-model_samples // run.hop))
    meta = json.loads((tmp_path / "z" / "clip.json").read_text())
    assert (meta["source_rate"], meta["source_frames"], meta["source_channels"]) == (48000, len(audio), 2)
    [dec] = apply_run(run, [tmp_path / "z"], tmp_path / "back", mode="decode", progress=False)
    assert dec.error is None
    back, rate = sf.read(tmp_path / "back" / "clip.wav", always_2d=True)
    assert rate == 48000 and back.shape == audio.shape and np.isfinite(back).all()
    [rec] = apply_run(run, [src], tmp_path / "rec", progress=False)
    assert rec.error is None and sf.info(str(tmp_path / "rec" / "clip.wav")).frames == len(audio)


def test_latents_need_an_autoencoder(restore_run: Path, tmp_path: Path) -> None:
    run = load_run_model(restore_run, device="cpu")
    with pytest.raises(ValueError, match="needs an autoencoder run"):
        apply_run(run, [tmp_path], tmp_path / "z", mode="latents", progress=False)


def test_apply_says_when_there_is_nothing_to_do(tmp_path: Path, cli_env: dict[str, str], restore_run: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "audiolab", "apply", str(restore_run), str(tmp_path), "-o",
                           str(tmp_path / "o"), "--checkpoint", "last"],
                          cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no audio files in" in done.stderr


def test_a_stereo_model_gets_mono_files_duplicated_and_refuses_four_channels(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from audiolab.inference.run_model import RunModel
    from audiolab.models.convnext1d import ConvNeXtUNet1d

    model = ConvNeXtUNet1d([2, 4, 8], [1, 1], [4, 4]).eval()  # residual, last layer zero: the identity
    cfg = OmegaConf.create({"data": {"sample_rate": 16000, "channels": 2, "segment": 1024},
                            "model": {"_target_": "audiolab.models.convnext1d.ConvNeXtUNet1d", "channels": [2, 4, 8]},
                            "task": {"_target_": "audiolab.tasks.restore.PitchShiftRestore"}})
    run = RunModel(tmp_path, cfg, model, "best", 1, "model", torch.device("cpu"), None)
    assert run.channels == 2
    files = {"mono.wav": _noise(0.4, 16000, 1), "stereo.wav": _noise(0.4, 16000, 2), "quad.wav": _noise(0.4, 16000, 4)}
    for name, audio in files.items():
        sf.write(tmp_path / name, audio, 16000, subtype="FLOAT")
    outcomes = {o.source.name: o for o in apply_run(run, [tmp_path / n for n in files], tmp_path / "out",
                                                    progress=False)}
    assert "4 channels, but the model takes 2" in outcomes["quad.wav"].error
    for name in ("mono.wav", "stereo.wav"):
        assert outcomes[name].error is None
        back, _ = sf.read(tmp_path / "out" / name, dtype="float32", always_2d=True)
        assert np.abs(back - files[name]).max() < 1e-5
