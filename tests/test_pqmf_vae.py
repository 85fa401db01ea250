"""The RAVE-style PQMF VAE, its losses and two-phase adversarial training, on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from audiolab.config.schema import ConfigError, validate_config
from audiolab.losses.adversarial import AdversarialLoss, FeatureMatchingLoss
from audiolab.losses.composite import build_loss
from audiolab.losses.spectral import MultibandSpectralLoss, RaveSpectralLoss
from audiolab.models.pqmf_vae import PqmfVAE, gaussian_kl
from audiolab.runs.record import read_metrics
from audiolab.runs.session import load_resolved_config, run_training
from audiolab.tasks.autoencode import active_dimensions
from audiolab.train.adversarial import AdversarialStage, beta_at
from audiolab.train.checkpoint import load_checkpoint
from conftest import compose_config

VAE = ["experiment=rave_v2_small"]  # model=pqmf_vae_small trained the RAVE v2 way
# The smallest discriminator of each kind that still has every sub-discriminator type (fast on CPU).
SMALL_RAVE_D = ["discriminator.model.capacity=2"]


def tiny_vae(**kwargs) -> PqmfVAE:
    """4 bands, ratios 2, 2: hop 16."""
    args = dict(n_bands=4, capacity=4, ratios=[2, 2], latent_size=3, dilations=[1, 3], noise_hidden=4,
                noise_ratios=[2], noise_bands=4)
    return PqmfVAE(**(args | kwargs))


@pytest.mark.parametrize("length", [16, 64, 4096])
@pytest.mark.parametrize("channels", [1, 2])
def test_shapes_through_encoder_and_decoder(length: int, channels: int) -> None:
    torch.manual_seed(0)
    model = tiny_vae(channels=channels)
    x = torch.randn(2, channels, length) * 0.1
    mean, std = model.encode(x)
    assert mean.shape == std.shape == (2, 3, length // 16)
    assert (std > 0).all()
    y = model.decode(mean)
    assert y.shape == x.shape
    assert model(x).shape == x.shape


def test_bad_length_is_refused_with_the_hop() -> None:
    with pytest.raises(ValueError, match="multiple of the hop 16"):
        tiny_vae().encode(torch.zeros(1, 1, 40))


@pytest.mark.parametrize("preset, hop", [("pqmf_vae", 2048), ("pqmf_vae_small", 512)])
def test_presets_compression_ratio(preset: str, hop: int) -> None:
    cfg = compose_config([f"model={preset}", "task=autoencode"])
    model = instantiate(cfg.model)
    assert model.hop_length == hop
    mean, _ = model.encode(torch.zeros(1, 1, 4 * hop))
    assert mean.shape == (1, 128, 4)  # latent 128 at sr / hop frames per second
    assert 44100 / model.hop_length == pytest.approx(21.53 if hop == 2048 else 86.13, abs=0.01)


def test_kl_of_a_standard_normal_posterior_is_zero() -> None:
    mean, std = torch.zeros(4, 8, 10), torch.ones(4, 8, 10)
    assert float(gaussian_kl(mean, std)) == pytest.approx(0.0, abs=1e-7)
    # Any other posterior costs nats: the exact KL, summed over channels, averaged over batch and time.
    mean2, std2 = torch.full((4, 8, 10), 0.5), torch.full((4, 8, 10), 2.0)
    reference = torch.distributions.kl_divergence(torch.distributions.Normal(mean2, std2),
                                                  torch.distributions.Normal(0.0, 1.0)).sum(1).mean()
    assert float(gaussian_kl(mean2, std2)) == pytest.approx(float(reference), rel=1e-6)


def test_eval_is_deterministic_and_uses_the_posterior_mean() -> None:
    torch.manual_seed(0)
    model = tiny_vae().eval()
    x = torch.randn(2, 1, 256) * 0.1
    y1, stats = model.forward_with_stats(x)
    torch.manual_seed(123)  # the global RNG does not reach eval outputs
    assert torch.equal(y1, model(x))
    assert torch.equal(stats["latent"], model.encode(x)[0])
    model.train()
    assert not torch.equal(model(x), model(x))  # sampled latent and noise


def test_freeze_encoder_stops_its_gradients_only() -> None:
    model = tiny_vae()
    model.freeze_encoder()
    y, stats = model.forward_with_stats(torch.randn(2, 1, 64) * 0.1)
    y.pow(2).mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())
    assert not stats["kl"].requires_grad


def test_active_dimensions_counts_varying_channels() -> None:
    latents = torch.zeros(5, 4, 3)
    latents[:, 1] = torch.arange(5.0)[:, None]  # variance 2 across crops
    latents[:, 3] = torch.arange(3.0) * 0.01  # variance 6.7e-5 across frames: below 0.01
    assert active_dimensions(latents, 0.01) == 1
    assert active_dimensions(latents, 1e-5) == 2


def vae_gan(checkpoint: dict) -> dict:
    """What recipe=vae_gan keeps in a checkpoint: its phase and the discriminator (None in phase 1)."""
    return checkpoint["extras"]["vae_gan"]


def test_beta_warms_up_in_log_space() -> None:
    assert beta_at(0, 100, 1e-6, 5e-2) == pytest.approx(1e-6)
    assert beta_at(50, 100, 1e-6, 5e-2) == pytest.approx((1e-6 * 5e-2) ** 0.5)
    assert beta_at(100, 100, 1e-6, 5e-2) == beta_at(10**6, 100, 1e-6, 5e-2) == 5e-2


def test_rave_squared_distance_and_multiband_distance() -> None:
    torch.manual_seed(0)
    target = torch.randn(2, 1, 4096)
    output = target + 0.3 * torch.randn_like(target)
    plain, squared = RaveSpectralLoss(), RaveSpectralLoss(squared=True)
    assert float(squared(target, target)) == 0.0
    assert float(squared(output, target)) < float(plain(output, target))  # the relative term < 1 is squared
    multiband = MultibandSpectralLoss(n_bands=16)
    assert float(multiband(target, target)) == 0.0
    assert float(multiband(output, target)) > 0.1  # bands of 256 samples: scales 2048 and 1024 skipped
    with pytest.raises(ValueError, match="no STFT scale"):
        MultibandSpectralLoss(n_bands=16, scales=[2048])(output, target)


def test_adversarial_and_feature_matching_conventions() -> None:
    real = [[torch.ones(2, 3), torch.full((2, 1), 2.0)]]
    fake = [[torch.zeros(2, 3), torch.full((2, 1), -0.5)]]
    hinge, ls = AdversarialLoss("hinge"), AdversarialLoss("ls")
    assert float(hinge.discriminator_loss(real, fake)) == pytest.approx(0.0 + 0.5)  # relu(1-2) + relu(1-0.5)
    assert float(hinge(fake)) == pytest.approx(0.5)
    assert float(ls.discriminator_loss(real, fake)) == pytest.approx(1.0 + 0.25)
    assert float(ls(fake)) == pytest.approx(2.25)
    rave = FeatureMatchingLoss(relative=True, skip_features=0)
    assert float(rave(real, fake)) == pytest.approx((1.0 + 2.5 / 2.0) / 2)
    assert float(FeatureMatchingLoss(relative=True, skip_features=1)(real, fake)) == pytest.approx(2.5 / 2.0)
    dac = FeatureMatchingLoss(relative=False, include_logit=False, reduction="sum")
    assert float(dac(real, fake)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="keeps no map"):
        FeatureMatchingLoss(skip_features=2)(real, fake)


@pytest.mark.parametrize("discriminator", ["rave_v2", "dac"])
def test_concat_and_separate_discriminator_passes_agree(discriminator: str) -> None:
    extra = SMALL_RAVE_D if discriminator == "rave_v2" else ["discriminator.model.periods=[2,3]"]
    cfg = compose_config([*VAE, "loss=rave", f"discriminator={discriminator}", *extra])
    loss_fn = build_loss(cfg.loss)
    torch.manual_seed(0)
    real = torch.randn(2, 1, 4096) * 0.3
    fake = (real + 0.1 * torch.randn_like(real)).requires_grad_(True)
    results = []
    for concat in (True, False):
        torch.manual_seed(1)
        stage = AdversarialStage(cfg.discriminator, loss_fn, torch.device("cpu"), concat=concat)
        real_f, fake_f = stage.features(real, fake.detach())
        d_loss = stage.adversarial.discriminator_loss(real_f, fake_f)
        g_loss, terms = stage.generator_terms(real, fake, None)
        grad, = torch.autograd.grad(g_loss, fake)
        results.append((d_loss, g_loss, terms, grad))
    (d1, g1, t1, grad1), (d2, g2, t2, grad2) = results
    torch.testing.assert_close(d1, d2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-5)
    assert t1.keys() == t2.keys() == {"adversarial", "feature_matching"}
    torch.testing.assert_close(grad1, grad2, atol=1e-6, rtol=1e-4)


def test_generator_step_leaves_the_discriminator_untouched() -> None:
    cfg = compose_config([*VAE, "loss=rave", *SMALL_RAVE_D])
    stage = AdversarialStage(cfg.discriminator, build_loss(cfg.loss), torch.device("cpu"), concat=True)
    fake = torch.randn(2, 1, 4096, requires_grad=True)
    loss, _ = stage.generator_terms(torch.randn(2, 1, 4096), fake, None)
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in stage.discriminator.parameters())
    assert all(p.requires_grad for p in stage.discriminator.parameters())


def test_phase_switch_freezes_the_encoder_and_trains_the_discriminator(run_tiny, outputs: Path) -> None:
    """Checkpoint every step: encoder bitwise fixed from phase1_steps on; D moves on its steps only."""
    snapshots: dict[int, dict] = {}
    run_dir = outputs / "output01"  # the first run of a fresh outputs/

    def keep(step: int) -> None:
        snapshots[step] = load_checkpoint(run_dir / "checkpoints" / "last.pt")

    run_tiny(*VAE, *SMALL_RAVE_D, "model.capacity=8", "recipe.phase1_steps=3", "trainer.max_steps=6",
             "trainer.val_every=1", "recipe.d_every=2", "trainer.sample_clips=0", after_step=keep)
    assert [vae_gan(snapshots[s])["phase"] for s in range(1, 7)] == [1, 1, 1, 2, 2, 2]
    assert vae_gan(snapshots[3])["discriminator"] is None and vae_gan(snapshots[4])["discriminator"] is not None

    def params(step: int, prefix: str) -> dict[str, torch.Tensor]:
        return {k: v for k, v in snapshots[step]["model"].items() if k.startswith(prefix)}

    # Encoder: moved in phase 1, then bitwise fixed through D and G steps.
    assert any(not torch.equal(v, params(3, "encoder.")[k]) for k, v in params(2, "encoder.").items())
    for step in (4, 5, 6):
        for k, v in params(3, "encoder.").items():
            assert torch.equal(v, params(step, "encoder.")[k]), (step, k)
    # Steps 3 and 5 (0-based) are the discriminator's; step 4 is the generator's.
    assert all(torch.equal(v, params(5, "decoder.")[k]) for k, v in params(4, "decoder.").items()) is False
    assert all(torch.equal(v, params(4, "decoder.")[k]) for k, v in params(3, "decoder.").items())
    d = {s: vae_gan(snapshots[s])["discriminator"]["model"] for s in (4, 5, 6)}
    assert all(torch.equal(d[4][k], d[5][k]) for k in d[4])  # the generator's step leaves D alone
    assert any(not torch.equal(d[5][k], d[6][k]) for k in d[5])  # D's own step moves it
    metrics = read_metrics(run_dir)
    assert [m["train/phase"] for m in metrics if "train/phase" in m] == [1, 1, 1, 2, 2, 2]
    assert {"train/d_loss", "train/d_real", "train/d_fake", "train/adversarial", "train/feature_matching",
            "train/kl", "train/beta"} <= set([m for m in metrics if "train/phase" in m][-1])


def test_debug_fast_small_preset_crosses_into_phase_2_and_finishes(run_tiny) -> None:
    run_dir, result = run_tiny(*VAE, "recipe.phase1_steps=3", "trainer.max_steps=5")
    assert result.status == "completed" and result.step == 5
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["phase2_start"] == 3
    metrics = read_metrics(run_dir)
    val = [m for m in metrics if "val/spec_loss" in m][-1]
    assert val["val/kl"] >= 0 and 0 <= val["val/active_dims"] <= 128
    assert val["val/spec_loss_silence"] > val["val/spec_loss"] * 0 and "val/improvement" not in val
    last_train = [m for m in metrics if "train/phase" in m][-1]
    assert "train/d_loss" in last_train and last_train["train/phase"] == 2
    log = (run_dir / "train.log").read_text()
    assert "phase 2: discriminator with" in log and "encoder frozen" in log
    assert list((run_dir / "samples").glob("*.png"))
    # Autoencoding: the input is the target, so only output and target are written.
    assert {w.name.split("_", 2)[-1] for w in (run_dir / "samples").glob("*.wav")} == {"output.wav", "target.wav"}
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert vae_gan(ckpt)["phase"] == 2 and set(vae_gan(ckpt)["discriminator"]) == {"model", "optimizer"}


@pytest.mark.parametrize("phase1", [3, 5])
def test_resume_across_the_phase_boundary_is_bitwise(interrupted_and_full, phase1: int) -> None:
    """Cut at step 4: inside phase 2 (phase1=3) or just before it (phase1=5)."""
    full_dir, cut_dir = interrupted_and_full(*VAE, *SMALL_RAVE_D, f"recipe.phase1_steps={phase1}",
                                             "trainer.max_steps=6", "trainer.val_every=3", "recipe.d_every=2")
    assert vae_gan(load_checkpoint(cut_dir / "checkpoints" / "last.pt"))["phase"] == (2 if phase1 == 3 else 1)
    run_training(load_resolved_config(cut_dir), cut_dir, resume=True)
    full = load_checkpoint(full_dir / "checkpoints" / "last.pt")
    cut = load_checkpoint(cut_dir / "checkpoints" / "last.pt")
    assert full["step"] == cut["step"] == 6 and vae_gan(full)["phase"] == vae_gan(cut)["phase"] == 2
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, cut["model"][name]), name
    for name, tensor in vae_gan(full)["discriminator"]["model"].items():
        assert torch.equal(tensor, vae_gan(cut)["discriminator"]["model"][name]), name
    strip = [{k: v for k, v in m.items() if not k.startswith("perf/")} for m in read_metrics(full_dir)]
    assert strip == [{k: v for k, v in m.items() if not k.startswith("perf/")} for m in read_metrics(cut_dir)]


def test_a_discriminator_needs_an_adversarial_term() -> None:
    cfg = compose_config([*VAE, "loss=mrstft"])
    with pytest.raises(ConfigError, match="discriminator is set but loss.terms has no adversarial term"):
        validate_config(cfg)
    validate_config(compose_config([*VAE, "loss=mrstft", "discriminator=none"]))
    validate_config(compose_config([*VAE, "loss=dac_gan", "discriminator=dac"]))


def test_noise_filters_are_zero_phase() -> None:
    """A flat magnitude response is a centred unit impulse: the noise passes unchanged (times the gain)."""
    from audiolab.models.pqmf_vae import NoiseSynth

    class Flat(NoiseSynth):
        def amplitudes(self, hidden: torch.Tensor) -> torch.Tensor:
            return torch.full((hidden.shape[0], self.out_bands, hidden.shape[-1] // self.frame, self.noise_bands), 0.5)

    synth = Flat(in_channels=4, out_bands=3, hidden=4, ratios=[2, 2], noise_bands=9, activation="leaky_relu",
                 norm=True)
    hidden = torch.zeros(2, 4, 32)
    out = synth(hidden, torch.Generator().manual_seed(0))
    noise = torch.rand(2, 3, 8, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.testing.assert_close(out, 0.5 * noise.reshape(2, 3, 32), atol=1e-6, rtol=1e-5)
    # With learned amplitudes: one band-rate noise sample per input frame position.
    real = NoiseSynth(4, 3, 4, [2, 2], 9, "leaky_relu", True)(torch.randn(2, 4, 32))
    assert real.shape == (2, 3, 32) and torch.isfinite(real).all()


@pytest.mark.parametrize("optim", ["muon", "psgd"])
def test_heavyball_optimizers_keep_the_frozen_encoder_bitwise(run_tiny, outputs: Path, optim: str) -> None:
    """heavyball's Muon and PSGD skip parameters without gradients too, weight decay included."""
    snapshots: dict[int, dict] = {}
    run_dir = outputs / "output01"

    def keep(step: int) -> None:
        snapshots[step] = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]

    run_tiny(*VAE, *SMALL_RAVE_D, "model.capacity=8", f"optim={optim}", "optim.weight_decay=0.1",
             "recipe.phase1_steps=2", "trainer.max_steps=4", "trainer.val_every=1", "trainer.sample_clips=0",
             after_step=keep)
    encoder = [k for k in snapshots[2] if k.startswith("encoder.")]
    assert any(not torch.equal(snapshots[1][k], snapshots[2][k]) for k in encoder)  # it trained in phase 1
    assert all(torch.equal(snapshots[2][k], snapshots[4][k]) for k in encoder)
    assert any(not torch.equal(snapshots[3][k], snapshots[4][k]) for k in snapshots[2] if k.startswith("decoder."))


def test_adain_is_the_identity_in_training_and_transfers_statistics_in_eval() -> None:
    from audiolab.models.pqmf_vae import AdaIN

    layer = AdaIN(3)
    torch.manual_seed(0)
    style = torch.randn(2, 3, 500) * torch.tensor([2.0, 0.5, 1.0])[:, None] + torch.tensor([1.0, -1.0, 0.0])[:, None]
    source = torch.randn(2, 3, 500)
    assert torch.equal(layer(source), source)  # training mode
    layer.eval()
    assert torch.equal(layer(source), source)  # nothing learned yet
    layer.mode = "target"
    assert torch.equal(layer(style), style)
    layer.mode = "source"
    layer(source)
    layer.mode = "off"
    moved = layer(source)
    torch.testing.assert_close(moved.mean((0, 2)), style.mean((0, 2)), atol=0.05, rtol=0.05)
    torch.testing.assert_close(moved.std(-1).mean(0), style.std(-1).mean(0), atol=0.05, rtol=0.05)
    layer.reset()
    assert torch.equal(layer(source), source)


def test_rave_v3_model_has_snake_and_an_adain_before_every_residual_unit() -> None:
    from audiolab.models.pqmf_vae import AdaIN, DilatedUnit, Snake

    model = tiny_vae(activation="snake", adain=True)
    units = sum(isinstance(m, DilatedUnit) for m in model.modules())
    assert sum(isinstance(m, AdaIN) for m in model.modules()) == units > 0
    assert any(isinstance(m, Snake) for m in model.modules())
    assert not any(isinstance(m, torch.nn.LeakyReLU) for m in model.modules())
    assert model.set_adain_mode("target") == units
    x = torch.randn(1, 1, 4096)
    model.eval()
    model(x * 3)  # learns target statistics in every AdaIN
    model.set_adain_mode("source")
    model(x)
    model.set_adain_mode("off")
    transferred = model(x)
    model.train()  # training ignores the learned statistics entirely
    torch.manual_seed(0)
    learned = model(x)
    for layer in model.modules():
        if isinstance(layer, AdaIN):
            layer.reset()
    torch.manual_seed(0)
    assert torch.equal(model(x), learned)
    model.eval()
    assert not torch.allclose(model(x), transferred)
