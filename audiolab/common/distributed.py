"""One run on several processes: torchrun's environment, the process group, and the few collectives a run needs.

torchrun (PyTorch's own launcher) starts one process per device and sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; `World.from_env()` reads them. The process group is opened once per process,
before the run directory is claimed (rank 0 claims it and tells the others), with gloo for CPU tensors and,
where CUDA is present, NCCL for CUDA tensors. Its timeout (`trainer.dist_timeout_s`) bounds how long a rank
waits in a collective for a rank that is stuck; a rank that dies closes its sockets, and torchrun stops the
others at once.

torch is imported inside the functions: the config layer calls this for every run, and a single-process
run must not pay for torch.distributed at start-up.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        """The world torchrun (or a submitit job of several tasks) describes in the environment; else one process."""
        _export_submitit_tasks()
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run's records, checkpoints and tracking."""
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch (ranks take equal, consecutive shares)."""
        if batch_size % self.size:
            raise ValueError(f"data.batch_size={batch_size} is not a multiple of the world size {self.size}: "
                             "every rank takes an equal share of the global batch")
        share = batch_size // self.size
        return slice(self.rank * share, (self.rank + 1) * share)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any (one small all-reduce)."""
        return bool(self.max([int(bool(flag))])[0])

    def max(self, values: list[int]) -> list[int]:
        """Each integer's maximum over the ranks, on every rank (one small all-reduce)."""
        if not self.distributed:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return [int(v) for v in tensor.tolist()]

    def mean(self, figures: dict[str, float]) -> dict[str, float]:
        """Each figure averaged over the ranks (same keys, in the same order, on every rank)."""
        if not self.distributed or not figures:
            return figures
        import torch
        import torch.distributed as dist

        values = torch.tensor(list(figures.values()), dtype=torch.float64)
        dist.all_reduce(values)
        return {k: float(v) / self.size for k, v in zip(figures, values.tolist(), strict=True)}

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj`, on every rank (picklable objects)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wait_for_all(self) -> bool:
        """Block until every rank is here; False when that failed (a rank is gone). No-op in one process."""
        if not self.distributed:
            return True
        try:
            self.max([0])
        except RuntimeError:
            return False
        return True

    def check_same(self, what: str, value: float) -> None:
        """Raise on every rank when the ranks' `value`s differ (e.g. a checksum of weights that must agree)."""
        values = self.gather(value)
        if any(v != values[0] for v in values):
            each = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
            raise RuntimeError(f"the ranks' {what} differ ({each}): something in a step is not the same on every rank")

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        boxes: list[Any] = [None] * self.size
        dist.all_gather_object(boxes, obj)
        return boxes


SINGLE = World()  # one process: the world outside torchrun


def _export_submitit_tasks() -> None:
    """In a submitit job of several tasks (`hydra/launcher=submitit_slurm` with `tasks_per_node`), set the
    variables torchrun would have set, from submitit's own view of the job (each task keeps every GPU of its
    node visible; it takes the one of its local rank)."""
    if "WORLD_SIZE" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    from submitit.helpers import TorchDistributedEnvironment

    if TorchDistributedEnvironment().world_size > 1:
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


class RankLost(RuntimeError):
    """A collective failed: another rank of the run died, or did not answer within trainer.dist_timeout_s."""


def lost_rank(err: BaseException, world: World) -> RankLost | None:
    """A RankLost explaining `err` when it is a failed collective of a distributed run, else None."""
    if not world.distributed or isinstance(err, RankLost):
        return None
    import torch.distributed as dist

    text = str(err)
    collective = isinstance(err, dist.DistError) or (isinstance(err, RuntimeError) and any(
        marker in text for marker in ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out")))
    if not collective:
        return None
    return RankLost(f"rank {world.rank} of {world.size} lost contact with another rank of the run (it died, or "
                    f"did not answer within trainer.dist_timeout_s): {type(err).__name__}: {text.strip()}")


_opened = False  # whether this process opened a process group (then it ends through `end_process`)


def init_world(timeout_s: float) -> World:
    """Open the process group once (no-op outside torchrun or when already open) and return the world."""
    world = World.from_env()
    if not world.distributed:
        return world
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        # gloo carries CPU tensors (figures, flags, objects); NCCL the gradients of CUDA models.
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        kwargs: dict[str, Any] = {}
        if torch.cuda.is_available():
            torch.cuda.set_device(world.local_rank)
            kwargs["device_id"] = torch.device("cuda", world.local_rank)
        dist.init_process_group(backend, timeout=timedelta(seconds=float(timeout_s)), **kwargs)
    global _opened
    _opened = True
    return world


def end_process(main: Callable[[], object]) -> NoReturn:
    """Run a process's `main`, then exit with its status; a torchrun rank skips the interpreter's teardown.

    After `destroy_process_group`, gloo's worker threads can still hold finished work whose tensors need the GIL
    while the interpreter is being finalised; that aborts the process ("terminate called without an active
    exception", SIGABRT, about 1 run in 12 with 2 CPU ranks here), and torchrun then reports the whole run as failed
    although every record was written. So a rank that opened a process group closes it, flushes its streams and
    logs, and leaves with `os._exit`. Outside torchrun this is a plain `SystemExit`.
    """
    try:
        main()
        code: object = 0
    except SystemExit as exit_:
        code = exit_.code
    if not _opened:
        raise SystemExit(code)
    import logging
    import sys

    close_world()
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def close_world() -> None:
    """Close the process group when one is open (at the end of a torchrun process)."""
    import sys

    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
