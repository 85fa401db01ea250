"""Layers that compute a trained model's arithmetic both on a whole signal and as a stream of chunks.

Why written here: RAVE's `cached_conv` package makes each convolution causal (all padding on the left), which
changes what a model trained with centred padding computes, so its stream would not equal the run's own output.
These layers keep the trained, centred arithmetic and delay the output instead:

* every layer has `forward` (the whole signal, padded exactly as the model pads it) and `stream` (one chunk; the
  layer keeps the past it needs as state);
* a layer's stream output at frame m is its offline output at frame m - out_delay (frames of its own rate);
  `in_delay` is what it receives from upstream. Branches that meet (a skip, a residual, two decoder heads) are
  lined up with `Delay`;
* frames that stand for time before the start (the first in_delay frames of a layer's input) are zeroed, because
  offline that is the zero padding; without it a bias upstream would leak into the first outputs;
* a chunk holds a whole number of every layer's strides (the caller feeds multiples of the model's hop).

All of it is TorchScript: `torch.jit.script` compiles `forward`, `stream` and `reset`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _mask_start(x: torch.Tensor, seen: int, delay: int) -> torch.Tensor:
    """Zero the frames of x whose stream index (seen + i) is below delay."""
    if seen >= delay:
        return x
    k = min(delay - seen, x.shape[-1])
    return torch.cat([torch.zeros_like(x[..., :k]), x[..., k:]], dim=-1)


class Conv(nn.Module):
    """conv1d with the model's left/right zero padding offline, and a cache of the input's past when streaming."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1, dilation: int = 1,
                 groups: int = 1, pad: tuple[int, int] = (0, 0), in_delay: int = 0) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", (bias if bias is not None else weight.new_zeros(weight.shape[0])).detach().clone())
        self.stride, self.dilation, self.groups = int(stride), int(dilation), int(groups)
        self.pad_left, self.pad_right = int(pad[0]), int(pad[1])
        self.span = self.dilation * (int(weight.shape[-1]) - 1) + 1
        cache = self.span - self.stride
        if cache < 0:
            raise ValueError(f"a conv whose stride {stride} exceeds its span {self.span} cannot stream")
        # The extra delay lines the conv's windows up with the offline ones: (cache + delay - pad) % stride == 0.
        align = (self.pad_left - cache - in_delay) % self.stride
        while cache + in_delay + align - self.pad_left < 0:
            align += self.stride
        self.in_delay = int(in_delay)
        self.state_len = cache + align
        self.out_delay = (cache + in_delay + align - self.pad_left) // self.stride
        self.seen = 0
        self.state = torch.zeros(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The whole signal, zero-padded as the model pads it."""
        x = F.pad(x, (self.pad_left, self.pad_right))
        return F.conv1d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    @torch.jit.export
    def reset(self) -> None:
        """Forget the stream: the next chunk is time 0."""
        self.seen = 0
        self.state = torch.zeros(0)

    @torch.jit.export
    def stream(self, x: torch.Tensor) -> torch.Tensor:
        """One chunk of a whole number of strides in, as many output frames out."""
        x = _mask_start(x, self.seen, self.in_delay)
        self.seen += x.shape[-1]
        if self.state.dim() != 3 or self.state.shape[0] != x.shape[0]:
            self.state = x.new_zeros(x.shape[0], x.shape[1], self.state_len)
        buf = torch.cat([self.state.to(x.dtype), x], dim=-1)
        n = x.shape[-1] // self.stride
        y = F.conv1d(buf[..., :(n - 1) * self.stride + self.span], self.weight, self.bias, self.stride, 0,
                     self.dilation, self.groups)
        self.state = buf[..., n * self.stride:]
        return y


class ConvTranspose(nn.Module):
    """conv_transpose1d cropped as the model crops it; when streaming, the overlap tail is carried to the next chunk.

    `bias` is (channels, period): the bias of output sample u is bias[:, u % period] (period 1 for a plain
    transposed conv; a depth-to-space path adds one that repeats with the stride).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride: int, crop_left: int, groups: int = 1,
                 in_delay: int = 0) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.stride, self.crop_left, self.groups = int(stride), int(crop_left), int(groups)
        self.tail_len = int(weight.shape[-1]) - self.stride
        if self.tail_len < self.crop_left:
            raise ValueError(f"kernel {weight.shape[-1]} too short for stride {stride} and crop {crop_left}")
        self.in_delay = int(in_delay)
        self.out_delay = self.in_delay * self.stride + self.crop_left
        self.seen = 0
        self.emitted = 0
        self.tail = torch.zeros(0)

    def _bias(self, start: int, length: int, like: torch.Tensor) -> torch.Tensor:
        period = self.bias.shape[-1]
        if period == 1:
            return self.bias.to(like.dtype)
        index = torch.remainder(torch.arange(start, start + length, device=like.device), period)
        return self.bias.to(like.dtype)[:, index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, N) -> (B, C', N * stride)."""
        n = x.shape[-1] * self.stride
        z = F.conv_transpose1d(x, self.weight, None, self.stride, 0, 0, self.groups)
        return z[..., self.crop_left:self.crop_left + n] + self._bias(0, n, z)

    @torch.jit.export
    def reset(self) -> None:
        """Forget the stream: the next chunk is time 0."""
        self.seen = 0
        self.emitted = 0
        self.tail = torch.zeros(0)

    @torch.jit.export
    def stream(self, x: torch.Tensor) -> torch.Tensor:
        """One chunk of N frames in, N * stride samples out."""
        x = _mask_start(x, self.seen, self.in_delay)
        self.seen += x.shape[-1]
        z = F.conv_transpose1d(x, self.weight, None, self.stride, 0, 0, self.groups)
        if self.tail.dim() != 3 or self.tail.shape[0] != x.shape[0]:
            self.tail = z.new_zeros(z.shape[0], z.shape[1], self.tail_len)
        z = torch.cat([z[..., :self.tail_len] + self.tail.to(z.dtype), z[..., self.tail_len:]], dim=-1)
        n = x.shape[-1] * self.stride
        self.tail = z[..., n:]
        out = z[..., :n] + self._bias(self.emitted - self.out_delay, n, z)
        self.emitted += n
        return out


class Delay(nn.Module):
    """Nothing offline; a FIFO of `frames` frames when streaming (lines up branches that meet)."""

    def __init__(self, frames: int) -> None:
        super().__init__()
        if frames < 0:
            raise ValueError(f"a delay of {frames} frames")
        self.frames = int(frames)
        self.state = torch.zeros(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The identity."""
        return x

    @torch.jit.export
    def reset(self) -> None:
        """Forget the stream."""
        self.state = torch.zeros(0)

    @torch.jit.export
    def stream(self, x: torch.Tensor) -> torch.Tensor:
        """x, `frames` frames later."""
        if self.frames == 0:
            return x
        if self.state.dim() != 3 or self.state.shape[0] != x.shape[0]:
            self.state = x.new_zeros(x.shape[0], x.shape[1], self.frames)
        buf = torch.cat([self.state.to(x.dtype), x], dim=-1)
        self.state = buf[..., x.shape[-1]:]
        return buf[..., :x.shape[-1]]


class Pointwise(nn.Module):
    """A layer that acts on each time step alone (activation, norm, affine): the same offline and streaming."""

    def __init__(self, layer: nn.Module, delay: int) -> None:
        super().__init__()
        self.layer = layer
        self.in_delay = self.out_delay = int(delay)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer."""
        return self.layer(x)

    @torch.jit.export
    def reset(self) -> None:
        """Nothing to forget."""
        pass

    @torch.jit.export
    def stream(self, x: torch.Tensor) -> torch.Tensor:
        """The layer."""
        return self.layer(x)


class Chain(nn.Module):
    """Layers one after the other."""

    def __init__(self, layers: list[nn.Module], in_delay: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.in_delay = int(in_delay)
        self.out_delay = int(layers[-1].out_delay) if layers else self.in_delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Each layer's forward in turn."""
        for layer in self.layers:
            x = layer(x)
        return x

    @torch.jit.export
    def reset(self) -> None:
        """Reset every layer."""
        for layer in self.layers:
            layer.reset()

    @torch.jit.export
    def stream(self, x: torch.Tensor) -> torch.Tensor:
        """Each layer's stream in turn."""
        for layer in self.layers:
            x = layer.stream(x)
        return x


class Residual(nn.Module):
    """x + body(x), with x delayed by what the body adds when streaming."""

    def __init__(self, body: Chain) -> None:
        super().__init__()
        self.body = body
        self.skip = Delay(body.out_delay - body.in_delay)
        self.in_delay, self.out_delay = body.in_delay, body.out_delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + body(x)."""
        return x + self.body(x)

    @torch.jit.export
    def reset(self) -> None:
        """Reset both paths."""
        self.body.reset()
        self.skip.reset()

    @torch.jit.export
    def stream(self, x: torch.Tensor) -> torch.Tensor:
        """The delayed x plus the body's stream."""
        return self.skip.stream(x) + self.body.stream(x)
