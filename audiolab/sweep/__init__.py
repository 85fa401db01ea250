"""Optuna sweeps driven from Hydra: search space, storage, the sweeper, the trial link and review."""

import warnings

from optuna.exceptions import ExperimentalWarning

# Heartbeats, the stale-trial retry callback and fail_stale_trials are "experimental" in Optuna 5.0, and
# it warns that heartbeats belong to Study.optimize; audiolab drives them from ask/tell on purpose.
warnings.filterwarnings("ignore", category=ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
