"""Optuna sweeps driven from Hydra: search space, storage, the sweeper, the trial link and review."""
