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

This file is the command line; beside it, ``_search_storage.py`` (storages, heartbeats, stale trials),
``_search_objectives.py`` (the objectives, the kernel file) and ``_search_summary.py`` (summary and plots).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path

import optuna
from _search_objectives import DIRECTIONS, kernel_objective, quality_objective, save_kernel_config, toy_objective
from _search_storage import Heartbeat, fail_stale_trials, open_storage
from _search_summary import write_summary
from optuna.storages import RDBStorage

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--storage", required=True, help="RDB URL (sqlite:///f.db, postgresql://...) or journal file path"
    )
    parser.add_argument("--study-name", required=True)
    parser.add_argument("--n-trials", type=int, required=True, help="trials this worker runs")
    parser.add_argument(
        "--objective",
        choices=sorted(DIRECTIONS),
        default="quality",
        help="quality: DS3-Net weights; kernel: patch_nce tiles; toy: harness self-test",
    )
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
    parser.add_argument(
        "--grace-period",
        type=int,
        default=60,
        help="a RUNNING trial without a heartbeat for this long is failed by the next worker",
    )
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
    storage = open_storage(
        args.storage,
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period,
        max_retry=args.max_retry,
    )
    study = optuna.create_study(
        storage=storage,
        study_name=args.study_name,
        direction=DIRECTIONS[args.objective],
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=args.sampler_seed, n_startup_trials=5),
        pruner=make_pruner(args.pruner),
    )
    if study.direction.name.lower() != DIRECTIONS[args.objective]:
        raise SystemExit(
            f"search: study {args.study_name!r} exists with direction {study.direction.name.lower()}, "
            f"but --objective {args.objective} {DIRECTIONS[args.objective]}s"
        )
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
