"""`audiolab export`: TorchScript that runs without audiolab, ONNX that onnxruntime runs, and exact streaming."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from audiolab.inference.convert import NotStreamable, streamable
from audiolab.inference.export import BlockStream
from audiolab.inference.run_model import load_run_model
from audiolab.models.convnext1d import ConvNeXtUNet1d
from audiolab.models.convnext2d_spec import ConvNeXtUNet2dSpec
from audiolab.models.pqmf_vae import PqmfVAE
from conftest import train_run

VAE = dict(n_bands=4, capacity=8, ratios=[2, 2], latent_size=4, noise_hidden=8, noise_ratios=[2], noise_bands=8)
MODELS = {
    # hop 64; blocks of different depths per level
    "convnext1d": lambda: ConvNeXtUNet1d([1, 8, 16, 32], [1, 2, 1], [4, 4, 4]),
    # hop 48: odd factor, even kernel, strided/fold mixes and fold only, no residual, stereo
    "convnext1d_mixed": lambda: ConvNeXtUNet1d([2, 8, 16, 16], [1, 1, 2], [4, 3, 4], kernel_size=6,
                                               scale_vs_channels=[0.5, 0.0, 1.0], predict_residual=False),
    # hop 16
    "pqmf_vae": lambda: PqmfVAE(channels=1, noise=False, **VAE),
    "pqmf_vae_noise_snake_stereo": lambda: PqmfVAE(channels=2, noise=True, activation="snake", **VAE),
}


def _randomised(name: str) -> torch.nn.Module:
    """The model with every weight perturbed: untrained, a residual model is the identity and would prove nothing."""
    torch.manual_seed(0)
    model = MODELS[name]()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _stream(module: torch.jit.ScriptModule, x: torch.Tensor, block: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([module(x[..., i:i + block]) for i in range(0, x.shape[-1], block)], dim=-1)


@pytest.mark.parametrize("name", list(MODELS))
def test_a_stream_fed_block_by_block_equals_the_offline_output_after_the_latency(name: str, tmp_path: Path) -> None:
    model = _randomised(name)
    core = streamable(model)
    hop = core.hop
    x = 0.3 * torch.randn(2, core.channels, 48 * hop, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        offline = model(x)
        rebuilt = core(x)
    if name.startswith("pqmf_vae_noise"):  # its noise is the export's own (a fixed table): compare with that
        assert (rebuilt - offline).abs().max() < 0.05
        offline = rebuilt
    else:
        assert (rebuilt - offline).abs().max() < 1e-6
    assert offline.abs().max() > 0.1
    for block in (hop // 4, hop // 2, hop, 3 * hop):  # divisors of the hop and multiples of it
        path = tmp_path / f"{name}_{block}.ts"
        torch.jit.script(BlockStream(streamable(model), block)).save(str(path))
        stream = torch.jit.load(str(path))
        latency = int(stream.latency)
        assert latency == core.latency + (hop - block if block < hop else 0)
        y = _stream(stream, x, block)
        assert y.shape == x.shape
        err = (y[..., latency:] - offline[..., :x.shape[-1] - latency]).abs().max().item()
        assert err < 1e-6, (block, err)
        stream.reset()  # a new stream starts from time 0 again
        assert torch.equal(_stream(stream, x, block), y)


def test_a_wrong_latency_would_be_caught() -> None:
    model = _randomised("convnext1d")
    core = streamable(model)
    x = 0.3 * torch.randn(1, 1, 30 * core.hop)
    stream = torch.jit.script(BlockStream(core, core.hop))
    y, offline = _stream(stream, x, core.hop), model(x).detach()
    shifted = (y[..., core.latency + 1:] - offline[..., :x.shape[-1] - core.latency - 1]).abs().max()
    assert shifted > 1e-3


def test_blocks_that_neither_divide_nor_fill_the_hop_are_refused() -> None:
    core = streamable(_randomised("convnext1d"))
    with pytest.raises(ValueError, match="must divide the model's hop 64 or be a multiple"):
        BlockStream(core, 48)


def test_the_spectrogram_model_cannot_stream_and_says_why() -> None:
    with pytest.raises(NotStreamable, match="STFT is centred"):
        streamable(ConvNeXtUNet2dSpec([2, 8, 16], [1, 1], [2, 2], n_fft=64))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    return train_run(tmp_path_factory.mktemp("export") / "outputs", cache_dir)


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "audiolab", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


# Runs in a fresh interpreter where importing audiolab fails: the file must carry everything.
WITHOUT_AUDIOLAB = textwrap.dedent("""
    import sys
    sys.modules["audiolab"] = None  # any import of audiolab now raises ImportError
    import numpy as np, torch
    model = torch.jit.load(sys.argv[1])
    x = torch.from_numpy(np.load(sys.argv[2]))
    with torch.no_grad():
        if len(sys.argv) > 4:  # a stream: feed blocks
            block = int(sys.argv[4])
            y = torch.cat([model(x[..., i:i + block]) for i in range(0, x.shape[-1], block)], dim=-1)
        else:
            y = model(x)
    np.save(sys.argv[3], y.numpy())
""")


def test_the_torchscript_export_runs_without_audiolab_and_matches_the_run(
        trained: Path, tmp_path: Path, cli_env: dict[str, str]) -> None:
    run = load_run_model(trained, device="cpu")
    x = 0.3 * torch.randn(2, 1, 3 * run.segment + 77, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = run.model(x).numpy()
    np.save(tmp_path / "x.npy", x.numpy())
    done = _cli(["export", str(trained), "--out", str(tmp_path / "m.ts")], cli_env, tmp_path)
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "m.json").read_text())
    assert (meta["sample_rate"], meta["channels"], meta["latency_samples"], meta["streaming"]) == (44100, 1, 0, False)
    script = tmp_path / "use.py"
    script.write_text(WITHOUT_AUDIOLAB)
    env = {k: v for k, v in cli_env.items() if k != "PYTHONPATH"}
    used = subprocess.run([sys.executable, str(script), str(tmp_path / "m.ts"), str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert used.returncode == 0, used.stderr
    assert np.abs(np.load(tmp_path / "y.npy") - expected).max() < 1e-5

    done = _cli(["export", str(trained), "--streaming", "--block", "128", "--out", str(tmp_path / "s.ts")], cli_env,
                tmp_path)
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "s.json").read_text())
    assert meta["streaming"] and meta["block_size"] == 128
    assert f"latency {meta['latency_samples']} samples" in done.stdout
    latency = meta["latency_samples"]
    length = (x.shape[-1] // 128) * 128
    np.save(tmp_path / "x.npy", x[..., :length].numpy())
    used = subprocess.run([sys.executable, str(script), str(tmp_path / "s.ts"), str(tmp_path / "x.npy"),
                           str(tmp_path / "y.npy"), "128"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert used.returncode == 0, used.stderr
    y = np.load(tmp_path / "y.npy")
    assert np.abs(y[..., latency:] - expected[..., :length - latency]).max() < 1e-5


def test_the_onnx_export_gives_the_runs_output_in_onnxruntime(trained: Path, tmp_path: Path,
                                                             cli_env: dict[str, str]) -> None:
    done = _cli(["export", str(trained), "--format", "onnx", "--out", str(tmp_path / "m.onnx")], cli_env, tmp_path)
    assert done.returncode == 0, done.stderr
    run = load_run_model(trained, device="cpu")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for length in (run.segment, 2 * run.segment + 300):  # the length is dynamic
        x = 0.3 * torch.randn(3, 1, length, generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            expected = run.model(x).numpy()
        [y] = session.run(None, {"audio": x.numpy()})
        assert y.shape == expected.shape and np.abs(y - expected).max() < 1e-5


def test_the_spectrogram_model_exports_offline_but_refuses_streaming_and_onnx_with_reasons(
        tmp_path: Path, cache_dir: Path, cli_env: dict[str, str]) -> None:
    run_dir = train_run(tmp_path / "outputs", cache_dir, "model=convnext2d_spec")
    done = _cli(["export", str(run_dir), "--streaming"], cli_env, tmp_path)
    assert done.returncode == 2 and "STFT is centred" in done.stderr and "Traceback" not in done.stderr
    done = _cli(["export", str(run_dir), "--format", "onnx"], cli_env, tmp_path)
    assert done.returncode == 2 and "complex" in done.stderr and "Traceback" not in done.stderr
    done = _cli(["export", str(run_dir), "--out", str(tmp_path / "spec.ts")], cli_env, tmp_path)
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "spec.json").read_text())
    run = load_run_model(run_dir, device="cpu")
    assert meta["block_size"] == run.segment and "exactly" in meta["input"]
    exported = torch.jit.load(str(tmp_path / "spec.ts"))
    x = 0.3 * torch.randn(2, 1, run.segment)
    with torch.no_grad():
        assert (exported(x) - run.model(x)).abs().max() < 1e-5
        with pytest.raises(torch.jit.Error, match="traced for"):
            exported(x[..., :-run.hop])


def test_the_vae_exports_to_onnx_with_its_encoder_decoder_and_noise(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from audiolab.inference.export import export_run
    from audiolab.inference.run_model import RunModel

    model = _randomised("pqmf_vae_noise_snake_stereo")
    cfg = OmegaConf.create({"data": {"sample_rate": 44100, "channels": 2, "segment": 256},
                            "model": {"_target_": "audiolab.models.pqmf_vae.PqmfVAE"},
                            "task": {"_target_": "audiolab.tasks.autoencode.Autoencode"}})
    run = RunModel(tmp_path, cfg, model, "best", 7, "model", torch.device("cpu"), None)
    path, meta = export_run(run, tmp_path / "vae.onnx", "onnx")
    assert meta["task"] == "autoencode" and "noise" in meta
    x = 0.3 * torch.randn(2, 2, 40 * run.hop + 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = streamable(model)(x).numpy()
    [y] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"audio": x.numpy()})
    assert y.shape == expected.shape and np.abs(y - expected).max() < 1e-5
