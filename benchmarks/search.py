"""Optuna searches on shared storage: DS3-Net loss weights (``quality``) or patch_nce kernel tiles (``kernel``).

    python benchmarks/search.py --storage runs/search.journal --study-name weights --n-trials 20 --smoke
    python benchmarks/search.py --storage sqlite:///runs/search.db --study-name weights --n-trials 20 --pruner hyperband
    python benchmarks/search.py --storage postgresql://user@host/db --study-name tiles --objective kernel --n-trials 50

Storage: an Optuna RDB URL (``sqlite:///...``, ``postgresql://...``) or the path of a journal file
(``JournalStorage(JournalFileBackend(path))``, good on one machine or a shared file system). Workers started on
the same ``--study-name`` share it (``load_if_exists``); ``--n-trials`` counts this worker's trials; rerunning
resumes the study.

A killed worker loses only its running trial: every trial carries a heartbeat (host, pid, last beat) that a
background thread refreshes; every worker, when it starts and before each trial, fails the RUNNING trials whose
process is gone (same host) or whose heartbeat is older than ``--grace-period`` (any host), and re-enqueues their
parameters once (Optuna's RetryFailedTrialCallback). RDB storages also get Optuna's own heartbeat.

Objectives:

- ``quality`` (maximise): a short DS3-Net training per trial (``Trainer(config, build, name="ds3net")``), its
  validation brain SSIM reported at every validation so the median / Hyperband pruner can stop poor trials early.
  Each trial trains in ``<out>/trial-<number>``. ``--smoke``: the CI configuration (seconds per trial).
- ``kernel`` (minimise): Triton tile sizes / D chunk / warps / stages of the patch_nce kernels on the present GPU
  (float32, D = 256), timed on forward + backward. A sampled config is first compiled ahead of time for the GPU's
  compute capability; one whose kernels exceed its shared memory (or spill) is pruned untimed, so only configs
  that fit are searched. The best configuration is written where the dispatcher loads it
  (``$DS3KIT_CACHE`` or ``~/.cache/ds3kit``, ``kernels/patch_nce-<gpu>.json``). Needs CUDA; with
  ``TRITON_INTERPRET=1`` a tiny search runs on the CPU (to test the harness, not to tune).
- ``toy`` (minimise): an analytic function with a sleep per step. A self-test of this harness (storages, workers,
  heartbeats, pruning, summaries) that needs no torch; the tests use it. It measures nothing.

At the end the worker prints the best trial and writes ``<out>/summary.md`` (best parameters, a table of trials),
``<out>/history.png`` and ``<out>/importances.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

REPO = Path(__file__).resolve().parents[1]

HEARTBEAT_ATTR = "ds3kit:heartbeat"  # {"trial": number, "host": ..., "pid": ..., "time": unix seconds}
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DIRECTIONS = {"quality": "maximize", "kernel": "minimize", "toy": "minimize"}


# ------------------------------------------------------------------------------------------------------ storage
def open_storage(spec: str, *, heartbeat_interval: int, grace_period: int, max_retry: int) -> BaseStorage:
    """An RDB storage for a URL (``dialect://...``), else a journal file storage at the path ``spec``."""
    if "://" in spec:
        import sqlalchemy.exc

        spec = _with_available_driver(spec)
        engine_kwargs = {"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else None
        for attempt in range(6):
            try:
                return RDBStorage(
                    spec, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
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

    if url.startswith(("postgresql://", "postgres://")) and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
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


# ------------------------------------------------------------------------------------------------------ objectives
Objective = Callable[[optuna.Trial], float]


def toy_objective(args: argparse.Namespace) -> Objective:
    """Harness self-test: a quadratic bowl reported over 4 steps, ``--toy-seconds`` of sleep per trial."""

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -4.0, 4.0)
        y = trial.suggest_float("y", -4.0, 4.0)
        value = (x - 1.0) ** 2 + (y + 2.0) ** 2
        for step in range(1, 5):
            time.sleep(args.toy_seconds / 4)
            trial.report(value * (1.0 + 1.0 / step), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        if args.toy_fail_above is not None and x > args.toy_fail_above:
            raise RuntimeError(f"toy failure at x = {x:.3f}")
        return value

    return objective


def quality_objective(args: argparse.Namespace, out: Path) -> Objective:
    """DS3-Net loss weights, difficulty ramp, learning rate and PatchNCE sampling; validation brain SSIM."""
    import dataclasses

    from ds3kit.train import SMOKE_OVERRIDES, RunConfig, Trainer

    build = _load_recipe("ds3net").build
    base = RunConfig(progress=False, device=args.device, num_threads=args.threads, paired_fraction=args.paired_fraction,
                     val_every=args.val_every, steps=args.steps, checkpoint_every=10**9)
    if args.smoke:
        base = dataclasses.replace(base, **{**SMOKE_OVERRIDES, "progress": False, "checkpoint_every": 10**9})

    def objective(trial: optuna.Trial) -> float:
        options = {
            "lambda_pixel": trial.suggest_float("lambda_pixel", 10.0, 300.0, log=True),
            "lambda_nce": trial.suggest_float("lambda_nce", 0.1, 10.0, log=True),
            "lambda_feature": trial.suggest_float("lambda_feature", 0.1, 10.0, log=True),
            "lambda_image": trial.suggest_float("lambda_image", 10.0, 300.0, log=True),
            "beta_max": trial.suggest_float("beta_max", 0.0, 3.0),
            "nce_patches": trial.suggest_categorical("nce_patches", [64, 128, 256]),
            "nce_sampling": trial.suggest_categorical("nce_sampling", ["uniform", "difficulty"]),
        }
        lr = trial.suggest_float("lr", 5e-5, 1e-3, log=True)
        config = dataclasses.replace(base, out=str(out / f"trial-{trial.number}"), lr=lr, method_options=options)
        last: dict[str, float] = {}

        def on_validation(step: int, metrics: dict[str, float]) -> None:
            last.update(metrics, step=step)
            trial.report(metrics["brain_ssim"], step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"brain SSIM {metrics['brain_ssim']:.4f} at step {step}")

        report = Trainer(config, build, name="ds3net", on_validation=on_validation).fit()
        if "brain_ssim" not in last:
            raise RuntimeError("the run finished without a validation (no validation subjects?)")
        if report is not None:  # held-out figures, for the summary only: the search optimises validation SSIM
            shipped = report["models"][report["shipped"]]["mean"]
            trial.set_user_attr("test_brain_ssim", shipped.get("brain_ssim"))
            trial.set_user_attr("test_tumour_ssim", shipped.get("tumour_ssim"))
        return float(last["brain_ssim"])

    return objective


# Candidate values for every KernelConfig field (tests/benchmarks/test_search.py checks that they match).
KERNEL_CHOICES = {
    "block_m": [16, 32, 64, 128], "block_n": [16, 32, 64, 128], "num_warps": [2, 4, 8], "num_stages": [1, 2, 3, 4],
    "block_d": [None, 32, 64, 128, 256],
}


def kernel_config_fits(config: Any, capability: tuple[int, int], limit: int, dtype: str, dim: int) -> bool:
    """Whether all three patch_nce kernels compiled with ``config`` for this GPU fit it: shared memory within
    ``limit`` (the device's opt-in bytes per block) and, where ``ds3kit kernels check`` asks for it, no spills.
    Compiled ahead of time, nothing launched (``ds3kit.ops.resources``)."""
    from ds3kit.ops import resources

    arch = f"sm_{capability[0]}{capability[1]}"
    for kernel in resources.KERNEL_NAMES:
        usage = resources.compile_variant(kernel, arch, dtype, dim, config)
        if usage.shared_bytes > limit or (resources.must_not_spill(arch, dim) and usage.stack_bytes > 0):
            return False
    return True


def kernel_objective(args: argparse.Namespace) -> Objective:
    """patch_nce forward + backward time (ms, median) under one KernelConfig on this machine's GPU."""
    import torch

    from ds3kit.ops.interpreter import interpreter_on

    interpret = interpreter_on()
    if not torch.cuda.is_available() and not interpret:
        raise SystemExit("search: --objective kernel tunes Triton kernels on a CUDA GPU; this machine has none "
                         "(set TRITON_INTERPRET=1 to smoke-test the search on the CPU)")
    from ds3kit.ops import patch_nce as ops

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # One CUT layer's problem: (batch, patches, feature dim) of the query / key projections.
    dim = 256
    batch, patches = (1, 13) if interpret else (args.kernel_batch, args.nce_patches)
    generator = torch.Generator(device="cpu").manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(batch, patches, dim, generator=generator), dim=-1).to(device)
    key = torch.nn.functional.normalize(torch.randn(batch, patches, dim, generator=generator), dim=-1).to(device)
    weight = (1 + torch.rand(batch, patches, generator=generator)).to(device)
    repeats = 1 if interpret else 20

    def run() -> None:
        q = query.detach().requires_grad_(True)
        ops.PatchNCEFunction.apply(q, key, weight).sum().backward()

    def objective(trial: optuna.Trial) -> float:
        values = {name: trial.suggest_categorical(name, choices) for name, choices in KERNEL_CHOICES.items()}
        config = ops.KernelConfig(**values)
        # Only configs that fit this GPU are timed (the interpreter has no GPU to fit: every config runs there).
        if device.type == "cuda" and not kernel_config_fits(config, capability, shared_limit, "fp32", dim):
            raise optuna.TrialPruned(f"{config.short()} does not fit this GPU")
        ops.set_kernel_config(config)
        try:
            run()  # compile + warm-up; an invalid tile (shared memory, register pressure) fails the trial here
            times = []
            for _ in range(repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                run()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
        finally:
            ops.set_kernel_config(None)
        return 1000.0 * sorted(times)[len(times) // 2]

    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        shared_limit = torch.cuda.get_device_properties(device).shared_memory_per_block_optin
    name = torch.cuda.get_device_name() if device.type == "cuda" else "triton-interpret"
    objective.device_name = name  # type: ignore[attr-defined]
    objective.shape = (batch, patches, dim)  # type: ignore[attr-defined]
    return objective


def save_kernel_config(study: optuna.Study, objective: Objective) -> Path | None:
    """Write the best tiles where the dispatcher loads them (atomically; the fastest of the study wins)."""
    from ds3kit.utils.atomic import atomic_write_text

    try:
        best = study.best_trial
    except ValueError:
        return None
    from ds3kit.ops.patch_nce import kernel_cache_path

    path = kernel_cache_path(objective.device_name)  # type: ignore[attr-defined]
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "kernel": "patch_nce", "device": objective.device_name, "config": best.params,  # type: ignore[attr-defined]
        # The dispatcher uses the file for this dtype and (padded) D only; the per-GPU table elsewhere.
        "dtype": "fp32", "dim": objective.shape[2],  # type: ignore[attr-defined]
        "median_ms": best.value, "shape": list(objective.shape), "study": study.study_name,  # type: ignore[attr-defined]
        "trial": best.number, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    return path


def _load_recipe(name: str) -> Any:
    from _recipes import load_recipe

    return load_recipe(name)


# ------------------------------------------------------------------------------------------------------ summary
def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_summary(study: optuna.Study, folder: Path) -> Path:
    """``summary.md`` (best trial, every trial) and the history / importance plots, beside each other in ``folder``."""
    from ds3kit.utils.atomic import atomic_path, atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    direction = study.direction.name.lower()
    lines = [f"# Study `{study.study_name}`", "",
             f"{len(trials)} trials: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n) + ".",
             f"Direction: {direction}. Written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.", ""]
    if complete:
        best = study.best_trial
        lines += [f"## Best trial: #{best.number}, value {best.value:.6g}", "", "| parameter | value |", "|---|---|"]
        lines += [f"| {name} | {_format(value)} |" for name, value in best.params.items()]
        lines += [f"| user attr {name} | {_format(value)} |" for name, value in best.user_attrs.items()]
        lines.append("")
    else:
        lines += ["No completed trial yet.", ""]
    names = sorted({name for t in trials for name in t.params})
    lines += ["## Trials", "", "| # | state | value | seconds | " + " | ".join(names) + " |",
              "|---|---|---|---|" + "---|" * len(names)]
    for t in trials:
        seconds = t.duration.total_seconds() if t.duration is not None else None
        cells = [str(t.number), t.state.name.lower(), _format(t.value), _format(seconds)]
        cells += [_format(t.params.get(name)) for name in names]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for name, plot in (("history", _plot_history), ("importances", _plot_importances)):
        try:
            figure = plot(study, complete)
        except Exception as error:  # plotting must never cost the study its summary
            figure, reason = None, f"failed: {error}"
        else:
            reason = "needs at least 2 completed trials whose parameters vary"
        if figure is None:
            notes.append(f"- `{name}.png`: not drawn ({reason}).")
            continue
        with atomic_path(folder / f"{name}.png") as tmp:
            figure.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        import matplotlib.pyplot as plt

        plt.close(figure)
        notes.append(f"- ![{name}]({name}.png)")
    lines += ["", "## Plots", "", *notes, ""]
    path = folder / "summary.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _plot_history(study: optuna.Study, complete: list[FrozenTrial]) -> Any:
    if not complete:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization.matplotlib import plot_optimization_history

    return plot_optimization_history(study).figure


def _plot_importances(study: optuna.Study, complete: list[FrozenTrial]) -> Any:
    varying = [name for name in {n for t in complete for n in t.params}
               if len({repr(t.params.get(name)) for t in complete}) > 1]
    if len(complete) < 2 or not varying:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization.matplotlib import plot_param_importances

    return plot_param_importances(study).figure


# ------------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", required=True, help="RDB URL (sqlite:///f.db, postgresql://...) or journal file path")
    parser.add_argument("--study-name", required=True)
    parser.add_argument("--n-trials", type=int, required=True, help="trials this worker runs")
    parser.add_argument("--objective", choices=sorted(DIRECTIONS), default="quality",
                        help="quality: DS3-Net weights; kernel: patch_nce tiles; toy: harness self-test")
    parser.add_argument("--out", type=Path, default=None, help="search folder (default: runs/search/<study-name>)")
    parser.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median")
    parser.add_argument("--sampler-seed", type=int, default=None, help="TPE seed (leave unset with several workers)")
    parser.add_argument("--smoke", action="store_true", help="quality: the tiny CI configuration (seconds a trial)")
    parser.add_argument("--steps", type=int, default=300, help="quality: optimiser steps per trial (without --smoke)")
    parser.add_argument("--val-every", type=int, default=50, help="quality: validate (and report) every N steps")
    parser.add_argument("--paired-fraction", type=float, default=0.05)
    parser.add_argument("--device", default=None, help="quality: cpu, cuda ... (default: CUDA when present)")
    parser.add_argument("--threads", type=int, default=None, help="quality: torch threads of this worker")
    parser.add_argument("--nce-patches", type=int, default=256, help="kernel: patches per image of the timed problem")
    parser.add_argument("--kernel-batch", type=int, default=8, help="kernel: images of the timed problem")
    parser.add_argument("--heartbeat-interval", type=int, default=10, help="seconds between a trial's heartbeats")
    parser.add_argument("--grace-period", type=int, default=60,
                        help="a RUNNING trial without a heartbeat for this long is failed by the next worker")
    parser.add_argument("--max-retry", type=int, default=1, help="re-enqueue a stale trial's parameters this often")
    parser.add_argument("--toy-seconds", type=float, default=0.2, help=argparse.SUPPRESS)
    parser.add_argument("--toy-fail-above", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.n_trials < 0:
        parser.error(f"--n-trials must be >= 0, got {args.n_trials}")
    if args.heartbeat_interval < 1 or args.grace_period <= args.heartbeat_interval:
        parser.error("need --heartbeat-interval >= 1 and --grace-period > --heartbeat-interval")
    return args


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto", reduction_factor=3)
    return optuna.pruners.NopPruner()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or REPO / "runs" / "search" / args.study_name
    out.mkdir(parents=True, exist_ok=True)
    storage = open_storage(args.storage, heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
                           max_retry=args.max_retry)
    study = optuna.create_study(
        storage=storage, study_name=args.study_name, direction=DIRECTIONS[args.objective], load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=args.sampler_seed, n_startup_trials=5),
        pruner=make_pruner(args.pruner),
    )
    if study.direction.name.lower() != DIRECTIONS[args.objective]:
        raise SystemExit(f"search: study {args.study_name!r} exists with direction {study.direction.name.lower()}, "
                         f"but --objective {args.objective} {DIRECTIONS[args.objective]}s")
    study.set_user_attr("objective", args.objective)
    if isinstance(storage, RDBStorage):
        optuna.storages.fail_stale_trials(study)
    fail_stale_trials(study, grace_period=args.grace_period, max_retry=args.max_retry)

    if args.objective == "toy":
        objective = toy_objective(args)
    elif args.objective == "quality":
        objective = quality_objective(args, out)
    else:
        objective = kernel_objective(args)

    def run_trial(trial: optuna.Trial) -> float:
        fail_stale_trials(study, grace_period=args.grace_period, max_retry=args.max_retry)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        with Heartbeat(study, trial, args.heartbeat_interval):
            return objective(trial)

    # A trial that raises is marked FAIL (Optuna logs the error) and the worker goes on with the next one.
    study.optimize(run_trial, n_trials=args.n_trials, catch=(Exception,), gc_after_trial=True)

    summary = write_summary(study, out)
    try:
        best = study.best_trial
    except ValueError:
        print(f"search: no completed trial in study {args.study_name!r}; summary in {summary}")
        return 1
    print(f"search: best trial #{best.number}: value {best.value:.6g} with {json.dumps(best.params, sort_keys=True)}")
    print(f"search: summary in {summary}")
    if args.objective == "kernel":
        path = save_kernel_config(study, objective)
        print(f"search: best patch_nce kernel configuration written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
