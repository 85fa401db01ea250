"""DAC feature-matching loss: checkpoint loading, known values, gradients, taps, and a run through the config.

No network: every test uses a tiny randomly initialised DAC saved with dac's own `save()`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from audiolab.losses.dac_features import DACFeatureLoss, load_dac
from conftest import compose_config

dac = pytest.importorskip("dac")

SR = 44100


def _tiny_dac() -> dac.DAC:
    """As small as the constructor allows with the 44 kHz layout of strides (hop 320): ~0.3 M parameters."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated (dac still uses it)
        return dac.DAC(encoder_dim=8, encoder_rates=[2, 4, 5, 8], latent_dim=1, decoder_dim=2, decoder_rates=[2],
                       n_codebooks=1, codebook_size=1, codebook_dim=1, sample_rate=SR)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[dac.DAC, Path]:
    """The tiny DAC and its checkpoint in the released weights.pth format (`save(..., package=False)`)."""
    model = _tiny_dac()
    path = tmp_path_factory.mktemp("dac") / "weights.pth"
    model.save(str(path), package=False)
    return model, path


@pytest.fixture(scope="module")
def ckpt(tiny: tuple[dac.DAC, Path]) -> Path:
    return tiny[1]


def _audio(seed: int = 0, shape: tuple[int, ...] = (2, 1, 4096)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(shape[-1]) / SR
    tone = 0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.1 * torch.sin(2 * torch.pi * 1234 * t)
    return tone.expand(shape).clone() + 0.05 * torch.randn(shape, generator=g)


def _noise(like: torch.Tensor, seed: int = 1) -> torch.Tensor:
    return torch.randn(like.shape, generator=torch.Generator().manual_seed(seed))


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# --- loading -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("package", [False, True], ids=["weights-file", "torch-package"])
def test_load_dac_round_trips_bitwise(tmp_path: Path, package: bool) -> None:
    model = _tiny_dac()
    path = tmp_path / "weights.pth"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.package: TypedStorage and (packaged dac code) torch.jit.script
        model.save(str(path), package=package)
        loaded = load_dac(path, trust=package)  # a package runs its code to load: refused untrusted (below)
    assert isinstance(loaded, dac.DAC) and not loaded.training
    assert loaded.encoder_rates == [2, 4, 5, 8] and loaded.sample_rate == SR
    assert not any(p.requires_grad for p in loaded.parameters())
    assert any(k.endswith(".weight_g") for k in loaded.state_dict())  # dac's weight norm survives as g/v
    _assert_same_state(model.state_dict(), loaded.state_dict())


def _package_that_runs_code(path: Path, marker: Path) -> None:
    """A torch.package whose DAC/DAC.pth pickle writes `marker` when unpickled, as in the campaign's file."""
    from torch.package import PackageExporter

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("code ran",))

    with PackageExporter(str(path)) as exporter:
        exporter.extern(["pathlib", "builtins"])
        exporter.save_pickle("DAC", "DAC.pth", Payload())


def test_a_torch_package_is_refused_before_any_of_its_code_runs(tmp_path: Path) -> None:
    path, marker = tmp_path / "weights.pth", tmp_path / "ran.txt"
    _package_that_runs_code(path, marker)
    with pytest.raises(ValueError, match=r"torch.package archive .* nothing in it ran\. .*"
                                         r"loss\.terms\.dac\.trust_weights=true"):
        DACFeatureLoss(str(path))
    assert not marker.exists()
    with pytest.raises(ValueError, match="holds a int as DAC/DAC.pth, not a DAC model"):  # write_text's count
        load_dac(path, trust=True)
    assert marker.read_text() == "code ran"  # trusted, it did run: the flag is what stood in the way


def test_a_plain_file_with_code_in_its_pickle_names_the_trust_flag(tmp_path: Path) -> None:
    path, marker = tmp_path / "weights.pth", tmp_path / "ran.txt"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("code ran",))

    torch.save({"state_dict": Payload(), "metadata": {}}, path)
    with pytest.raises(ValueError, match=r"weights_only=True; nothing in it ran\)\. .*"
                                         r"loss\.terms\.dac\.trust_weights=true"):
        load_dac(path)
    assert not marker.exists()


def test_module_prefixed_checkpoint_loads(tiny: tuple[dac.DAC, Path], tmp_path: Path) -> None:
    model, path = tiny
    payload = torch.load(path, map_location="cpu", weights_only=True)
    payload["state_dict"] = {f"module.{k}": v for k, v in payload["state_dict"].items()}
    torch.save(payload, tmp_path / "ddp.pth")
    _assert_same_state(model.state_dict(), load_dac(tmp_path / "ddp.pth").state_dict())


def test_parametrization_spelling_of_weight_norm_loads(tiny: tuple[dac.DAC, Path], tmp_path: Path) -> None:
    model, path = tiny
    payload = torch.load(path, map_location="cpu", weights_only=True)
    new = {}
    for k, v in payload["state_dict"].items():
        if k.endswith((".weight_g", ".weight_v")):
            k = k[:-len(".weight_g")] + ".parametrizations.weight.original" + ("0" if k.endswith("g") else "1")
        new[k] = v
    payload["state_dict"] = new
    torch.save(payload, tmp_path / "param.pth")
    _assert_same_state(model.state_dict(), load_dac(tmp_path / "param.pth").state_dict())


def test_missing_key_is_named(ckpt: Path, tmp_path: Path) -> None:
    payload = torch.load(ckpt, map_location="cpu", weights_only=True)
    del payload["state_dict"]["encoder.block.2.block.1.block.1.weight_v"]
    torch.save(payload, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"missing keys: encoder\.block\.2\.block\.1\.block\.1\.weight_v"):
        load_dac(tmp_path / "broken.pth")


def test_unexpected_key_is_named(ckpt: Path, tmp_path: Path) -> None:
    payload = torch.load(ckpt, map_location="cpu", weights_only=True)
    payload["state_dict"]["encoder.extra.weight"] = torch.zeros(1)
    torch.save(payload, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"unexpected keys: encoder\.extra\.weight"):
        load_dac(tmp_path / "extra.pth")


@pytest.mark.parametrize("weights", [None, "does/not/exist.pth"])
def test_missing_weights_say_how_to_download(weights: str | None, tmp_path: Path) -> None:
    path = None if weights is None else tmp_path / weights
    with pytest.raises(FileNotFoundError) as err:
        DACFeatureLoss(weights=path)
    msg = str(err.value)
    assert "python -m dac download" in msg and "weights.pth" in msg and "loss.terms.dac.weights=" in msg


# --- values and gradients ------------------------------------------------------------------------------


def test_identical_is_zero_and_grows_with_noise(ckpt: Path) -> None:
    loss = DACFeatureLoss(str(ckpt), taps="blocks")
    target = _audio()
    assert loss(target, target.clone()).item() == 0.0
    small = loss(target + 0.01 * _noise(target), target).item()
    large = loss(target + 0.1 * _noise(target), target).item()
    assert 0 < small < large


def test_gradients_reach_output_only(ckpt: Path) -> None:
    loss = DACFeatureLoss(str(ckpt), taps="blocks")
    target = _audio()
    output = (target + 0.05 * _noise(target)).requires_grad_()
    loss(output, target).backward()
    assert output.grad is not None and torch.isfinite(output.grad).all() and output.grad.abs().sum() > 0
    params = list(loss.parameters())
    assert params and all(p.grad is None and not p.requires_grad for p in params)


@pytest.mark.parametrize("taps", ["blocks", "residual:1,2"])
def test_checkpointing_gives_the_same_loss_and_gradient(ckpt: Path, taps: str) -> None:
    target = _audio()
    results = []
    for checkpointing in (True, False):
        loss = DACFeatureLoss(str(ckpt), taps=taps, checkpointing=checkpointing)
        output = (target + 0.05 * _noise(target)).requires_grad_()
        value = loss(output, target)
        value.backward()
        results.append((value.detach(), output.grad))
    (v1, g1), (v2, g2) = results
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(g1, g2)


def test_features_match_the_original_dac_encoder(tiny: tuple[dac.DAC, Path]) -> None:
    """Folded weight norm and the eager Snake compute what DAC's own encoder computes."""
    model, path = tiny
    loss = DACFeatureLoss(str(path), taps="blocks")
    x = _audio(shape=(2, 1, 4160))
    with torch.no_grad():
        ours = loss._features(x, use_checkpoint=False)
        theirs = model.encoder.block[:5](x)
    torch.testing.assert_close(ours[(4, None)], theirs)


@pytest.mark.parametrize("taps,n,depth", [("block1", 1, 1), ("blocks", 4, 4), ("residual:1,2", 6, 2),
                                          (["residual:1"], 3, 1), (["block1", "block3"], 2, 3)])
def test_each_tap_mode_returns_a_scalar(ckpt: Path, taps: str | list[str], n: int, depth: int) -> None:
    loss = DACFeatureLoss(str(ckpt), taps=taps, tap_weights=[0.5] * n)
    assert len(loss.tap_names) == n and len(loss.encoder) == depth + 1  # later blocks are not even kept
    target = _audio()
    output = (target + 0.05 * _noise(target)).requires_grad_()
    value = loss(output, target)
    assert value.dim() == 0 and torch.isfinite(value) and value > 0
    value.backward()
    assert torch.isfinite(output.grad).all()


def test_tap_module_paths(ckpt: Path) -> None:
    assert DACFeatureLoss(str(ckpt), taps="block1").tap_names == ["encoder.block.1"]
    assert DACFeatureLoss(str(ckpt), taps="residual:2").tap_names == [
        "encoder.block.2.block.0", "encoder.block.2.block.1", "encoder.block.2.block.2"]


@pytest.mark.parametrize("taps", ["block", "layers", "residual:", "residual:a", "", [], ["block1", "block1"]])
def test_bad_taps_raise(ckpt: Path, taps: str | list[str]) -> None:
    with pytest.raises(ValueError, match="taps"):
        DACFeatureLoss(str(ckpt), taps=taps)


def test_taps_beyond_the_model_and_wrong_tap_weights_raise(ckpt: Path) -> None:
    with pytest.raises(ValueError, match="taps"):
        DACFeatureLoss(str(ckpt), taps="block5")
    with pytest.raises(ValueError, match="tap_weights"):
        DACFeatureLoss(str(ckpt), taps="blocks", tap_weights=[1.0, 1.0])


def test_other_sample_rates_are_resampled(ckpt: Path) -> None:
    loss = DACFeatureLoss(str(ckpt), sample_rate=22050, taps="block1")
    target = _audio(shape=(2, 1, 2048))
    output = (target + 0.05 * _noise(target)).requires_grad_()
    value = loss(output, target)
    value.backward()
    assert torch.isfinite(value) and value > 0 and torch.isfinite(output.grad).all()


def test_channels_fold_into_the_batch(ckpt: Path) -> None:
    loss = DACFeatureLoss(str(ckpt), taps="block1")
    stereo = _audio(shape=(2, 2, 4096))
    noisy = stereo + 0.05 * _noise(stereo)
    torch.testing.assert_close(loss(noisy, stereo), loss(noisy.reshape(4, 1, -1), stereo.reshape(4, 1, -1)))


def test_train_mode_keeps_the_encoder_in_eval(ckpt: Path) -> None:
    loss = DACFeatureLoss(str(ckpt)).train()
    assert loss.training and not any(m.training for m in loss.encoder.modules())


# --- through the real config ---------------------------------------------------------------------------


def test_training_run_with_dac_features_mrstft(ckpt: Path, tmp_path: Path) -> None:
    from audiolab.common.numbering import allocate
    from audiolab.runs.session import run_training

    cfg = compose_config(["debug=fast", "loss=dac_features_mrstft", f"loss.terms.dac.weights={ckpt}", "logger=none",
                          f"paths.outputs={tmp_path}/outputs", f"paths.cache={tmp_path}/cache"])
    assert set(cfg.loss.terms) == {"dac", "mrstft"}
    run_dir = allocate(tmp_path / "outputs")
    result = run_training(cfg, run_dir)
    assert result.status == "completed"
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [line for line in lines if "train/dac" in line]
    assert train and all("train/mrstft" in line for line in train)
    assert all(line["train/dac"] > 0 for line in train)
