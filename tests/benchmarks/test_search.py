"""benchmarks/search.py: workers sharing a study, a killed worker, failed trials, summaries.

The harness tests use ``--objective toy`` (an analytic function with a sleep: the search machinery without any
training); one test runs a real ``quality --smoke`` trial through the trainer, one a ``kernel`` search under
Triton's CPU interpreter.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[2]
SEARCH = REPO / "benchmarks" / "search.py"


# benchmarks/ is on pytest's pythonpath: the command and its sibling modules import by name.
import _search_objectives  # noqa: E402
import _search_storage  # noqa: E402
import _search_summary  # noqa: E402
import search  # noqa: E402


def _storage_spec(kind: str, tmp_path: Path) -> str:
    if kind == "journal":
        return str(tmp_path / "study.journal")
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    url = os.environ.get("DS3KIT_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("DS3KIT_TEST_POSTGRES_URL is not set (source .ci/postgres.sh to start a local PostgreSQL)")
    return url


def _worker(storage: str, study: str, out: Path, n_trials: int, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable,
        str(SEARCH),
        "--storage",
        storage,
        "--study-name",
        study,
        "--n-trials",
        str(n_trials),
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)


def _finish(process: subprocess.Popen, timeout: float = 120) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def _load(storage: str, study: str) -> optuna.Study:
    return optuna.load_study(
        study_name=study,
        storage=_search_storage.open_storage(storage, heartbeat_interval=1, grace_period=5, max_retry=0),
    )


def _states(study: optuna.Study) -> list[TrialState]:
    return [trial.state for trial in study.get_trials(deepcopy=False)]


TOY = ("--objective", "toy", "--pruner", "none", "--heartbeat-interval", "1", "--grace-period", "5")


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgres"])
def test_two_workers_share_one_study(tmp_path: Path, kind: str) -> None:
    storage, study_name = _storage_spec(kind, tmp_path), f"two-workers-{uuid.uuid4().hex[:8]}"
    workers = [
        _worker(storage, study_name, tmp_path / "out", trials, *TOY, "--toy-seconds", "0.4") for trials in (3, 4)
    ]
    outputs = [_finish(worker) for worker in workers]
    study = _load(storage, study_name)
    assert _states(study).count(TrialState.COMPLETE) == 7, outputs
    assert len(study.trials) == 7
    workers_seen = {trial.user_attrs["worker"] for trial in study.trials}
    assert len(workers_seen) == 2, "both workers should have run trials of the one study"
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert f"Best trial: #{study.best_trial.number}" in summary
    assert (tmp_path / "out" / "history.png").stat().st_size > 0
    assert (tmp_path / "out" / "importances.png").stat().st_size > 0
    # Rerunning resumes the study: its trials are added to the same study.
    _finish(_worker(storage, study_name, tmp_path / "out", 1, *TOY, "--toy-seconds", "0"))
    assert _states(_load(storage, study_name)).count(TrialState.COMPLETE) == 8


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgres"])
def test_killed_worker_leaves_the_study_usable(tmp_path: Path, kind: str) -> None:
    storage, study_name = _storage_spec(kind, tmp_path), f"killed-{uuid.uuid4().hex[:8]}"
    victim = _worker(storage, study_name, tmp_path / "out", 1, *TOY, "--toy-seconds", "120")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert victim.poll() is None, victim.communicate()[0]
            assert time.monotonic() < deadline, "the victim never started a trial"
            try:
                # Kill inside the trial's sleep, after it drew all its parameters: a kill between the trial's
                # creation and its suggestions would leave nothing to retry (a race seen on a loaded machine).
                running = [
                    t for t in _load(storage, study_name).get_trials(deepcopy=False) if t.state == TrialState.RUNNING
                ]
                if running and set(running[0].params) == {"x", "y"}:
                    break
            except KeyError:  # the study does not exist yet
                pass
            time.sleep(0.3)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.communicate()
    assert _states(_load(storage, study_name)) == [TrialState.RUNNING]  # nobody has checked yet

    _finish(_worker(storage, study_name, tmp_path / "out", 2, *TOY, "--toy-seconds", "0.2"))
    trials = _load(storage, study_name).get_trials(deepcopy=False)
    assert [t.state for t in trials].count(TrialState.RUNNING) == 0
    assert trials[0].state == TrialState.FAIL
    assert [t.state for t in trials[1:]] == [TrialState.COMPLETE, TrialState.COMPLETE]
    # The killed trial's parameters were tried again (once), by the next worker.
    assert trials[1].params == trials[0].params
    assert trials[1].system_attrs.get("failed_trial") == trials[0].number


def _frozen_running(number: int, beat: dict | None, started: float) -> optuna.trial.FrozenTrial:
    return optuna.trial.FrozenTrial(
        number=number,
        state=TrialState.RUNNING,
        value=None,
        values=None,
        datetime_start=datetime.datetime.fromtimestamp(started),
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={},
        system_attrs={} if beat is None else {_search_storage.HEARTBEAT_ATTR: beat},
        intermediate_values={},
        trial_id=number,
    )


def test_stale_rule() -> None:
    now = time.time()
    other_host = {"trial": 3, "host": "elsewhere-" + socket.gethostname(), "pid": 1, "time": now - 2}
    assert not _search_storage.is_stale(_frozen_running(3, other_host, now - 100), grace_period=10, now=now)
    assert _search_storage.is_stale(
        _frozen_running(3, {**other_host, "time": now - 11}, now - 100), grace_period=10, now=now
    )
    # A dead process on this host is stale at once, whatever its last beat.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = {"trial": 3, "host": socket.gethostname(), "pid": dead.pid, "time": now}
    assert _search_storage.is_stale(_frozen_running(3, here, now), grace_period=10, now=now)
    assert not _search_storage.is_stale(_frozen_running(3, {**here, "pid": os.getpid()}, now), grace_period=10, now=now)
    # A beat inherited from another trial (a retry) does not count: the start time decides.
    assert not _search_storage.is_stale(
        _frozen_running(4, {**here, "pid": os.getpid()}, now - 5), grace_period=10, now=now
    )
    assert _search_storage.is_stale(
        _frozen_running(4, {**here, "pid": os.getpid()}, now - 50), grace_period=10, now=now
    )


def test_failed_trials_are_marked_and_the_worker_goes_on(tmp_path: Path) -> None:
    storage = _storage_spec("journal", tmp_path)
    process = _worker(storage, "failing", tmp_path / "out", 3, *TOY, "--toy-seconds", "0", "--toy-fail-above", "-10")
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1, output  # no completed trial: nothing to call best
    assert _states(_load(storage, "failing")) == [TrialState.FAIL] * 3
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "No completed trial yet." in summary and "3 fail" in summary
    assert "history.png`: not drawn" in summary


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        search.parse_args(["--storage", "x", "--study-name", "s", "--n-trials", "1", "--objective", "nope"])
    with pytest.raises(SystemExit):
        search.parse_args(
            [
                "--storage",
                "x",
                "--study-name",
                "s",
                "--n-trials",
                "1",
                "--grace-period",
                "1",
                "--heartbeat-interval",
                "2",
            ]
        )
    with pytest.raises(SystemExit, match="does not exist"):
        _search_storage.open_storage(
            str(tmp_path / "missing" / "j.log"), heartbeat_interval=1, grace_period=5, max_retry=0
        )


@pytest.mark.slow
def test_one_real_quality_trial(tmp_path: Path) -> None:
    storage = _storage_spec("journal", tmp_path)
    env = {**os.environ, "DS3KIT_CACHE": str(tmp_path / "cache")}
    command = [
        sys.executable,
        str(SEARCH),
        "--storage",
        storage,
        "--study-name",
        "quality",
        "--n-trials",
        "1",
        "--objective",
        "quality",
        "--smoke",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "out"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (trial,) = _load(storage, "quality").trials
    assert trial.state == TrialState.COMPLETE, result.stderr
    assert 0.0 < trial.value <= 1.0  # validation brain SSIM
    assert trial.intermediate_values, "validation SSIM was never reported to the trial"
    assert (tmp_path / "out" / "trial-0" / "metrics.json").is_file()
    assert "best trial #0" in result.stdout


def test_kernel_choices_cover_every_kernel_config_field() -> None:
    from ds3kit.ops.patch_nce import KernelConfig

    assert set(_search_objectives.KERNEL_CHOICES) == {field.name for field in dataclasses.fields(KernelConfig)}
    for name, values in _search_objectives.KERNEL_CHOICES.items():
        for value in values:
            KernelConfig(**{name: value})  # every candidate is a valid configuration


def test_kernel_search_writes_the_file_the_dispatcher_loads(tmp_path: Path, monkeypatch) -> None:
    from ds3kit.ops import patch_nce as ops

    storage, cache = _storage_spec("journal", tmp_path), tmp_path / "cache"
    env = {**os.environ, "DS3KIT_CACHE": str(cache), "TRITON_INTERPRET": "1"}
    command = [
        sys.executable,
        str(SEARCH),
        "--storage",
        storage,
        "--study-name",
        "kernel",
        "--n-trials",
        "3",
        "--objective",
        "kernel",
        "--pruner",
        "none",
        "--out",
        str(tmp_path / "out"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    study = _load(storage, "kernel")
    assert _states(study).count(TrialState.COMPLETE) == 3
    monkeypatch.setenv("DS3KIT_CACHE", str(cache))
    written = ops.kernel_cache_path("triton-interpret")  # the interpreter's stand-in for a GPU name
    assert str(written) in result.stdout
    payload = json.loads(written.read_text())
    assert payload["config"] == study.best_trial.params and payload["median_ms"] == study.best_trial.value
    # A GPU of that name gets the best trial's tiles from the dispatcher.
    monkeypatch.setattr(ops, "_gpu_name", lambda device: "triton-interpret")
    ops.clear_kernel_config_cache()
    try:
        assert ops.get_kernel_config("cuda") == ops.KernelConfig(**study.best_trial.params)
    finally:
        ops.clear_kernel_config_cache()


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # Optuna's matplotlib plots
def test_summary_lists_the_best_trial_and_every_trial(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="summary", direction="minimize")
    study.add_trial(
        optuna.trial.create_trial(
            params={"x": 0.5},
            distributions={"x": optuna.distributions.FloatDistribution(-1.0, 1.0)},
            value=0.25,
            user_attrs={"note": "kept"},
        )
    )
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, state=TrialState.FAIL))
    path = _search_summary.write_summary(study, tmp_path / "out")
    text = path.read_text()
    assert path == tmp_path / "out" / "summary.md"
    assert "2 trials: 1 complete, 1 fail." in text and "## Best trial: #0, value 0.25" in text
    assert "| x | 0.5 |" in text and "| user attr note | kept |" in text
    assert "| 1 | fail |" in text
    assert "`importances.png`: not drawn (needs at least 2 completed trials" in text
