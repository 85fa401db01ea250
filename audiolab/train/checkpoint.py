"""Checkpoints: atomic writes, and capture/restore of every RNG a run touches.

Checkpoints are loaded with `weights_only=True`, so everything in them is kept to tensors, numbers,
strings, lists and dicts (the RNG states included). A file that needs more is refused unless the user
says they trust it (`TRUST_FLAGS`): then it is unpickled in full, which runs whatever code it holds.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from audiolab.common.files import atomic_path


def capture_rng() -> dict[str, Any]:
    """State of python's, numpy's, torch's and CUDA's global generators."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Undo `capture_rng`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save through `atomic_path`: a crash never leaves half a file, a power loss no empty one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)  # a checkpoint-sized leftover of a process killed mid-write (rank 0 alone saves)
    # Through a file object closed on error: torch's own writer, given a path, keeps the file open for as long
    # as the exception's traceback lives, so a disk that filled up mid-write stayed full while the run recorded
    # its end (and run.json could not be written).
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        writer = _WriteErrors(f)
        try:
            torch.save(payload, writer)
        except RuntimeError:
            if writer.error is not None:  # torch reports a failed write as "unexpected pos": say what it was
                raise writer.error from None
            raise


class _WriteErrors:
    """A binary file that keeps the OSError of a failed write (ENOSPC), which torch's writer turns into text."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.error = file, None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


TRUST_FLAGS = "trainer.trust_checkpoint=true (to resume) or `audiolab evaluate --trust-checkpoint`"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely: not audiolab's tensors-only format, truncated, or tampered with."""


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", trust: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`: tensors and plain containers only, unless `trust`."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=not trust)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if trust:
            raise CheckpointError(f"{path}: cannot be read even fully unpickled (truncated or not a torch "
                                  f"file): {first}") from None
        raise CheckpointError(f"{path}: refused to load: it is not an audiolab checkpoint of tensors only "
                              f"(truncated, written by other code, or tampered with; nothing in it was run): "
                              f"{first}. Only if you trust where the file came from, load it in full with "
                              f"{TRUST_FLAGS}: that runs any code pickled in it") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: refused to load: it holds a {type(payload).__name__}, not a checkpoint")
    return payload
