"""The offline CLAP audio tower: released-layout checkpoints load strictly and reproduce the tower's embeddings.

Most tests use the HTSAT-tiny config (same laion-clap code path, 32 M instead of 73 M weights) to stay fast on CPU;
the subprocess test builds the default HTSAT-base tower and checks its size and projection layout.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from audiolab.metrics.clap import CLAP_WINDOW, ClapAudioTower, ClapCheckpointError, int16_round_trip, load_clap_tower

MODEL = "HTSAT-tiny"


@pytest.fixture(scope="module")
def tower() -> ClapAudioTower:
    """A randomly initialised tower in eval mode."""
    torch.manual_seed(0)
    return ClapAudioTower(MODEL).eval()


def released_layout(state: dict[str, torch.Tensor]) -> dict:
    """A checkpoint laid out like the released LAION CLAP files: DDP `module.` keys, text side, training extras."""
    return {
        "epoch": 15,
        "state_dict": {
            **{"module." + k: v for k, v in state.items()},
            "module.text_branch.embeddings.position_ids": torch.arange(514)[None],
            "module.text_projection.0.weight": torch.zeros(512, 768),
            "module.logit_scale_a": torch.tensor(2.6593),
        },
    }


@pytest.fixture(scope="module")
def checkpoint(tower: ClapAudioTower, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tower saved in the released layout."""
    path = tmp_path_factory.mktemp("clap") / "clap.pt"
    torch.save(released_layout(tower.state_dict()), path)
    return path


def test_int16_round_trip_matches_laion_clap_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    levels = np.arange(-32768, 32768, dtype=np.float32) / np.float32(32767)  # every int16 level, and -1.00003
    x = np.concatenate([rng.uniform(-1.5, 1.5, 200_000), levels, [0.0, 1.0, -1.0, 0.99999, -0.99999]])
    x = x.astype(np.float32)
    # laion_clap.training.data: int16_to_float32(float32_to_int16(x)), which hook.py applies before embedding.
    expected = ((np.clip(x, a_min=-1.0, a_max=1.0) * 32767.0).astype(np.int16) / 32767.0).astype(np.float32)
    got = int16_round_trip(torch.from_numpy(x))
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), expected)


def test_released_layout_loads_and_reproduces_embeddings(tower: ClapAudioTower, checkpoint: Path) -> None:
    loaded = load_clap_tower(checkpoint, audio_model=MODEL)
    assert not loaded.training
    audio = torch.rand(2, CLAP_WINDOW, generator=torch.Generator().manual_seed(1)) * 1.8 - 0.9
    with torch.inference_mode():
        expected = tower(audio)
        got = loaded(audio)
    assert got.shape == (2, 512)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(2), rtol=0, atol=1e-5)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # Random weights must not make every clip look alike, or the comparison above would prove little.
    assert (got[0] - got[1]).abs().max() > 1e-3


def test_mismatched_checkpoint_names_keys_and_shapes(tower: ClapAudioTower, tmp_path: Path) -> None:
    # One file with all three kinds of problem, so the slow tower build happens once.
    ckpt = released_layout(tower.state_dict())
    state = ckpt["state_dict"]
    del state["module.audio_projection.2.bias"]
    state["module.audio_branch.foo"] = torch.zeros(3)
    state["module.audio_projection.0.weight"] = torch.zeros(512, 100)
    path = tmp_path / "bad.pt"
    torch.save(ckpt, path)
    with pytest.raises(ClapCheckpointError) as err:
        load_clap_tower(path, audio_model=MODEL)
    message = str(err.value)
    assert str(path) in message
    # Each list holds exactly the planted key: the text side and the other weights are not reported.
    assert "missing keys: audio_projection.2.bias;" in message
    assert "unexpected keys: audio_branch.foo;" in message
    assert message.endswith("shape mismatches: audio_projection.0.weight (checkpoint (512, 100), model (512, 768))")


def test_checkpoint_needing_full_unpickling_requires_trust(tower: ClapAudioTower, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    ckpt = released_layout(tower.state_dict())
    ckpt["args"] = argparse.Namespace(amodel=MODEL, lr=1e-4)  # training checkpoints store their argparse args
    path = tmp_path / "with_args.pt"
    torch.save(ckpt, path)
    with pytest.raises(ClapCheckpointError) as err:
        load_clap_tower(path, audio_model=MODEL)
    message = str(err.value)
    assert str(path) in message
    assert "full unpickling" in message and "metrics.clap.trust_checkpoint=true" in message
    assert "argparse.Namespace" in message  # the original error's detail comes along

    with caplog.at_level("WARNING", logger="audiolab.metrics.clap"):
        loaded = load_clap_tower(path, trust_checkpoint=True, audio_model=MODEL)
    assert any("unpickling" in r.getMessage() for r in caplog.records)
    expected = tower.state_dict()
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_missing_file_names_the_config_key(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.pt"
    with pytest.raises(ClapCheckpointError, match=r"metrics\.clap\.checkpoint") as err:
        load_clap_tower(path)
    assert str(path) in str(err.value)


def test_building_the_default_tower_never_imports_the_text_side() -> None:
    code = textwrap.dedent("""
        import sys
        import audiolab.metrics.clap as clap
        assert "laion_clap.clap_module.htsat" not in sys.modules, "htsat imported at module import time"
        tower = clap.ClapAudioTower()
        shapes = {k: tuple(v.shape) for k, v in tower.state_dict().items() if k.startswith("audio_projection")}
        print(sum(p.numel() for p in tower.parameters()), shapes)
        text_side = ("transformers", "laion_clap.hook", "laion_clap.clap_module.model")
        leaked = sorted(m for m in text_side if m in sys.modules)
        assert not leaked, leaked
        assert "laion_clap" not in sys.modules, "a stand-in package was left behind"
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, shapes = proc.stdout.strip().split(" ", 1)
    assert 70e6 < int(count) < 75e6  # HTSAT-base plus projection, about 73 M
    assert eval(shapes) == {"audio_projection.0.weight": (512, 1024), "audio_projection.0.bias": (512,),
                            "audio_projection.2.weight": (512, 512), "audio_projection.2.bias": (512,)}
