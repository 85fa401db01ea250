"""Optuna sweeps driven from Hydra: search space, storage, the sweeper, the trial link and review.

Kept free of imports: plain (non-sweep) runs check `TRIAL_ENV` without paying for importing Optuna.
"""

# Set by the sweeper through hydra.job.env_set: the trial a job runs, and its study.
TRIAL_ENV = "AUDIOLAB_OPTUNA_TRIAL"
STUDY_ENV = "AUDIOLAB_OPTUNA_STUDY"
