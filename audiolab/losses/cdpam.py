"""CDPAM, a learned perceptual audio distance (Manocha et al., ICASSP 2021), as a frozen loss term.

    terms:
      cdpam: {_target_: audiolab.losses.cdpam.CdpamLoss, weight: 1.0, sample_rate: 44100}

The `cdpam` package (PyPI 0.0.6, the optional `cdpam` extra: `uv sync --extra cdpam` or
`pip install 'audiolab[cdpam]'`) ships its trained weights inside its wheel
(`cdpam/CDPAM_trained/scratchJNDdefault_best_model.pth`), so nothing is downloaded. Only its model code
(`cdpam.models.FINnet`) and that file are used; this module wraps them instead of using `cdpam.CDPAM` because:

- `CDPAM(dev=...)` unpickles the weights with a bare `torch.load(path)`. On torch >= 2.6 that means
  weights_only=True, which refuses this file (see `load_cdpam_state`), so the package's own class fails to
  load at all here; with weights_only=False it would run whatever the pickle says.
- It takes a device string at construction and moves its inputs there on every call, whereas a loss term
  here is an `nn.Module` moved with `.to(device)` (composite.py, trainer.py) and called on tensors that are
  already on the device.
- It neither mixes channels, resamples nor scales: it expects what `cdpam.load_audio` gives, 22050 Hz mono
  float samples in the int16 range (x * 32768, which load_audio also rounds). `CdpamLoss` takes (B, C, T) or
  (B, T) audio in [-1, 1] at `sample_rate`: it averages channels to mono, resamples to 22050 Hz on the
  device (torchaudio.functional.resample; skipped at 22050) and multiplies by 32768. It does not round,
  which would stop the gradient.
- Its `forward` runs both signals with gradients; here the target runs under `no_grad` (the weights are
  frozen and nothing needs its activations), and the output branch can use activation checkpointing.

The distance is the one `CDPAM.forward` computes (tested equal on the same input): the 16-layer conv
encoder (`base_encoder`: conv 15, BatchNorm, leaky ReLU 0.1, time halved after every 4th layer, mean over
time), the first half of its 1024 channels (the "acoustics" embedding, 512), L2-normalised, and the
learned `lossnet_dfl` distance between the two embeddings, one value per example. The loss is its batch mean.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import pickletools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

CDPAM_SAMPLE_RATE = 22050
INT16_SCALE = 32768.0
WEIGHTS = ("CDPAM_trained", "scratchJNDdefault_best_model.pth")  # inside the installed cdpam package
# The architecture CDPAM.__init__ builds for those weights (cdpam/cdpam.py).
FINNET_KWARGS = {"encoder_layers": 16, "encoder_filters": 64, "ndim": [16, 6], "classif_dp": 0.05,
                 "classif_BN": 0, "classif_act": "no", "input_size": 512}
INSTALL_HINT = ("CdpamLoss (loss=cdpam, metrics.val_cdpam=true) needs the optional `cdpam` extra: "
                "`uv sync --extra dev --extra cdpam` (what `make install` does), or `pip install 'audiolab[cdpam]'` "
                "(cdpam==0.0.6 ships its weights in its 98 MB wheel; `import cdpam` also needs resampy and librosa)")


def cdpam_missing() -> str | None:
    """Why CDPAM cannot be built here (a missing package of the `cdpam` extra), or None; imports nothing."""
    absent = [name for name in ("cdpam", "resampy", "librosa") if importlib.util.find_spec(name) is None]
    return f"{', '.join(absent)} not installed. {INSTALL_HINT}" if absent else None


def _import_finnet() -> type[nn.Module]:
    """cdpam.models.FINnet, or an ImportError that says how to install it."""
    try:
        from cdpam.models import FINnet  # `import cdpam` runs cdpam/__init__, which imports librosa and resampy
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT}. Import failed: {err}") from err
    return FINnet


def weights_path() -> Path:
    """The trained weights shipped inside the installed cdpam package."""
    _import_finnet()
    import cdpam

    path = Path(cdpam.__file__).resolve().parent.joinpath(*WEIGHTS)
    if not path.is_file():
        raise FileNotFoundError(f"the cdpam package at {path.parents[1]} has no {'/'.join(WEIGHTS)}. {INSTALL_HINT}")
    return path


# --- weights -------------------------------------------------------------------------------------------

# The legacy (pre-zip) torch.save layout: five pickles (magic number, protocol, system info, the object,
# storage keys), then the raw storages.
_LEGACY_PICKLES = 5
_LONG1, _NEWTRUE, _NEWFALSE = b"\x8a", b"\x88", b"\x89"


def _reencode_text_ints(raw: bytes) -> bytes:
    """The same legacy torch.save file with every pickle INT opcode re-encoded as LONG1 (same value).

    CDPAM's weights were saved by Python 2: its pickler wrote integers beyond 32 bits (here the `id()`s that key
    the optimizer state saved beside the weights) as the text opcode INT (`I<digits>\\n`, code 73), which
    torch's weights_only unpickler does not implement ("Unsupported operand 73"). LONG1 is the binary opcode
    Python 3 uses for the same integers, and that unpickler reads it. Only those opcodes change: nothing is
    executed here (pickletools.genops only parses), and the result still goes through weights_only=True, so
    every global the file names is checked against torch's allowlist as usual.
    """
    src, out = io.BytesIO(raw), bytearray()
    for _ in range(_LEGACY_PICKLES):
        ops = list(pickletools.genops(src))  # stops right after this pickle's STOP
        ends = [pos for _, _, pos in ops[1:]] + [src.tell()]
        for (op, arg, pos), end in zip(ops, ends, strict=True):
            if op.code != "I":
                out += raw[pos:end]
            elif isinstance(arg, bool):  # "I01\n" / "I00\n", protocol 0-1 booleans
                out += _NEWTRUE if arg else _NEWFALSE
            else:
                body = pickle.encode_long(arg)
                out += _LONG1 + bytes([len(body)]) + body
    return bytes(out) + raw[src.tell():]


def load_cdpam_state(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """FINnet's state dict from CDPAM's weights file (default: the one in the package), on the CPU.

    Always `torch.load(..., map_location="cpu", weights_only=True)`: the file holds tensors, an OrderedDict
    and numbers only, so no code from it is ever run. The shipped file needs one lossless rewrite first
    (`_reencode_text_ints`); a file torch can read as it is (re-saved by torch >= 1.6) is read directly.
    """
    path = Path(path) if path is not None else weights_path()
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported operand 73" not in str(err):
            raise
        payload = torch.load(io.BytesIO(_reencode_text_ints(path.read_bytes())), map_location="cpu",
                             weights_only=True)
    if not isinstance(payload, dict) or "state" not in payload:
        raise ValueError(f"{path} is not a CDPAM checkpoint: expected a dict with 'state' (as cdpam.CDPAM reads)")
    return dict(payload["state"])


# --- the loss ------------------------------------------------------------------------------------------


class CdpamLoss(nn.Module):
    """Mean CDPAM distance between output and target, through a frozen pretrained CDPAM (fp32, no autocast).

    `distance(output, target)` gives one value per example; calling the module gives their batch mean.
    Gradients reach `output` only: the weights have `requires_grad=False`, and the model stays in eval mode
    (BatchNorm on its running statistics) even when the surrounding module is put in train mode.

    Memory. The frozen encoder still keeps its activations for backward when its input needs gradients, and its
    first 4 layers run at the full 22.05 kHz rate with 64 to 128 channels (each keeps its conv input, its
    BatchNorm input and its activation). The target branch runs under `no_grad`. With `checkpointing=True`
    each layer of the output branch runs under `torch.utils.checkpoint` (non-reentrant): only each layer's
    input is kept and backward recomputes one layer at a time, about one more forward pass of compute in
    exchange. The values are the same either way. Figures: benchmarks/bench_losses.py.
    """

    def __init__(self, sample_rate: int = CDPAM_SAMPLE_RATE, checkpointing: bool = False,
                 resample: bool = True) -> None:
        super().__init__()
        self.sample_rate = int(sample_rate)
        # False feeds the audio at its own rate as if it were 22.05 kHz: the research log's output19 did that.
        self.resample = bool(resample)
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        self.checkpointing = bool(checkpointing)
        finnet = _import_finnet()(dev=torch.device("cpu"), **FINNET_KWARGS)
        finnet.load_state_dict(load_cdpam_state(), strict=True)
        # Only the encoder and the distance head are used (the classifier head of FINnet is not part of the distance).
        self.encoder = finnet.base_encoder
        self.dist = finnet.model_dist
        del finnet
        self.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> CdpamLoss:
        """Keep the frozen network in eval mode whatever the surrounding module does."""
        super().train(mode)
        self.encoder.eval()
        self.dist.eval()
        return self

    def prepare(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, C, T) or (B, T) audio in [-1, 1] at `sample_rate` -> (B, T') mono at 22050 Hz, int16 range, fp32."""
        if audio.dim() == 3:
            audio = audio.mean(dim=1)
        elif audio.dim() != 2:
            raise ValueError(f"CdpamLoss expects (B, C, T) or (B, T) audio, got shape {tuple(audio.shape)}")
        audio = audio.float()
        if self.resample and self.sample_rate != CDPAM_SAMPLE_RATE:
            import torchaudio.functional as AF

            audio = AF.resample(audio, self.sample_rate, CDPAM_SAMPLE_RATE)
        return audio * INT16_SCALE

    def _layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Layer i of cdpam.models.base_encoder: conv, BatchNorm, leaky ReLU 0.1, time halved after every 4th."""
        x = F.leaky_relu(self.encoder.ebatch[i](self.encoder.encoder[i](x)), 0.1)
        return x[:, :, ::2] if (i + 1) % 4 == 0 else x

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, T) prepared audio -> (B, 512) L2-normalised acoustic embedding (base_encoder + F.normalize)."""
        x = audio.unsqueeze(1)
        use_ckpt = self.checkpointing and torch.is_grad_enabled() and x.requires_grad
        for i in range(self.encoder.num_layers):
            x = checkpoint(self._layer, i, x, use_reentrant=False) if use_ckpt else self._layer(i, x)
        x = torch.sum(x, dim=2) / x.shape[2]
        acoustics, _content = torch.split(x, x.size(1) // 2, dim=1)
        return F.normalize(acoustics, dim=1)

    def distance(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """CDPAM distance of each example, shape (B,), computed in fp32 with autocast off."""
        if output.shape != target.shape:
            raise ValueError(f"output {tuple(output.shape)} and target {tuple(target.shape)} differ in shape")
        with torch.autocast(device_type=output.device.type, enabled=False):
            with torch.no_grad():
                ref = self.embed(self.prepare(target))
            return self.dist(ref, self.embed(self.prepare(output)))

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Batch mean of the CDPAM distance; a scalar."""
        return self.distance(output, target).mean()
