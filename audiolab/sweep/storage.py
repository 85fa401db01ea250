"""Where a study lives: the default SQLite file, a JournalFile, or PostgreSQL through psycopg 3.

Every process of a sweep (the sweeper, its workers, each trial's job) opens the storage from the
same URL. `storage_lock` serialises the few steps that must not race between workers: creating the
study and its schema, and the budget check around `study.ask()`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from audiolab.common.locks import file_lock
from audiolab.common.secrets import redact

log = logging.getLogger(__name__)

# Heartbeats, the stale-trial retry callback and fail_stale_trials are "experimental" in Optuna 5.0, and
# it warns that heartbeats belong to Study.optimize; audiolab drives them from ask/tell on purpose.
warnings.filterwarnings("ignore", category=ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

DEFAULT_FILE = "optuna.db"
JOURNAL_PREFIX = "journal:"
# Any fixed 64-bit number: the key of the PostgreSQL advisory lock all audiolab workers share.
_PG_LOCK_KEY = 0x617564696F6C6162


def storage_url(raw: str | None, outputs: str | Path) -> str:
    """The canonical URL for `hydra.sweeper.storage`: file paths made absolute, PostgreSQL on psycopg 3."""
    if not raw:
        return f"sqlite:///{(Path(outputs) / DEFAULT_FILE).absolute()}"
    if raw.startswith(JOURNAL_PREFIX):
        return JOURNAL_PREFIX + str(Path(raw[len(JOURNAL_PREFIX):]).expanduser().absolute())
    if raw.startswith("sqlite:///"):
        path = raw[len("sqlite:///"):]
        return raw if path.startswith("/") or path == ":memory:" else f"sqlite:///{Path(path).absolute()}"
    for scheme in ("postgresql://", "postgres://"):
        if raw.startswith(scheme):
            # SQLAlchemy's plain postgresql:// means psycopg2; audiolab ships psycopg 3.
            return "postgresql+psycopg://" + raw[len(scheme):]
    if raw.startswith(("postgresql+", "mysql", "sqlite")):
        return raw
    raise ValueError(f"hydra.sweeper.storage={redact(raw)!r}: expected null, journal:PATH, sqlite:///PATH or "
                     "postgresql://USER@HOST/DB")


def display_url(url: str) -> str:
    """The URL as logs and saved configs may show it: any password masked."""
    return redact(url)


def _file_path(url: str) -> Path | None:
    if url.startswith(JOURNAL_PREFIX):
        return Path(url[len(JOURNAL_PREFIX):])
    if url.startswith("sqlite:///") and not url.endswith(":memory:"):
        return Path(url[len("sqlite:///"):])
    return None


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A JournalStorage that also speaks Optuna's heartbeat protocol.

    Optuna 5.0 implements heartbeats only in RDBStorage, so a worker killed mid-trial on a journal
    file would leave its trial RUNNING forever. Heartbeats are kept as a trial system attribute (one
    journal line per beat); a RUNNING trial silent for `grace_period` seconds is stale, and
    `optuna.storages.fail_stale_trials` then fails it and runs the retry callback, as for RDBStorage.
    """

    HEARTBEAT_ATTR = "audiolab:heartbeat"

    def __init__(self, backend: JournalFileBackend, heartbeat_interval: int, grace_period: int,
                 stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None) -> None:
        super().__init__(backend)
        self._heartbeat_interval = heartbeat_interval
        self._grace_period = grace_period
        self._stale_trial_callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        """Stamp the trial as alive now."""
        self.set_trial_system_attr(trial_id, self.HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            last = trial.system_attrs.get(self.HEARTBEAT_ATTR)
            if last is None and trial.datetime_start is not None:
                last = trial.datetime_start.timestamp()
            if last is not None and now - float(last) > self._grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        """Seconds between heartbeats."""
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        """What to do with a stale trial once failed: re-queue it."""
        return self._stale_trial_callback


class StorageError(RuntimeError):
    """The study storage cannot be reached or opened (the message masks any password)."""


def open_storage(url: str, heartbeat_interval: int = 10, grace_period: int | None = None,
                 max_retry: int | None = 2) -> BaseStorage:
    """Open the storage behind `url`, with heartbeats and stale-trial retry; StorageError if it cannot be reached."""
    import sqlalchemy.exc

    try:
        return _open_storage(url, heartbeat_interval, grace_period, max_retry)
    except sqlalchemy.exc.SQLAlchemyError as err:
        cause = getattr(err, "orig", None) or err
        detail = (str(cause).strip() or type(cause).__name__).splitlines()[0]
        raise StorageError(f"cannot open the study storage {display_url(url)}: {redact(detail)}") from None


def _open_storage(url: str, heartbeat_interval: int, grace_period: int | None,
                  max_retry: int | None) -> BaseStorage:
    grace = grace_period or 3 * heartbeat_interval
    retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    path = _file_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith(JOURNAL_PREFIX):
        return HeartbeatJournalStorage(JournalFileBackend(str(path)), heartbeat_interval, grace, retry)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several workers write one file: wait for the lock rather than fail with "database is locked".
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    with storage_lock(url):  # concurrent first starts race on the schema (alembic_version)
        return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                          grace_period=grace, heartbeat_stale_trial_callback=retry)


@functools.cache
def _pg_engine(url: str) -> Any:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    return sqlalchemy.create_engine(url, poolclass=NullPool)


@contextlib.contextmanager
def storage_lock(url: str) -> Iterator[None]:
    """Hold a lock shared by every worker of this storage: a file lock beside a file, or a PostgreSQL advisory lock."""
    path = _file_path(url)
    if path is not None:
        # Not `<path>.lock`: JournalFileBackend's own symlink lock uses that name.
        with file_lock(path.with_name(path.name + ".audiolab-lock")):
            yield
        return
    if url.startswith("postgresql"):
        import sqlalchemy

        with _pg_engine(url).connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _PG_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_LOCK_KEY})
        return
    log.warning("no cross-process lock for %s; concurrent workers may overshoot n_trials", display_url(url))
    yield
