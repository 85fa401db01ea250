"""OmegaConf resolvers that give every Hydra job its own numbered run directory.

`hydra.run.dir` and `hydra.sweep.subdir` call `audiolab.run_dir`, which claims `outputs/outputNN`
atomically. Hydra resolves those keys exactly once per job (in `run_job`), so the resolver is not
cached; nothing else in audiolab reads them (use `hydra.runtime.output_dir` instead). The sweep
directory is resolved by the launcher and again by each job, so `audiolab.sweep_dir` is cached: Hydra
copies the resolver cache from the master config to every job's config, which keeps one sweep dir.

Under torchrun every rank composes the same config, but only rank 0 claims a number: the others receive
its directory (`audiolab.common.distributed`), so one run on N processes is one numbered run. Only rank 0
saves Hydra's `.hydra/` files there.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from audiolab.common.distributed import World, init_world
from audiolab.common.numbering import SWEEP_PREFIX, allocate
from audiolab.config.schema import ConfigError


def _run_dir(outputs: str, resume: str | None = None, dist_timeout_s: float = 600.0) -> str:
    world = init_world(float(dist_timeout_s))  # under torchrun: before the claim, which rank 0 makes alone
    if resume:
        run = Path(str(resume))
        if not (run / "run.json").is_file():
            raise ConfigError(f"resume={resume!r}: not a run directory (no run.json there)")
        return str(run.absolute())
    return str(world.broadcast(str(allocate(outputs)) if world.is_main else None))


def _sweep_dir(outputs: str) -> str:
    return str(allocate(Path(outputs) / "multirun", prefix=SWEEP_PREFIX))


def _hydra_subdir(resume: str | None = None) -> str | None:
    if not World.from_env().is_main:
        return None  # Hydra saves nothing: rank 0's copy is the run's
    # A resumed run keeps its original .hydra/ untouched; the resume's own record goes beside it.
    return ".hydra/resume" if resume else ".hydra"


CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
HIDDEN_GROUPS = ("hydra", "debug/model")  # Hydra's own, and the sizes debug= picks by itself


def _user_groups() -> str:
    """`group: option, ...` lines for `run.py --help`: the groups users pick, not the internal ones.

    Hydra's $APP_CONFIG_GROUPS also lists the typed schemas (`schema/*`) and `debug/model`, which nobody selects.
    """
    lines = []
    for group in sorted(p for p in CONF_DIR.rglob("*") if p.is_dir()):
        name = group.relative_to(CONF_DIR).as_posix()
        options = sorted(f.stem for f in group.glob("*.yaml"))
        if options and not name.startswith(HIDDEN_GROUPS):
            lines.append(f"{name}: {', '.join(options)}")
    return "\n".join(lines)


def _crop_length(samples_per_step: int, batch_size: int) -> int:
    """`${audiolab.crop_length:131072,${data.batch_size}}`: the segment that keeps samples per step fixed."""
    samples_per_step, batch_size = int(samples_per_step), int(batch_size)
    if batch_size < 1 or samples_per_step % batch_size:
        raise ValueError(f"data.batch_size={batch_size} does not divide {samples_per_step} samples per step")
    return samples_per_step // batch_size


def register_resolvers() -> None:
    """Register audiolab's resolvers once per process."""
    if not OmegaConf.has_resolver("audiolab.run_dir"):
        OmegaConf.register_new_resolver("audiolab.run_dir", _run_dir)
        OmegaConf.register_new_resolver("audiolab.sweep_dir", _sweep_dir, use_cache=True)
        OmegaConf.register_new_resolver("audiolab.hydra_subdir", _hydra_subdir)
        OmegaConf.register_new_resolver("audiolab.user_groups", _user_groups)
        OmegaConf.register_new_resolver("audiolab.crop_length", _crop_length)
