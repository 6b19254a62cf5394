"""benchmarks/search.py's objectives: ``quality`` (DS3-Net loss weights), ``kernel`` (patch_nce tiles), ``toy``.

Each ``*_objective(args, ...)`` returns the function of one trial that ``study.optimize`` runs; :data:`DIRECTIONS`
says whether the study maximises or minimises it. The search's docstring (``python benchmarks/search.py --help``)
and docs/benchmarks.md describe what each one searches.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

DIRECTIONS = {"quality": "maximize", "kernel": "minimize", "toy": "minimize"}


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
    base = RunConfig(
        progress=False,
        device=args.device,
        num_threads=args.threads,
        paired_fraction=args.paired_fraction,
        val_every=args.val_every,
        steps=args.steps,
        checkpoint_every=10**9,
    )
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
    "block_m": [16, 32, 64, 128],
    "block_n": [16, 32, 64, 128],
    "num_warps": [2, 4, 8],
    "num_stages": [1, 2, 3, 4],
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
        raise SystemExit(
            "search: --objective kernel tunes Triton kernels on a CUDA GPU; this machine has none "
            "(set TRITON_INTERPRET=1 to smoke-test the search on the CPU)"
        )
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
        "kernel": "patch_nce",
        "device": objective.device_name,
        "config": best.params,  # type: ignore[attr-defined]
        # The dispatcher uses the file for this dtype and (padded) D only; the per-GPU table elsewhere.
        "dtype": "fp32",
        "dim": objective.shape[2],  # type: ignore[attr-defined]
        "median_ms": best.value,
        "shape": list(objective.shape),
        "study": study.study_name,  # type: ignore[attr-defined]
        "trial": best.number,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    return path


def _load_recipe(name: str) -> Any:
    from _recipes import load_recipe

    return load_recipe(name)
