"""The spectrogram ConvNeXt (model=convnext2d_spec): identity at init, any length, trains and resumes bitwise."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate

from audiolab.config.schema import ConfigError, validate_config
from audiolab.models.convnext2d_spec import ConvNeXtUNet2dSpec
from audiolab.runs.record import read_metrics
from audiolab.runs.session import load_resolved_config, run_training
from audiolab.train.checkpoint import load_checkpoint
from conftest import compose_config

TINY = {"channels": [2, 4, 8], "blocks": [1, 1], "factors": [2, 2], "n_fft": 128}


@pytest.mark.parametrize("length", [1, 100, 127, 128, 4096, 5001])
def test_untrained_model_is_exactly_the_identity_for_any_length(length: int) -> None:
    model = ConvNeXtUNet2dSpec(**TINY)
    x = torch.randn(2, 1, length, generator=torch.Generator().manual_seed(length))
    assert torch.equal(model(x), x)


def test_a_trained_correction_changes_the_output_and_keeps_the_shape() -> None:
    torch.manual_seed(0)
    model = ConvNeXtUNet2dSpec(**TINY)
    torch.nn.init.normal_(model.up[0].weight, std=0.1)
    x = torch.randn(3, 1, 3000)
    y = model(x)
    assert y.shape == x.shape and not torch.allclose(y, x)
    y.pow(2).mean().backward()
    assert model.down[0].weight.grad is not None and model.down[0].weight.grad.abs().sum() > 0


def test_stereo_has_four_input_channels_and_the_hop_follows_time_factors() -> None:
    model = ConvNeXtUNet2dSpec(channels=[4, 8], blocks=[1], factors=[4], time_factors=[2], n_fft=256)
    assert model.hop_length == 64 * 2 and model.audio_channels_for(channels=[4, 8]) == 2
    x = torch.randn(1, 2, 999)
    assert torch.equal(model(x), x)


@pytest.mark.parametrize("kwargs, message", [
    ({"channels": [3, 8], "blocks": [1], "factors": [2]}, r"model.channels\[0\]=3: must be 2 per audio channel"),
    ({"channels": [2, 8], "blocks": [1], "factors": [2], "n_fft": 102}, "n_fft=102"),
    ({"channels": [2, 8], "blocks": [1], "factors": [3], "n_fft": 128}, "divisible by prod"),
    ({"channels": [2, 8], "blocks": [1, 1], "factors": [2]},
     r"model.blocks and model.time_factors 1 .*got \[2, 8\], \[1, 1\]"),
])
def test_bad_shapes_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConvNeXtUNet2dSpec(**kwargs)


def test_presets_compose_with_the_hop_they_say() -> None:
    cpu = compose_config(["model=convnext2d_spec"])
    big = compose_config(["model=convnext2d_spec_big"])
    assert instantiate(cpu.model).hop_length == 4096
    big_model = instantiate(big.model)
    assert big_model.hop_length == 512  # divides the log's 65024, 48640 and 32256
    assert abs(sum(p.numel() for p in big_model.parameters()) / 1e6 - 21.5) < 0.1


def test_segment_that_is_not_a_multiple_of_the_hop_is_refused() -> None:
    with pytest.raises(ConfigError, match="data.segment"):
        validate_config(compose_config(["model=convnext2d_spec", "data.segment=6144"]))


def test_trains_and_resumes_bitwise_on_cpu(interrupted_and_full) -> None:
    full_dir, cut_dir = interrupted_and_full("model=convnext2d_spec", "trainer.max_steps=6", "trainer.val_every=3")
    assert json.loads((cut_dir / "run.json").read_text())["status"] == "interrupted"
    run_training(load_resolved_config(cut_dir), cut_dir, resume=True)

    def reproducible(run):
        return [{k: v for k, v in m.items() if not k.startswith("perf/")} for m in read_metrics(run)]

    assert reproducible(cut_dir) == reproducible(full_dir)
    full = load_checkpoint(full_dir / "checkpoints" / "last.pt")
    cut = load_checkpoint(cut_dir / "checkpoints" / "last.pt")
    assert full["step"] == cut["step"] == 6
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, cut["model"][name]), name
    losses = [m["train/loss"] for m in read_metrics(full_dir) if "train/loss" in m]
    assert len(losses) == 6 and losses[-1] != losses[0]  # it trained


def test_without_predict_residual_the_output_is_the_networks_own() -> None:
    torch.manual_seed(0)
    model = ConvNeXtUNet2dSpec(**TINY, predict_residual=False)
    x = torch.randn(2, 1, 1000)
    y = model(x)
    assert y.shape == x.shape and not torch.allclose(y, x, atol=1e-3)
