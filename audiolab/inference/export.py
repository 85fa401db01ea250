"""`audiolab export`: a run's model as a self-contained TorchScript (offline or streaming) or ONNX file.

Beside the file goes `<name>.json`: what the file expects (sample rate, channels, block size, latency in
samples) and where it came from (run, checkpoint, step).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audiolab.common.files import atomic_write_text
from audiolab.inference.convert import ExportError, NotStreamable, Streamable, StreamingVAE, streamable
from audiolab.inference.run_model import RunModel

FORMATS = ("torchscript", "onnx")


class BlockStream(nn.Module):
    """A real-time stream: `forward` takes blocks of `block` samples and returns as many, `latency` samples late.

    Blocks that divide the model's hop are gathered until a hop is full (which adds hop - block to the latency);
    blocks that are multiples of it go through at once.
    """

    def __init__(self, core: Streamable, block: int) -> None:
        super().__init__()
        hop = core.hop
        if block < 1 or (block % hop and hop % block):
            raise ValueError(f"--block {block}: a streaming block must divide the model's hop {hop} or be a multiple "
                             f"of it (e.g. {', '.join(str(b) for b in _block_examples(hop))})")
        self.core = core
        self.block, self.hop = int(block), int(hop)
        self.chunk = max(self.block, self.hop)
        self.prefill = self.hop - self.block if self.block < self.hop else 0
        self.latency = core.latency + self.prefill
        self.channels = core.channels
        self.pending = torch.zeros(0)
        self.ready = torch.zeros(0)

    @torch.jit.export
    def reset(self) -> None:
        """Start a new stream: the next block is time 0."""
        self.core.reset()
        self.pending = torch.zeros(0)
        self.ready = torch.zeros(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, channels, block) -> (B, channels, block): the model's output `latency` samples ago."""
        if x.dim() != 3 or x.shape[1] != self.channels or x.shape[-1] != self.block:
            raise RuntimeError(f"expected a block (batch, {self.channels}, {self.block})")
        if self.pending.dim() != 3 or self.pending.shape[0] != x.shape[0]:  # first block, or a new batch size
            self.core.reset()
            self.pending = x.new_zeros(x.shape[0], x.shape[1], 0)
            self.ready = x.new_zeros(x.shape[0], x.shape[1], self.prefill)
        self.pending = torch.cat([self.pending, x], dim=-1)
        while self.pending.shape[-1] >= self.chunk:
            self.ready = torch.cat([self.ready, self.core.stream(self.pending[..., :self.chunk])], dim=-1)
            self.pending = self.pending[..., self.chunk:]
        out = self.ready[..., :self.block]
        self.ready = self.ready[..., self.block:]
        return out


class FixedLength(nn.Module):
    """A model traced at one input length (its code is not TorchScript): checks the length, loops over the batch."""

    def __init__(self, traced: torch.jit.ScriptModule, channels: int, length: int) -> None:
        super().__init__()
        self.traced, self.channels, self.length = traced, int(channels), int(length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, channels, length) -> (B, channels, length)."""
        if x.dim() != 3 or x.shape[1] != self.channels or x.shape[-1] != self.length:
            raise RuntimeError(f"this export was traced for (batch, {self.channels}, {self.length}) only")
        return torch.cat([self.traced(x[i:i + 1]) for i in range(x.shape[0])], dim=0)


def _trace(model: nn.Module, channels: int, length: int) -> torch.jit.ScriptModule:
    """Trace `model` at (1, channels, length) and wrap it so that other shapes are refused, not silently wrong."""
    example = torch.randn(1, channels, length, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python code: why it is fixed length
        traced = torch.jit.trace(model, (example,), check_trace=False)
        if not torch.allclose(traced(example), model(example), atol=1e-5):
            raise ExportError(f"tracing {type(model).__name__} does not reproduce its output")
    return torch.jit.script(FixedLength(traced, channels, length))


def _block_examples(hop: int) -> list[int]:
    return sorted({max(hop // 4, 1), max(hop // 2, 1), hop, 2 * hop})


def _offline_module(run: RunModel) -> nn.Module:
    """What an offline export compiles: the rebuilt model where there is one, else the run's model itself."""
    model = copy.deepcopy(run.model).cpu().float().eval()
    try:
        return streamable(model)
    except NotStreamable:
        return model


def _first_line(err: Exception) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def _onnx_reason(err: Exception) -> str:
    """The exporter's own account of the operator it could not translate, else its first line."""
    for line in str(err).splitlines():
        if "No ONNX function found" in line or "not supported" in line:
            reason = line.split(">:", 1)[-1].strip()
            if "complex" in reason:
                reason += " (ONNX has no complex tensors)"
            return reason
    return _first_line(err)


def _script(module: nn.Module) -> torch.jit.ScriptModule:
    try:
        return torch.jit.script(module)
    except Exception as err:  # TorchScript raises many kinds; the message is what the user needs
        raise ExportError(f"TorchScript cannot compile {type(module).__name__}: {_first_line(err)}") from err


def _metadata(run: RunModel, fmt: str, module: nn.Module, streaming: BlockStream | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "format": fmt,
        "streaming": streaming is not None,
        "sample_rate": run.sample_rate,
        "channels": run.channels,
        "hop": run.hop,
        "input": f"float32 (batch, {run.channels}, samples)",
        "run": run.run_dir.name,
        "checkpoint": run.checkpoint,
        "step": run.step,
        "weights": run.weights,
        "model": str(run.cfg.model._target_),
        "task": run.task,
    }
    if streaming is not None:
        meta.update(block_size=streaming.block, latency_samples=streaming.latency,
                    latency_ms=round(1000 * streaming.latency / run.sample_rate, 2),
                    input=f"float32 blocks (batch, {run.channels}, {streaming.block}); call reset() between streams")
    else:
        meta.update(block_size=None, latency_samples=0,
                    input=f"float32 (batch, {run.channels}, any number of samples)")
    if isinstance(module, StreamingVAE):
        meta["methods"] = ["forward", "encode", "decode"] if streaming is None else ["forward", "reset"]
        meta["latent_size"] = module.latent_size
        meta["latent_rate_hz"] = run.sample_rate / run.hop
        if module.has_noise:
            meta["noise"] = ("the decoder's noise is a fixed table indexed by frame (the run's model draws a seeded "
                             "noise per call), so offline and streaming outputs agree")
    return meta


def export_run(run: RunModel, out: Path, fmt: str = "torchscript", streaming: bool = False,
               block: int | None = None) -> tuple[Path, dict[str, Any]]:
    """Write the export to `out` and its JSON beside it; return the file and the metadata."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: allowed {', '.join(FORMATS)}")
    if streaming and fmt != "torchscript":
        raise ValueError("--streaming needs --format torchscript: an ONNX graph keeps no state between calls")
    out.parent.mkdir(parents=True, exist_ok=True)
    stream: BlockStream | None = None
    fixed_length: int | None = None
    if streaming:
        core = streamable(copy.deepcopy(run.model).cpu().float().eval())
        stream = BlockStream(core, block or core.hop).eval()
        module: nn.Module = core
        _script(stream).save(str(out))
    else:
        module = _offline_module(run)
        if fmt == "torchscript":
            try:
                compiled = _script(module)
            except ExportError:  # e.g. convnext2d_spec: traced at the run's segment length instead
                compiled = _trace(module, run.channels, run.segment)
                fixed_length = run.segment
            compiled.save(str(out))
        else:
            _write_onnx(module, run, out)
    meta = _metadata(run, fmt, module, stream)
    if fixed_length is not None:
        meta.update(block_size=fixed_length, input=f"float32 (batch, {run.channels}, {fixed_length}) exactly: traced "
                    "at the run's segment length because TorchScript cannot compile the model's code; cut longer "
                    "audio into windows as `audiolab apply` does")
    meta["file"] = out.name
    atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return out, meta


def _write_onnx(module: nn.Module, run: RunModel, out: Path) -> None:
    """torch's exporter (torch.export, then onnxscript), with batch and length left dynamic."""
    example = torch.zeros(2, run.channels, 4 * run.hop)
    samples = torch.export.Dim("samples", min=1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (example,), dynamo=True, input_names=["audio"],
                                        output_names=["output"], verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch"), 2: samples},))
    except Exception as err:  # the exporter raises many kinds; its first line says which operator failed
        raise ExportError(f"torch's ONNX exporter cannot export {type(module).__name__}: {_onnx_reason(err)}") from err
    program.save(str(out))
