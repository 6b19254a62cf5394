"""benchmarks/search.py's storage: opening an Optuna storage, trial heartbeats, failing the trials of dead workers.

A killed worker loses only its running trial: every trial carries a heartbeat (host, pid, last beat) that a
:class:`Heartbeat` thread refreshes, and :func:`fail_stale_trials` marks FAIL the RUNNING trials whose process is
gone (same host) or whose heartbeat is older than the grace period (any host), re-enqueuing their parameters.
"""

from __future__ import annotations

import os
import random
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

HEARTBEAT_ATTR = "ds3kit:heartbeat"  # {"trial": number, "host": ..., "pid": ..., "time": unix seconds}
# JournalStorage and RetryFailedTrialCallback are experimental in Optuna and warn at every use.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_storage(spec: str, *, heartbeat_interval: int, grace_period: int, max_retry: int) -> BaseStorage:
    """An RDB storage for a URL (``dialect://...``), else a journal file storage at the path ``spec``."""
    if "://" in spec:
        import sqlalchemy.exc

        spec = _with_available_driver(spec)
        engine_kwargs = {"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else None
        for attempt in range(6):
            try:
                return RDBStorage(
                    spec,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    failed_trial_callback=RetryFailedTrialCallback(max_retry=max_retry) if max_retry > 0 else None,
                )
            except sqlalchemy.exc.SQLAlchemyError:
                # Workers started together race to create the schema of a new database; the loser retries.
                if attempt == 5:
                    raise
                time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)
    path = Path(spec)
    if not path.parent.is_dir():
        raise SystemExit(f"search: --storage {spec}: directory {path.parent} does not exist")
    return JournalStorage(JournalFileBackend(str(path)))


def _with_available_driver(url: str) -> str:
    """``postgresql://`` means psycopg (3) to SQLAlchemy 2.1; fall back to psycopg2 (the dev extra) when that is
    what is installed."""
    import importlib.util

    if (
        url.startswith(("postgresql://", "postgres://"))
        and importlib.util.find_spec("psycopg") is None
        and importlib.util.find_spec("psycopg2") is not None
    ):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


class Heartbeat:
    """Refreshes a trial's heartbeat attribute every ``interval`` seconds from a daemon thread."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, interval: float) -> None:
        self.storage = study._storage
        self.trial_id = trial._trial_id
        self.number = trial.number
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial.number}", daemon=True)

    def beat(self) -> None:
        value = {"trial": self.number, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT_ATTR, value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # a finished trial (or a storage hiccup): the next stale check decides
                return

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def is_stale(trial: FrozenTrial, *, grace_period: float, now: float | None = None) -> bool:
    """A RUNNING trial whose worker died: its process is gone (same host) or its heartbeat is too old.

    A heartbeat copied from an earlier trial (a retried trial inherits its system attributes) does not count; a
    trial with no heartbeat of its own is judged by its start time.
    """
    now = time.time() if now is None else now
    beat = trial.system_attrs.get(HEARTBEAT_ATTR)
    if not isinstance(beat, dict) or beat.get("trial") != trial.number:
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        return now - started > grace_period
    if beat.get("host") == socket.gethostname() and _process_gone(int(beat.get("pid", -1))):
        return True
    return now - float(beat.get("time", 0.0)) > grace_period


def fail_stale_trials(study: optuna.Study, *, grace_period: float, max_retry: int) -> list[int]:
    """Mark stale RUNNING trials FAIL (and re-enqueue their parameters up to ``max_retry`` times); their numbers."""
    storage = study._storage
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(trial, grace_period=grace_period):
            continue
        try:
            # The reason first: a finished trial takes no more attributes.
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", "stale: its worker stopped beating")
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first
        failed.append(trial.number)
        if max_retry > 0:
            RetryFailedTrialCallback(max_retry=max_retry)(study, storage.get_trial(trial._trial_id))
    if failed:
        print(f"search: marked stale trial(s) {failed} failed", file=sys.stderr)
    return failed
