"""Device and precision choice."""

from __future__ import annotations

import os

import torch

# Set by the sweeper for trials packed onto one GPU (hydra.sweeper.trials_per_device=K): 1/K each.
MEMORY_FRACTION_ENV = "AUDIOLAB_CUDA_MEMORY_FRACTION"


def pick_device(spec: str = "auto", local_rank: int | None = None) -> torch.device:
    """CUDA when present (or asked for), else CPU; under torchrun, the GPU of this process's local rank."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"trainer.device={spec!r} but CUDA is not available here; use trainer.device=auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank or 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        limit_memory(device)
    return device


def limit_memory(device: torch.device) -> None:
    """Cap this process's share of the GPU when the sweeper packed several trials onto it."""
    fraction = os.environ.get(MEMORY_FRACTION_ENV)
    if fraction:
        torch.cuda.set_per_process_memory_fraction(float(fraction), device)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """bf16 autocast on CUDA (when supported) for `auto`, explicit `bf16` anywhere, else None (fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory so far: allocated tensors on CUDA, the process's resident set on CPU (GiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def autocast(device: torch.device | str, amp: torch.dtype | None) -> torch.autocast:
    """Mixed precision for a forward pass: `amp` autocast on `device`, or off when amp is None."""
    device_type = device if isinstance(device, str) else device.type
    return torch.autocast(device_type, dtype=amp or torch.float32, enabled=amp is not None)
