"""Parameter groups, the learning-rate schedule, the weighted loss and device choice."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from audiolab.losses.composite import build_loss
from audiolab.metrics.spectral import SpecDistance
from audiolab.models.convnext1d import ConvNeXtUNet1d
from audiolab.optim.build import build_optimizer, build_scheduler, decay_groups, lr_factor
from audiolab.train.device import autocast_dtype, pick_device
from conftest import compose_config


def test_norms_biases_and_layer_scales_get_no_weight_decay() -> None:
    model = ConvNeXtUNet1d(channels=[1, 4, 8], blocks=[1, 1], factors=[2, 2])
    decay, no_decay = decay_groups(model, OmegaConf.create({"weight_decay": 0.05}))
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert any(n.endswith("gamma") for n in no_decay_names)
    assert any(".norm." in n or "norm" in n for n in no_decay_names)
    assert all(not n.endswith("bias") and not n.endswith("gamma") for n in decay_names)
    assert len(decay_names) + len(no_decay_names) == len(names)


def test_schedule_warms_up_then_decays() -> None:
    assert lr_factor(0, 10, 100, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, "cosine", 0.1) == pytest.approx(0.55)
    assert lr_factor(100, 10, 100, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(80, 10, 100, "constant", 0.1) == 1.0


def test_optimizer_from_config_uses_groups_and_lr() -> None:
    cfg = compose_config(["optim.lr=2e-3", "optim.weight_decay=0.1"])
    model = ConvNeXtUNet1d(channels=[1, 4, 8], blocks=[1, 1], factors=[2, 2])
    opt = build_optimizer(cfg.optim, model)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    sched = build_scheduler(cfg.optim, opt, max_steps=100)
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-3 / cfg.optim.scheduler.warmup_steps)
    del sched


def test_weighted_loss_logs_each_term_and_sums_with_weights() -> None:
    cfg = compose_config(["loss=mrstft_l1", "loss.terms.l1.weight=0.5"])
    loss = build_loss(cfg.loss)
    x, y = torch.randn(2, 1, 4096), torch.randn(2, 1, 4096)
    total, terms = loss(x, y)
    assert set(terms) == {"mrstft", "l1"}
    assert total == pytest.approx(float(terms["mrstft"] + 0.5 * terms["l1"]), rel=1e-6)
    same, _ = loss(x, x)
    assert float(same) == pytest.approx(0.0, abs=1e-6)


def test_spec_distance_is_zero_for_identical_and_grows_with_noise() -> None:
    spec = SpecDistance()
    x = torch.randn(2, 1, 8192) * 0.1
    assert float(spec(x, x)) == pytest.approx(0.0, abs=1e-6)
    small, large = (float(spec(x + a * torch.randn_like(x), x)) for a in (0.01, 0.1))
    assert 0 < small < large


def test_cpu_defaults_to_fp32_and_cuda_request_fails_clearly() -> None:
    assert pick_device("cpu").type == "cpu"
    assert autocast_dtype(torch.device("cpu"), "auto") is None
    assert autocast_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    if not torch.cuda.is_available():
        assert pick_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="trainer.device"):
            pick_device("cuda")
