"""The LAION CLAP audio tower (HTSAT audio branch + audio projection), built and loaded fully offline.

Why not `laion_clap.CLAP_Module`: it always builds the text side too, and that loads roberta-base from the
Hugging Face hub, so it cannot be built offline. The audio embedding needs none of it: `CLAP.get_audio_embedding`
is `audio_branch(batch)["embedding"] -> audio_projection -> F.normalize`. `ClapAudioTower` rebuilds exactly
those two submodules, under the same attribute names, from laion-clap's own code and model config json, so a
released checkpoint's `audio_branch.*` / `audio_projection.*` keys load 1:1 (checked by name, see
`load_clap_tower`).

The import trick. `import laion_clap.clap_module.htsat` would first run `laion_clap/__init__.py`, which imports
`hook.py` and through it transformers (without network that chain can hang for minutes retrying the Hugging
Face hub; even with HF_HUB_OFFLINE=1 it took ~17 s here), and `laion_clap/clap_module/__init__.py`, which
imports `factory`/`model` and with them transformers. Python only runs a package's `__init__.py` when the
package is not yet in `sys.modules`. So `_import_htsat` registers two bare stand-in package modules for
`laion_clap` and `laion_clap.clap_module` (a `types.ModuleType` whose `__path__` is the real directory) and then
imports `laion_clap.clap_module.htsat`: the import system finds the real `htsat.py` through that `__path__`, and
its relative imports (`.utils`, `.feature_fusion`) load the real files too; none of them imports transformers
(utils pulls torchvision, h5py and tqdm; htsat pulls torchlibrosa, hence librosa). Stand-ins are only added for
names not already imported (if the real package was imported, it is simply reused), and they are removed again
right after, so a later real `import laion_clap` elsewhere in the process still runs the real package (which
then reuses the already loaded htsat/utils modules). This all happens lazily, on the first `ClapAudioTower()`,
never when this module is imported. `tests/test_clap.py` checks in a fresh process that building a tower leaves
`transformers` and `laion_clap.hook` unimported.

Checked once against laion-clap itself (its CLAP built with a local `transformer` text branch, HF_HUB_OFFLINE=1):
the same audio keys and shapes, and bit-identical embeddings to `CLAP_Module.get_audio_embedding_from_data`.

`CLAP.__init__` takes its audio config as the `CLAPAudioCfp` dataclass, which lives in `model.py` (imports
transformers); `_AudioCfg` mirrors its fields and defaults, and is filled from the same json the same way
(`CLAPAudioCfp(**model_cfg["audio_cfg"])`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import pickle
import re
import sys
import threading
import types
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

CLAP_SAMPLE_RATE = 48000
CLAP_WINDOW = 480000  # 10 s
CLAP_EMBED_DIM = 512  # CLAP's default joint_embed_shape, which create_model never overrides

CHECKPOINT_KEY = "metrics.clap.checkpoint"
TRUST_KEY = "metrics.clap.trust_checkpoint"
_KEPT_PREFIXES = ("audio_branch.", "audio_projection.")
_MAX_LISTED = 10

_import_lock = threading.Lock()
_htsat_module: types.ModuleType | None = None


@dataclass
class _AudioCfg:
    """Mirror of laion_clap.clap_module.model.CLAPAudioCfp (same fields and defaults), minus its transformers import."""

    model_type: str = "PANN"
    model_name: str = "Cnn14"
    sample_rate: int = 48000
    audio_length: int = 1024
    window_size: int = 1024
    hop_size: int = 1024
    fmin: int = 50
    fmax: int = 14000
    class_num: int = 527
    mel_bins: int = 64
    clip_samples: int = 480000


class ClapCheckpointError(RuntimeError):
    """A CLAP checkpoint is missing, unreadable, untrusted, or does not match the audio tower."""


def _laion_clap_dir() -> Path:
    """The installed laion_clap package directory, found without executing its __init__."""
    module = sys.modules.get("laion_clap")
    if module is not None and getattr(module, "__path__", None):
        return Path(next(iter(module.__path__)))
    # find_spec on a top-level name only locates the package; it runs nothing.
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("laion-clap is not installed; the CLAP audio tower is built from its code")
    return Path(next(iter(spec.submodule_search_locations)))


def _import_htsat() -> types.ModuleType:
    """laion_clap.clap_module.htsat, imported without running laion_clap's package __init__ files."""
    global _htsat_module
    with _import_lock:
        if _htsat_module is not None:
            return _htsat_module
        root = _laion_clap_dir()
        added: list[str] = []
        try:
            for name, path in (("laion_clap", root), ("laion_clap.clap_module", root / "clap_module")):
                if name not in sys.modules:
                    stand_in = types.ModuleType(name, "Stand-in package set up by audiolab.metrics.clap.")
                    stand_in.__path__ = [str(path)]
                    stand_in.__package__ = name
                    sys.modules[name] = stand_in
                    added.append(name)
            _htsat_module = importlib.import_module("laion_clap.clap_module.htsat")
        finally:
            # A stand-in left behind would shadow the real package for any later `import laion_clap`.
            for name in added:
                sys.modules.pop(name, None)
        return _htsat_module


def _model_config(audio_model: str) -> dict[str, Any]:
    """laion-clap's model config json for `audio_model` (e.g. HTSAT-base), as create_model reads it."""
    path = _laion_clap_dir() / "clap_module" / "model_configs" / f"{audio_model}.json"
    if not path.is_file():
        names = sorted(p.stem for p in path.parent.glob("HTSAT*.json"))
        raise ValueError(f"unknown CLAP audio model {audio_model!r}; HTSAT configs shipped with laion-clap: {names}")
    return json.loads(path.read_text())


def int16_round_trip(audio: torch.Tensor) -> torch.Tensor:
    """Audio as laion-clap's get_audio_embedding_from_data feeds it to the model: clipped, int16-quantised, float32."""
    # laion-clap (numpy): clip to [-1, 1], * 32767 truncated to int16, / 32767 -> float32. The torch ops give
    # bit-identical results: the same float32 (or float64) product, the same truncation toward zero, and float32
    # division of an int16 by 32767 equals numpy's float64 quotient rounded to float32 (checked for all 65536
    # values). The result is not differentiable, as laion-clap's default (quantising) path is not.
    x = audio if audio.dtype == torch.float64 else audio.float()
    x = (torch.clamp(x, -1.0, 1.0) * 32767.0).to(torch.int16)
    return (x / 32767.0).to(torch.float32)


class ClapAudioTower(torch.nn.Module):
    """laion-clap's HTSAT audio branch plus the audio projection: 48 kHz audio -> unit-norm 512-d embeddings."""

    def __init__(self, audio_model: str = "HTSAT-base") -> None:
        """Randomly initialised tower; attribute names match CLAP's so checkpoint keys map 1:1."""
        super().__init__()
        cfg = _model_config(audio_model)
        audio_cfg = _AudioCfg(**cfg["audio_cfg"])
        if audio_cfg.model_type != "HTSAT":
            raise ValueError(f"{audio_model} is a {audio_cfg.model_type} model; only HTSAT audio towers are supported")
        if audio_cfg.sample_rate != CLAP_SAMPLE_RATE or audio_cfg.clip_samples != CLAP_WINDOW:
            raise ValueError(f"{audio_model} expects {audio_cfg.clip_samples} samples at {audio_cfg.sample_rate} Hz, "
                             f"not the {CLAP_WINDOW} at {CLAP_SAMPLE_RATE} Hz this tower feeds it")
        self.audio_model = audio_model
        self.audio_cfg = audio_cfg
        # The released music checkpoint is a non-fusion model; CLAP_Module's default is enable_fusion=False too.
        htsat = _import_htsat()
        with warnings.catch_warnings():
            # laion-clap's window attention calls torch.meshgrid without indexing=; it relies on the "ij" default.
            warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release", category=UserWarning)
            self.audio_branch = htsat.create_htsat_model(audio_cfg, enable_fusion=False, fusion_type="None")
        # Same layout as CLAP.audio_projection (mlp_act="relu"), so keys are audio_projection.0.* and .2.*.
        self.audio_projection = torch.nn.Sequential(
            torch.nn.Linear(cfg["embed_dim"], CLAP_EMBED_DIM),
            torch.nn.ReLU(),
            torch.nn.Linear(CLAP_EMBED_DIM, CLAP_EMBED_DIM),
        )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(N, 480000) audio in [-1, 1] at 48 kHz -> (N, 512) unit-norm embeddings, as get_audio_embedding_from_data."""
        if audio.ndim != 2 or audio.shape[-1] != CLAP_WINDOW:
            raise ValueError(f"expected audio of shape (N, {CLAP_WINDOW}) (10 s at {CLAP_SAMPLE_RATE} Hz), "
                             f"got {tuple(audio.shape)}")
        device = next(self.parameters()).device
        x = int16_round_trip(audio)
        # get_audio_features on exactly 480000 samples: no crop or padding, longer=False; then stacked per key.
        batch = {
            "longer": torch.zeros(x.shape[0], 1, dtype=torch.bool, device=device),
            "waveform": x.to(device),
        }
        embedding = self.audio_branch(batch, mixup_lambda=None, device=device)["embedding"]
        return F.normalize(self.audio_projection(embedding), dim=-1)


def _strip_ansi(text: str) -> str:
    """Text without terminal escape codes (torch's weights-only message bolds a phrase)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _describe(err: BaseException) -> str:
    """The first line of an error, plus torch's line naming the offending global when there is one."""
    lines = [line.strip() for line in _strip_ansi(str(err)).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    detail = next((line for line in lines[1:] if line.startswith("WeightsUnpickler error")), None)
    return lines[0] if detail is None else f"{lines[0]} ... {detail}"


def _read_checkpoint(path: Path, trust_checkpoint: bool, map_location: str | torch.device) -> Any:
    """torch.load with weights_only=True, falling back to full unpickling only when trusted."""
    # mmap keeps the whole file (text branch, optimizer state) out of memory; only audio tensors get read.
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if not trust_checkpoint:
            raise ClapCheckpointError(
                f"CLAP checkpoint {path} needs full unpickling (it holds objects other than tensors and plain "
                f"containers), and full unpickling can run arbitrary code. Set {TRUST_KEY}=true only if the file "
                f"comes from a trusted source. torch.load said: {_describe(err)}"
            ) from err
        log.warning("Fully unpickling CLAP checkpoint %s (%s=true); this can run code stored in the file.",
                    path, TRUST_KEY)
    except Exception as err:
        raise ClapCheckpointError(f"CLAP checkpoint {path} could not be read: {_describe(err)}") from err
    try:
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception as err:
        raise ClapCheckpointError(f"CLAP checkpoint {path} could not be read: {_describe(err)}") from err


def _audio_state_dict(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    """The audio_branch.* / audio_projection.* entries of a released checkpoint, `module.` prefix stripped."""
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else raw
    if not isinstance(state, Mapping):
        raise ClapCheckpointError(f"CLAP checkpoint {path} holds a {type(raw).__name__}, not a state dict "
                                  "(expected {'state_dict': {...}} or a bare state dict)")
    # Only the audio side is kept. factory.load_state_dict drops nothing audio-side (it deletes just
    # text_branch.embeddings.position_ids, for newer transformers) and then loads strictly, so neither do we.
    audio: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix("module.") if isinstance(key, str) else key
        if isinstance(name, str) and name.startswith(_KEPT_PREFIXES):
            if not isinstance(value, torch.Tensor):
                raise ClapCheckpointError(f"CLAP checkpoint {path}: {name} is a {type(value).__name__}, not a tensor")
            audio[name] = value
    if not audio:
        sample = ", ".join(str(k) for k in list(state)[:5])
        raise ClapCheckpointError(f"CLAP checkpoint {path} has no audio_branch.* or audio_projection.* weights "
                                  f"(first keys: {sample or 'none'})")
    return audio


def _listing(names: list[str]) -> str:
    """Up to _MAX_LISTED names, then how many more."""
    shown = ", ".join(names[:_MAX_LISTED])
    return shown if len(names) <= _MAX_LISTED else f"{shown}, ... ({len(names) - _MAX_LISTED} more)"


def _check_keys(tower: ClapAudioTower, state: dict[str, torch.Tensor], path: Path) -> None:
    """Strict-load checks, done by hand so the error names the keys and shapes."""
    expected = tower.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
                        for k in set(expected) & set(state) if state[k].shape != expected[k].shape)
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    if problems:
        raise ClapCheckpointError(f"CLAP checkpoint {path} does not fit the {tower.audio_model} audio tower; "
                                  + "; ".join(problems))


def load_clap_tower(checkpoint: str | Path, trust_checkpoint: bool = False, map_location: str | torch.device = "cpu",
                    audio_model: str = "HTSAT-base") -> ClapAudioTower:
    """Build the tower and load `audio_branch.*` and `audio_projection.*` from a released checkpoint, strictly."""
    # The tower ends up on map_location's device, in eval mode.
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ClapCheckpointError(f"CLAP checkpoint {path} does not exist; set {CHECKPOINT_KEY} to the path of a "
                                  "released LAION CLAP checkpoint (e.g. music_audioset_epoch_15_esc_90.14.pt)")
    state = _audio_state_dict(_read_checkpoint(path, trust_checkpoint, map_location), path)
    tower = ClapAudioTower(audio_model)
    _check_keys(tower, state, path)
    tower.load_state_dict(state, strict=True)
    return tower.to(map_location).eval()
