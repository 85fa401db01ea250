"""Feature-matching loss on the encoder of a frozen, pretrained DAC (Descript Audio Codec).

    terms:
      dac: {_target_: audiolab.losses.dac_features.DACFeatureLoss, weight: 1.0,
            weights: /path/to/weights.pth, sample_rate: 44100, taps: block1}

`load_dac` reads a DAC checkpoint without trusting pickled code where the format allows it;
`DACFeatureLoss` compares the encoder's intermediate activations of output and target.

Taps (module paths in `dac.DAC`; `encoder.block[0]` is the input convolution):

    "block1"        after encoder.block[1], the first EncoderBlock (64 -> 128 channels, time / 2)
    "blocks"        after each of encoder.block[1], [2], [3], [4]
    "blockN"        after encoder.block[N]
    "residual:1,2"  after encoder.block[b].block[0], [1] and [2] (the three ResidualUnits) for b in 1, 2

A list of these strings combines them (`["block1", "block3"]`, `["residual:1"]`).
"""

from __future__ import annotations

import inspect
import math
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:  # `import dac` pulls in audiotools and takes seconds: done lazily in load_dac.
    import dac

CONFIG_KEY = "loss.terms.dac.weights"
TRUST_KEY = "loss.terms.dac.trust_weights"  # the term's name where the presets put it; yours may differ
# What `python -m dac download` fetches with its defaults (dac.utils.download): the 44 kHz, 8 kbps model,
# latest tag 0.0.1, released as weights.pth and cached under ~/.cache/descript/dac/.
DEFAULT_CACHE_NAME = "weights_44khz_8kbps_0.0.1.pth"
EPS = 1e-5  # added to each tap's normaliser


def download_hint() -> str:
    """How to get the weights: the text of every missing-weights error."""
    cached = Path.home() / ".cache" / "descript" / "dac" / DEFAULT_CACHE_NAME
    return ("Get the pretrained 44 kHz, 8 kbps DAC model (released as weights.pth) once with "
            "`python -m dac download` (needs network; dac saves it as "
            f"{cached}), then pass {CONFIG_KEY}=/path/to/weights.pth, e.g. {CONFIG_KEY}={cached}")


# --- weights -------------------------------------------------------------------------------------------


def _is_torch_package(path: Path) -> bool:
    """True for a torch.package archive (what `DAC.save(path)` writes by default), False for a torch.save file."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith(".data/extern_modules") for name in archive.namelist())


def _read_checkpoint(path: Path, trust: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, constructor kwargs) from either of the two formats audiotools' BaseModel.save writes.

    Nothing in the file runs unless `trust`: the torch.package format is refused before it is opened, and
    the plain format is read with weights_only=True.
    """
    if _is_torch_package(path):
        # `DAC(...).save(path)` defaults to package=True: a torch.package holding the pickled module *and the
        # source code of dac*. It cannot be read with weights_only=True; unpickling it runs code stored in the
        # file (dac's own `DAC.load` does so without asking). Only the state dict and constructor kwargs are
        # taken from it; the model is rebuilt from the installed dac below.
        if not trust:
            raise ValueError(
                f"{path} is a torch.package archive (what dac's `DAC.save(path)` writes by default): loading it "
                f"runs the Python code stored inside it, so it was not opened and nothing in it ran. If you trust "
                f"where it came from, set {TRUST_KEY}=true; or, once, re-save it as plain weights with "
                f"`dac.DAC.load(path).save(new_path, package=False)` and point {CONFIG_KEY} at that")
        return _read_package(path)
    # The released weights.pth (and `save(path, package=False)`) is a plain torch.save of
    # {"state_dict": {name: tensor}, "metadata": {"kwargs": {constructor args}}}: tensors, numbers, strings,
    # lists and dicts only, so weights_only=True reads it and no code from the file is ever executed.
    try:
        payload = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds pickled objects other than tensors and plain containers, so it is not loaded "
            f"(weights_only=True; nothing in it ran). If you trust where it came from, set {TRUST_KEY}=true to "
            f"unpickle it in full, which runs any code in it. Unpickler said: {err}") from err
    if not isinstance(payload, dict) or "state_dict" not in payload:
        keys = list(payload)[:5] if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not a DAC checkpoint: expected a dict with 'state_dict' and 'metadata' "
                         f"(as written by dac.DAC.save), got {keys}")
    return payload["state_dict"], dict(payload.get("metadata", {}).get("kwargs", {}))


def _read_package(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict and kwargs from a torch.package DAC (runs the code in it: callers ask for trust first)."""
    from torch.package import PackageImporter

    importer = PackageImporter(str(path))
    packaged = importer.load_pickle("DAC", "DAC.pth", map_location="cpu")
    if not isinstance(packaged, nn.Module):
        raise ValueError(f"{path}: its package holds a {type(packaged).__name__} as DAC/DAC.pth, not a DAC model")
    try:
        metadata = importer.load_pickle("DAC", "DAC.metadata")
    except Exception:  # metadata is optional in a package: fall back to the module's own
        metadata = getattr(packaged, "metadata", {})
    return packaged.state_dict(), dict(metadata.get("kwargs", {}))


_WN_NEW = re.compile(r"^(.*)\.parametrizations\.weight\.original([01])$")
_WN_OLD = re.compile(r"^(.*)\.weight_([gv])$")


def _match_weight_norm_keys(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Rename weight-norm keys between the two spellings torch has used, towards what the model expects.

    The installed dac builds its convolutions with the old `torch.nn.utils.weight_norm` (keys `X.weight_g`,
    `X.weight_v`); a DAC rebuilt with `torch.nn.utils.parametrizations.weight_norm` spells them
    `X.parametrizations.weight.original0` / `original1` (same tensors: g then v).
    """
    renamed = {}
    for key, value in state.items():
        if key not in expected:
            if m := _WN_NEW.match(key):
                alt = f"{m[1]}.weight_{'g' if m[2] == '0' else 'v'}"
            elif m := _WN_OLD.match(key):
                alt = f"{m[1]}.parametrizations.weight.original{0 if m[2] == 'g' else 1}"
            else:
                alt = key
            key = alt if alt in expected else key
        renamed[key] = value
    return renamed


def load_dac(path: str | Path | None, trust: bool = False) -> dac.DAC:
    """Load a DAC checkpoint strictly (every key must match), frozen and in eval mode, on the CPU.

    Reads both formats of `dac.DAC.save`: the plain {state_dict, metadata} file (the released weights.pth,
    `save(..., package=False)`; read with weights_only=True) and the torch.package archive `save(path)` writes
    by default, which runs code and is refused unless `trust`. The model is rebuilt from the saved constructor
    kwargs with the installed dac; a `module.` prefix (DataParallel/DDP) is stripped. Unlike `DAC.load`
    (strict=False), a missing or unexpected key raises ValueError instead of silently leaving random weights.
    """
    if path is None or str(path) in ("", "None", "null"):
        raise FileNotFoundError(f"DACFeatureLoss needs DAC weights and none were given. {download_hint()}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no DAC weights at {path}. {download_hint()}")

    import dac  # noqa: F811 - lazy: see the TYPE_CHECKING import

    state, kwargs = _read_checkpoint(path, trust)
    known = inspect.signature(dac.DAC).parameters
    with warnings.catch_warnings():  # dac builds its convs with the deprecated torch.nn.utils.weight_norm
        warnings.filterwarnings("ignore", message=r".*weight_norm.*deprecated", category=FutureWarning)
        model = dac.DAC(**{k: v for k, v in kwargs.items() if k in known})
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = set(model.state_dict())
    state = _match_weight_norm_keys(state, expected)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        def some(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        raise ValueError(f"{path} does not match a dac.DAC({kwargs}): "
                         + "; ".join(part for part in (f"missing keys: {some(missing)}" if missing else "",
                                                      f"unexpected keys: {some(unexpected)}" if unexpected else "")
                                     if part))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{path} does not fit dac.DAC({kwargs}): {err}") from err
    model.requires_grad_(False)
    return model.eval()


# --- taps ----------------------------------------------------------------------------------------------

Tap = tuple[int, int | None]  # (EncoderBlock index 1..N, ResidualUnit index 0..2, or None for the block's output)
_TAP_SYNTAX = '"block1", "blocks", "blockN", "residual:1,2" or a list of these'


def parse_taps(taps: str | Sequence[str]) -> list[Tap]:
    """Tap specification -> [(block, residual unit or None)], in encoder order; ValueError naming `taps`."""
    items = [taps] if isinstance(taps, str) else list(taps) if isinstance(taps, Sequence) else None
    if not items:
        raise ValueError(f"taps={taps!r}: expected {_TAP_SYNTAX}")
    out: list[Tap] = []
    for item in items:
        spec = str(item).strip().lower().replace(" ", "")
        if spec == "blocks":
            out += [(b, None) for b in range(1, 5)]
        elif m := re.fullmatch(r"block(\d+)", spec):
            out.append((int(m[1]), None))
        elif m := re.fullmatch(r"residual:(\d+(?:,\d+)*)", spec):
            out += [(int(b), r) for b in m[1].split(",") for r in range(3)]
        else:
            raise ValueError(f"taps={taps!r}: cannot read {item!r}; expected {_TAP_SYNTAX}")
    if len(set(out)) != len(out):
        raise ValueError(f"taps={taps!r} names the same tap twice")
    return sorted(out, key=lambda t: (t[0], 3 if t[1] is None else t[1]))


def tap_name(tap: Tap) -> str:
    """Module path of a tap inside dac.DAC."""
    block, res = tap
    return f"encoder.block.{block}" + ("" if res is None else f".block.{res}")


# --- the loss ------------------------------------------------------------------------------------------


class DACFeatureLoss(nn.Module):
    """L1 between DAC-encoder features of output and target, summed over taps.

    loss = sum_tap w_tap * mean|f_tap(output) - f_tap(target)| / (mean|f_tap(target)| + 1e-5)

    - **Normalisation** (`normalize=True`): each tap's L1 is divided by the mean magnitude of that tap's target
      features (detached, computed on the batch), so it reads as a relative error and the wide, large-valued
      deep layers do not drown out the early ones; `tap_weights` then set the balance. With
      `normalize=False` the raw L1s are summed.
    - **Loudness**: DAC was trained on audio loudness-normalised to -16 dB LUFS. Its features of much quieter
      or louder audio are off the training distribution (the Snake nonlinearities and the learned scales
      assume that level), so the loss is most meaningful for audio near that loudness. The inputs are not
      normalised here: a gain would change the loss between output and target.
    - **Rates and shapes**: audio at `sample_rate` is resampled to the model's rate (44.1 kHz for the 44 kHz
      model) with torchaudio; channels are folded into the batch ((B, C, T) -> (B*C, 1, T)); the time axis is
      right-padded with zeros to a multiple of the model's hop, as `DAC.preprocess` does.
    - **Frozen**: only the encoder is kept, and only up to the deepest tap (quantizer, decoder and deeper
      layers are dropped), with weight norm folded into plain weights, `requires_grad=False` and eval mode
      (also after `.train()`). Gradients flow to `output` only. DAC's Snake activation (a TorchScript
      function that spends seconds re-profiling for every new input shape) is replaced by an eager autograd
      function computing the same formula (in at least fp32) that keeps only its input for backward; on the
      CPU the features equal those of DAC's own encoder bitwise.

    Memory. A frozen network still stores its activations when its *input* needs gradients, and the early DAC
    layers run at the full audio rate with 64-128 channels: one block1 activation is 64x the size of the
    waveform, and a ResidualUnit keeps several (Snake keeps its input and sin term, each conv its input).
    That is why the first block alone cost > 24 GB at batch 16384 samples in the original experiments. Here:
    the target branch runs under `no_grad` (nothing kept but the tap features); on CUDA both branches run in
    bf16 autocast; the encoder stops at the deepest tap; and with `checkpointing=True` the output branch runs
    each stage (input conv, each ResidualUnit, each block's Snake + strided conv) under
    `torch.utils.checkpoint` (non-reentrant). Then only each stage's input is kept (about 5 tensors per block,
    at the block's rate) and backward rebuilds one stage's internals at a time, so the extra memory is a few
    waveform-sized-times-channels tensors instead of every intermediate of every layer: about one extra
    forward pass of compute in exchange. The L1 keeps only int8 signs for backward. Figures:
    benchmarks/bench_losses.py.
    """

    def __init__(self, weights: str | None, sample_rate: int = 44100, taps: str | list[str] = "block1",
                 tap_weights: list[float] | None = None, normalize: bool = True, checkpointing: bool = True,
                 trust_weights: bool = False) -> None:
        super().__init__()
        self.taps = parse_taps(taps)  # syntax errors surface before the (slower) weight loading
        if tap_weights is None:
            tap_weights = [1.0] * len(self.taps)
        tap_weights = [float(w) for w in tap_weights]
        if len(tap_weights) != len(self.taps):
            raise ValueError(f"tap_weights has {len(tap_weights)} entries but taps={taps!r} gives {len(self.taps)} "
                             f"taps ({', '.join(tap_name(t) for t in self.taps)})")
        if any(not math.isfinite(w) or w < 0 for w in tap_weights):
            raise ValueError(f"tap_weights must be finite and >= 0, got {tap_weights}")
        self.tap_weights = tap_weights
        self.sample_rate = int(sample_rate)
        self.normalize = bool(normalize)
        self.checkpointing = bool(checkpointing)

        model = load_dac(weights, trust=bool(trust_weights))
        n_blocks = len(model.encoder_rates)
        bad = [t for t in self.taps if not 1 <= t[0] <= n_blocks]
        if bad:
            raise ValueError(f"taps={taps!r}: this DAC has EncoderBlocks 1..{n_blocks}, "
                             f"not {sorted({b for b, _ in bad})}")
        self.dac_sample_rate = int(model.sample_rate)
        self.hop_length = int(model.hop_length)
        depth = max(b for b, _ in self.taps)
        # encoder[k] is DAC's encoder.block[k]: [0] the input conv, [1..] the EncoderBlocks; deeper ones dropped.
        self.encoder = nn.Sequential(*list(model.encoder.block)[:depth + 1])
        del model  # quantizer and decoder go with it
        _fold_weight_norm(self.encoder)
        _replace_snakes(self.encoder)
        self.encoder.requires_grad_(False).eval()

        # Checkpointing units in order, each with the tap (if any) read at its output. Plain list: the modules
        # are already registered under self.encoder.
        self._stages: list[tuple[Callable[[torch.Tensor], torch.Tensor], Tap | None]] = [(self.encoder[0], None)]
        for b in range(1, depth + 1):
            units = list(self.encoder[b].block)  # ResidualUnit x3, Snake1d, strided WNConv1d
            self._stages += [(units[r], (b, r)) for r in range(3)]
            self._stages.append((nn.Sequential(*units[3:]), (b, None)))
        self._wanted = set(self.taps)

    @property
    def tap_names(self) -> list[str]:
        """Module path (in dac.DAC) of each tap, in the order of `tap_weights`."""
        return [tap_name(t) for t in self.taps]

    def train(self, mode: bool = True) -> DACFeatureLoss:
        """Keep the frozen encoder in eval mode whatever the surrounding module does."""
        super().train(mode)
        self.encoder.eval()
        return self

    def _prepare(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, C, T) at `sample_rate` -> (B*C, 1, T') at DAC's rate, T' a multiple of the hop."""
        if audio.dim() == 2:
            audio = audio.unsqueeze(1)
        if audio.dim() != 3:
            raise ValueError(f"DACFeatureLoss expects (B, C, T) audio, got shape {tuple(audio.shape)}")
        audio = audio.reshape(-1, 1, audio.shape[-1]).float()
        if self.sample_rate != self.dac_sample_rate:
            import torchaudio.functional as AF

            audio = AF.resample(audio, self.sample_rate, self.dac_sample_rate)
        right = -audio.shape[-1] % self.hop_length
        return F.pad(audio, (0, right)) if right else audio

    def _features(self, audio: torch.Tensor, use_checkpoint: bool) -> dict[Tap, torch.Tensor]:
        """Run the encoder stage by stage up to the deepest tap, collecting the tapped activations."""
        feats: dict[Tap, torch.Tensor] = {}
        x = audio
        for stage, tap in self._stages:
            x = checkpoint(stage, x, use_reentrant=False) if use_checkpoint else stage(x)
            if tap in self._wanted:
                feats[tap] = x
        return feats

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted (normalised) L1 between the tapped DAC features of output and target; a scalar."""
        if output.shape != target.shape:
            raise ValueError(f"output {tuple(output.shape)} and target {tuple(target.shape)} differ in shape")
        on_cuda = output.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda):
            with torch.no_grad():
                tgt = self._features(self._prepare(target), use_checkpoint=False)
            use_ckpt = self.checkpointing and torch.is_grad_enabled() and output.requires_grad
            out = self._features(self._prepare(output), use_checkpoint=use_ckpt)
        total = output.new_zeros((), dtype=torch.float32)
        for tap, w in zip(self.taps, self.tap_weights, strict=True):
            if w == 0:
                continue
            fo, ft = out[tap], tgt[tap]
            term = _MeanAbsDiff.apply(fo, ft.to(fo.dtype))
            if self.normalize:
                term = term / (ft.abs().mean(dtype=torch.float32) + EPS)
            total = total + w * term
        return total


def _fold_weight_norm(module: nn.Module) -> None:
    """Replace weight norm (g * v / |v|, recomputed every call) by the plain weight it yields; same values."""
    from torch.nn.utils import parametrize

    for m in module.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        elif hasattr(m, "weight_g") and hasattr(m, "weight_v"):
            torch.nn.utils.remove_weight_norm(m)



class _MeanAbsDiff(torch.autograd.Function):
    """mean|a - b| (accumulated in at least fp32) with gradient for `a` only, keeping just sign(a - b) as int8.

    `(a - b).abs().mean()` would keep the difference, one full tap-sized tensor per tap, for backward.
    """

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        diff = a - b
        ctx.save_for_backward(torch.sign(diff).to(torch.int8))
        ctx.dtype, ctx.numel = a.dtype, diff.numel()
        return diff.abs().mean(dtype=torch.promote_types(a.dtype, torch.float32))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (sign,) = ctx.saved_tensors
        return sign.to(ctx.dtype) * (grad / ctx.numel).to(ctx.dtype), None


class _SnakeFunction(torch.autograd.Function):
    """DAC's Snake, y = x + sin(alpha x)^2 / (alpha + 1e-9), computed in (at least) fp32, returned in x's dtype.

    Keeps only x and alpha for backward (autograd through the formula would keep alpha*x, sin(alpha x) and
    more, each the size of the activation) and recomputes the rest there.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, alpha)
        dt = torch.promote_types(x.dtype, torch.float32)
        xf, af = x.to(dt), alpha.to(dt)
        return (xf + (af + 1e-9).reciprocal() * torch.sin(af * xf).pow(2)).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, alpha = ctx.saved_tensors
        dt = torch.promote_types(x.dtype, torch.float32)
        xf, af, gf = x.to(dt), alpha.to(dt), grad.to(dt)
        inv = (af + 1e-9).reciprocal()
        ax = af * xf
        grad_x = grad_alpha = None
        if ctx.needs_input_grad[0]:
            # d/dx sin(ax)^2 / (a + eps) = a / (a + eps) * sin(2ax)
            grad_x = (gf * (1 + af * inv * torch.sin(2 * ax))).to(x.dtype)
        if ctx.needs_input_grad[1]:
            # d/da = x sin(2ax) / (a + eps) - sin(ax)^2 / (a + eps)^2, summed over the broadcast dims
            d = xf * torch.sin(2 * ax) * inv - torch.sin(ax).pow(2) * inv.pow(2)
            grad_alpha = (gf * d).sum(dim=[i for i in range(d.dim()) if alpha.shape[i] == 1]
                                      ).reshape(alpha.shape).to(alpha.dtype)
        return grad_x, grad_alpha


class _Snake(nn.Module):
    """Drop-in for dac.nn.layers.Snake1d (same `alpha` parameter) running `_SnakeFunction`."""

    def __init__(self, alpha: nn.Parameter) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SnakeFunction.apply(x, self.alpha)


def _replace_snakes(module: nn.Module) -> None:
    """Swap every Snake1d (a module with an `alpha` parameter and no children) for `_Snake`."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ == "Snake1d" and isinstance(getattr(child, "alpha", None), nn.Parameter):
                parent._modules[name] = _Snake(child.alpha)
