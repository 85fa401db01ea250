"""Train one run, or a grid of runs with `-m`: `python run.py [-m] [overrides...]`.

Every run gets its own numbered directory `outputs/outputNN`; see README.md.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from audiolab.config import ConfigError, register_configs
from audiolab.config.resolvers import register_resolvers

register_configs()
register_resolvers()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Hydra task: train (or resume) and return the best val/spec_loss for sweepers to minimise."""
    from audiolab.app import in_optuna_trial, launch_from_hydra
    from audiolab.common.distributed import RankLost, close_world
    from audiolab.data.folder import DataError
    from audiolab.runs.session import RunBusy, RunFailed, RunInterrupted
    from audiolab.train.checkpoint import CheckpointError

    if in_optuna_trial():
        # The sweeper records a failed trial (already told to the study) and goes on: exceptions, not exits.
        return launch_from_hydra(cfg)
    try:
        return launch_from_hydra(cfg)
    except ConfigError as err:
        print(f"audiolab: config error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except CheckpointError as err:
        print(f"audiolab: checkpoint error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except DataError as err:
        print(f"audiolab: data error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except RunBusy as err:
        print(f"audiolab: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except RunFailed:
        raise SystemExit(1) from None
    except RankLost as err:
        print(f"audiolab: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except RunInterrupted as err:
        raise SystemExit(128 + err.signum) from None
    finally:
        close_world()  # under torchrun: leave the process group before exiting


if __name__ == "__main__":
    from audiolab.common.distributed import end_process

    end_process(main)
