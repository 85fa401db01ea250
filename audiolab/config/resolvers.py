"""OmegaConf resolvers that give every Hydra job its own numbered run directory.

`hydra.run.dir` and `hydra.sweep.subdir` call `audiolab.run_dir`, which claims `outputs/outputNN`
atomically. Hydra resolves those keys exactly once per job (in `run_job`), so the resolver is not
cached; nothing else in audiolab reads them (use `hydra.runtime.output_dir` instead). The sweep
directory is resolved by the launcher and again by each job, so `audiolab.sweep_dir` is cached: Hydra
copies the resolver cache from the master config to every job's config, which keeps one sweep dir.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from audiolab.common.numbering import SWEEP_PREFIX, allocate
from audiolab.config.schema import ConfigError


def _run_dir(outputs: str, resume: str | None = None) -> str:
    if resume:
        run = Path(str(resume))
        if not (run / "run.json").is_file():
            raise ConfigError(f"resume={resume!r}: not a run directory (no run.json there)")
        return str(run.absolute())
    return str(allocate(outputs))


def _sweep_dir(outputs: str) -> str:
    return str(allocate(Path(outputs) / "multirun", prefix=SWEEP_PREFIX))


def _hydra_subdir(resume: str | None = None) -> str:
    # A resumed run keeps its original .hydra/ untouched; the resume's own record goes beside it.
    return ".hydra/resume" if resume else ".hydra"


def register_resolvers() -> None:
    """Register audiolab's resolvers once per process."""
    if not OmegaConf.has_resolver("audiolab.run_dir"):
        OmegaConf.register_new_resolver("audiolab.run_dir", _run_dir)
        OmegaConf.register_new_resolver("audiolab.sweep_dir", _sweep_dir, use_cache=True)
        OmegaConf.register_new_resolver("audiolab.hydra_subdir", _hydra_subdir)
