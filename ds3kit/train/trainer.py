"""The training loop every recipe shares: data streams, the step loop, validation, checkpoints, then the report.

A recipe supplies a factory ``build_method(config, total_steps) -> Method`` whose return annotation names the
method's class (the trainer reads which streams it consumes from the class, before building it once); the trainer
owns everything else:

- data: the cohort (BraTS root or the built-in phantom), a subject-level split, paired and unpaired slice streams
  whose batch for step ``s`` is a pure function of ``(seed, s)`` (so a resumed run sees the batches a straight run
  sees, and torchrun ranks split one global batch);
- the loop: kornia augmentation on the device, bf16 autocast / channels_last / torch.compile on CUDA, a linear
  learning-rate decay, a progress bar, JSONL/CSV/TensorBoard logs, periodic validation;
- checkpoints: ``checkpoints/last.pt`` (everything to resume, written atomically), and at the end one generator
  checkpoint per role (``student.pt``, ``teacher.pt``...);
- the report: ``metrics.json`` on held-out subjects (whole image, brain, tumour), predictions as NIfTI, PNG panels.

The pieces live beside this module: :mod:`ds3kit.train.batches` (step-indexed batches, :func:`prepare_batch`),
:mod:`ds3kit.train.schedule` (the learning-rate decay), :mod:`ds3kit.train.report` (the final report and table).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import sys
import time
from collections.abc import Callable, Container, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ds3kit.augment import MRIAugmentation
from ds3kit.baselines import reference_predictors
from ds3kit.checkpoint import (
    TRAINING_FORMAT,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from ds3kit.data import (
    CachedSessions,
    CachedSliceDataset,
    CohortSplit,
    PreprocessResult,
    Session,
    default_cohort,
    list_cases,
    preprocess_cases,
    split_cohort,
    step_loader,
)
from ds3kit.errors import InputError
from ds3kit.evaluation import evaluate_generator, evaluate_predictor
from ds3kit.inference import apply_calibration_fit, calibrate_generator
from ds3kit.methods.base import Method, NonFiniteLossError
from ds3kit.models.calibration import CalibrationFit
from ds3kit.train.batches import StepBatches, prepare_batch
from ds3kit.train.config import RunConfig, option_defaults
from ds3kit.train.distributed import DistributedContext, init_distributed, shutdown_distributed
from ds3kit.train.logging import RunLogger
from ds3kit.train.report import format_table, write_final_report
from ds3kit.train.schedule import LinearDecay
from ds3kit.utils.streams import stream_seed

# What validation ranks checkpoints by (``--select best-val``).
SELECTION_METRIC = "brain_psnr"

# Logged, but kept off the progress bar so the generator terms of every network fit on one line.
_QUIET_TERMS = ("beta", "d_real", "d_fake")

MethodFactory = Callable[[RunConfig, int], Method]
ValidationCallback = Callable[[int, dict[str, float]], None]


def method_type(build_method: MethodFactory) -> type[Method]:
    """The :class:`Method` subclass ``build_method`` builds, from its return annotation (``-> DS3Net``).

    The data streams depend on what the method consumes (its class attributes ``uses_paired``, ``uses_unpaired``,
    ``target_domain_only``, ``uses_reference_t1ce``), and the step count it is built for depends on the streams:
    so the class is read before anything is built, and the method is built once.
    """
    try:
        annotation = inspect.signature(build_method, eval_str=True).return_annotation
    except NameError as error:
        raise TypeError(f"the method factory's return annotation does not resolve: {error}") from None
    if not (isinstance(annotation, type) and issubclass(annotation, Method)):
        raise TypeError(
            "the method factory must annotate the Method subclass it returns, as in "
            f"`def build(config, total_steps) -> DS3Net`; {build_method!r} declares {annotation!r}"
        )
    return annotation


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return device


def training_augmentation(config: RunConfig, device: torch.device | str = "cpu") -> MRIAugmentation | None:
    """The augmentation a run applies to every training batch, on ``device``: kornia warps plus, unless
    ``config.augment_intensity`` is off, the random gamma, bias field and noise on the inputs; None without
    ``config.augment``."""
    if not config.augment:
        return None
    return MRIAugmentation(intensity=config.augment_intensity).to(device)


class Trainer:
    """Runs one training job for a method built by ``build_method``; see the module docstring."""

    def __init__(
        self,
        config: RunConfig,
        build_method: MethodFactory,
        *,
        name: str,
        on_validation: ValidationCallback | None = None,
    ) -> None:
        self.config = config
        self.build_method = build_method
        self.method_type = method_type(build_method)
        self.name = name
        self.on_validation = on_validation
        # role -> {"step", SELECTION_METRIC, "state"}: each generator at its best validation score so far.
        self.best: dict[str, dict[str, Any]] = {}
        # role -> {"steps", "state"}: with ``select == "average"``, the running mean of each generator's weights over
        # the validation checks from ``average_from`` on (the learning-rate decay's first step, set by fit()).
        self.average: dict[str, dict[str, Any]] = {}
        self.average_from = 0
        # What fit() sets up for the run: the device (``config.device`` resolved, then this rank's GPU), the process
        # group, the run's logger (rank 0 writes) and the preprocessed cache. Until then: one CPU process, no logs.
        self.device = torch.device("cpu")
        self.context = DistributedContext()
        self.log = RunLogger(Path(config.out), enabled=False)
        self.cache: PreprocessResult | None = None

    # ----------------------------------------------------------------------------------------------- set-up
    def _cohort(self) -> CohortSplit:
        cfg = self.config
        if cfg.data is not None:
            root = Path(cfg.data)
            if not root.is_dir():
                raise InputError(f"--data {root}: no such directory")
        else:
            if self.context.is_main:
                default_cohort(cases=cfg.phantom_cases, shape=cfg.phantom_shape)
            self.context.barrier()
            root = default_cohort(cases=cfg.phantom_cases, shape=cfg.phantom_shape)
        cases = list_cases(root)
        if len(cases) < 3:
            raise InputError(f"{root}: found {len(cases)} case folder(s); training needs at least 3 (train, val, test)")
        return split_cohort(
            cases,
            paired_fraction=cfg.paired_fraction,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            seed=cfg.seed,
        )

    def _preprocess(self, split: CohortSplit) -> PreprocessResult:
        """Every subject into the preprocessed cache (main rank; every bad case named before any step), then opened
        on every rank. Nothing is rebuilt by the second call: it only checks the entries and reads the manifests."""
        cfg = self.config
        cases = [*split.train_paired, *split.train_unpaired, *split.val, *split.test]
        if self.context.is_main:
            preprocess_cases(cases, cache_dir=cfg.cache_dir, workers=cfg.preprocess_workers, progress=cfg.progress)
        self.context.barrier()
        return preprocess_cases(cases, cache_dir=cfg.cache_dir, progress=False)

    def _streams(
        self, split: CohortSplit, method: type[Method]
    ) -> tuple[StepBatches | None, StepBatches | None, StepBatches | None]:
        """The paired, unpaired and reference (real T1ce of other unpaired subjects) streams ``method`` (the class)
        consumes."""
        cfg = self.config
        train = split.train_paired + split.train_unpaired
        reference_cases: list[Path] = []
        if method.target_domain_only:
            # Unpaired translation: inputs from one half of the subjects, real T1ce from the other half.
            paired_cases, unpaired_cases = train[1::2], train[0::2]
        else:
            paired_cases, unpaired_cases = split.train_paired, split.train_unpaired
            if cfg.unpaired_t1ce == "other-subjects" and method.uses_unpaired and method.uses_reference_t1ce:
                # No subject lends both: the student sees the inputs of one half, its D^S the T1ce of the other.
                if len(unpaired_cases) < 2:
                    raise InputError(
                        f"--unpaired-t1ce other-subjects needs at least 2 unpaired training subjects, the split has "
                        f"{len(unpaired_cases)}"
                    )
                unpaired_cases, reference_cases = unpaired_cases[0::2], unpaired_cases[1::2]
        wanted = (
            (method.uses_paired, paired_cases, True, "paired"),
            (method.uses_unpaired, unpaired_cases, False, "unpaired"),
            (bool(reference_cases), reference_cases, True, "reference"),
        )
        streams: list[StepBatches | None] = []
        for index, (used, cases, with_target, what) in enumerate(wanted):
            if not used:
                streams.append(None)
                continue
            if not cases:
                raise InputError(
                    f"{self.name} needs {what} training subjects, the split has none "
                    f"(paired_fraction={cfg.paired_fraction}, {len(train)} training subjects)"
                )
            dataset = CachedSliceDataset(self.cache.select(cases), with_target=with_target, image_size=cfg.image_size)
            if what in method.labelled_streams(cfg.method_options) and not any(c.has_seg for c in dataset.cases):
                raise InputError(
                    f"{self.name}'s options need tumour labels (seg) on the {what} training subjects, and none of "
                    f"the {len(dataset.cases)} has one{method.without_labels_hint(cfg.method_options)}"
                )
            repeats = stream_tumour_repeats(cfg, what, method)
            # Opt-in for the unpaired stream, so asked for in vain it is refused (the paired default lists a
            # cohort without labels uniformly, as before).
            if what == "unpaired" and repeats and not any(c.has_seg for c in dataset.cases):
                raise InputError(
                    f"--unpaired-tumour-repeats {repeats} needs tumour labels (seg) on the unpaired training subjects "
                    f"to find their tumour slices, and none of the {len(dataset.cases)} has one "
                    "(--unpaired-tumour-repeats 0 trains without)"
                )
            streams.append(
                StepBatches(
                    dataset,
                    batch_size=cfg.batch_size,
                    seed=cfg.seed,
                    stream=index,
                    context=self.context,
                    tumour_repeats=repeats,
                )
            )
        return streams[0], streams[1], streams[2]

    def _total_steps(self, paired: StepBatches | None, unpaired: StepBatches | None) -> int:
        cfg = self.config
        if cfg.epochs is None:
            return cfg.steps
        largest = max(len(s.dataset) for s in (paired, unpaired) if s is not None)
        return max(1, math.ceil(cfg.epochs * largest / (cfg.batch_size * self.context.world_size)))

    # ----------------------------------------------------------------------------------------------- run
    def fit(self) -> dict[str, Any] | None:
        """Train, then evaluate on the test subjects. Returns the metrics written to ``metrics.json``, or None when
        the run stopped early (``stop_after_steps``) with a resumable checkpoint."""
        cfg = self.config
        self.device = resolve_device(cfg.device)
        self.context = init_distributed(self.device)
        if self.context.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.context.local_rank)
            torch.cuda.set_device(self.device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        try:
            return self._fit()
        finally:
            shutdown_distributed(self.context)

    def _fit(self) -> dict[str, Any] | None:
        cfg, ctx = self.config, self.context
        run_dir = Path(cfg.out)
        last = run_dir / "checkpoints" / "last.pt"
        if last.exists() and not cfg.resume:
            raise InputError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out")
        if ctx.is_main:
            for sub in ("checkpoints", "figures", "predictions"):
                (run_dir / sub).mkdir(parents=True, exist_ok=True)
        ctx.barrier()
        self.log = RunLogger(run_dir, enabled=ctx.is_main)

        torch.manual_seed(cfg.seed)
        split = self._cohort()
        self.cache = self._preprocess(split)
        paired, unpaired, reference = self._streams(split, self.method_type)
        total = self._total_steps(paired, unpaired)
        torch.manual_seed(cfg.seed)  # identical initialisation on every rank and in every run
        method = self.build_method(cfg, total)
        if not isinstance(method, self.method_type):
            raise TypeError(
                f"{self.name}: the method factory declares {self.method_type.__name__} but built "
                f"{type(method).__name__}"
            )
        method = method.to(self.device)
        # The seed of the method's own random streams (DS3-Net's student draws from one, so its teacher draws what
        # the paired-only model draws); per rank, as the global training stream is.
        method.stream_seed = stream_seed(cfg.seed, ctx.rank)
        use_cuda = self.device.type == "cuda"
        if use_cuda and cfg.channels_last:
            method = method.to(memory_format=torch.channels_last)
        if cfg.compile:
            for module in {*method.generators().values(), *method.discriminators().values()}:
                module.compile()
        schedule = LinearDecay(total, cfg.lr_decay_fraction)
        augment = training_augmentation(cfg, self.device)

        stop_at = total if cfg.stop_after_steps is None else min(total, cfg.stop_after_steps)
        start = 0
        if cfg.resume and last.exists():
            start = self._restore(last, method, schedule)
        else:
            torch.manual_seed(cfg.seed + 7919 * ctx.rank)
        # --select average: the checks in the decay (a resumed run's, restored above, even if the flag changed since).
        self.average_from = schedule.decay_start
        if paired is not None and not method.target_domain_only:
            # Whole-subject statistics come from the stored volumes, before any augmentation; every rank reads the
            # same subjects, so every rank holds the same values without a collective.
            method.observe_paired_subjects(paired.dataset.sessions)
        val_sessions = CachedSessions(self.cache.select(split.val)) if ctx.is_main else []
        if start == 0:
            self._validate_baselines(split, val_sessions)

        # Worker processes read the slices of each step's batch; the batch of step s is still indices(s).
        workers = (
            cfg.data_workers
            if cfg.data_workers is not None
            else (min(4, (os.cpu_count() or 1) // 2) if use_cuda else 0)
        )
        loaders = [
            None
            if stream is None
            else iter(
                step_loader(
                    stream.dataset, stream.indices, start=start, stop=stop_at, num_workers=workers, pin_memory=use_cuda
                )
            )
            for stream in (paired, unpaired, reference)
        ]
        autocast = training_autocast(self.device, cfg.amp)
        bar = tqdm(
            total=total,
            initial=start,
            desc=self.name,
            unit="step",
            disable=not (cfg.progress and ctx.is_main),
            dynamic_ncols=True,
            file=sys.stderr,
        )
        method.train()
        started = time.perf_counter()
        for step in range(start, stop_at):
            method.step = step
            schedule.apply(method.optimizers.values(), step, self.config.lr)
            # Each stream's augmentation draws from its own (seed, rank, stream, step) stream: the paired batches of a
            # DS3-Net run are augmented exactly as a paired-only run's, whatever the unpaired stream draws.
            paired_batch, unpaired_batch, reference_batch = (
                prepare_batch(
                    next(loader),
                    self.device,
                    augment=augment,
                    channels_last=use_cuda and cfg.channels_last,
                    seed=stream_seed(cfg.seed, ctx.rank, index, step),
                )
                if loader is not None
                else None
                for index, loader in enumerate(loaders)
            )
            if reference_batch is not None:
                assert unpaired_batch is not None
                unpaired_batch["reference_target"] = reference_batch["target"]
                unpaired_batch["reference_brain_mask"] = reference_batch["brain_mask"]
            with autocast:
                try:
                    losses = method.training_step(paired_batch, unpaired_batch)
                except NonFiniteLossError as error:
                    bar.close()
                    raise NonFiniteLossError(f"{error}; training stopped, the last good checkpoint is {last}") from None
            done = step + 1
            bar.update(1)
            if done % cfg.log_every == 0 or done == stop_at:
                rate = (done - start) * cfg.batch_size * ctx.world_size / (time.perf_counter() - started)
                bar.set_postfix(
                    {k: f"{v:.3g}" for k, v in losses.items() if not k.endswith(_QUIET_TERMS)}, refresh=False
                )
                self.log.log(done, "train", {**losses, "images_per_s": rate})
            if done % cfg.val_every == 0 or done == total:
                self._validate(done, method, val_sessions)
            if done % cfg.checkpoint_every == 0 or done == stop_at:
                self._save(last, done, method, schedule)
        bar.close()
        if stop_at < total:
            if ctx.is_main:
                print(
                    f"{self.name}: stopped after step {stop_at} of {total}; resume with --resume --out {run_dir}",
                    file=sys.stderr,
                )
            return None
        ctx.barrier()
        return self._finish(method, split, run_dir, total) if ctx.is_main else None

    # ----------------------------------------------------------------------------------------------- state
    def _save(self, path: Path, step: int, method: Method, schedule: LinearDecay) -> None:
        if not self.context.is_main:
            return
        payload = {
            "method": self.name,
            "step": step,
            "config": self.config.to_dict(),
            "model": {k: v.detach().cpu() for k, v in method.state_dict().items()},
            "optimizers": {name: opt.state_dict() for name, opt in method.optimizers.items()},
            "schedule": schedule.state_dict(),
            "rng": capture_rng_state(),
            "best": self.best,
            "average": self.average,
        }
        save_checkpoint(path, payload, kind=TRAINING_FORMAT)

    def _restore(self, path: Path, method: Method, schedule: LinearDecay) -> int:
        payload = load_checkpoint(path, kind=TRAINING_FORMAT, map_location=self.device)
        if payload["method"] != self.name:
            raise InputError(f"{path}: a checkpoint of {payload['method']!r}, not {self.name!r}")
        options = getattr(method, "options", None)
        defaults = option_defaults(type(options)) if dataclasses.is_dataclass(options) else None
        changed = self.config.differences(payload.get("config", {}), defaults)
        if changed:
            found = ", ".join(f"{key} {old!r} (asked {new!r})" for key, (old, new) in changed.items())
            raise InputError(
                f"{path}: the run was trained with {found}; resume with its settings, or start a new run in another --out"
            )
        try:
            method.load_state_dict(payload["model"])
        except RuntimeError as error:
            raise InputError(
                f"{path}: the checkpoint's networks do not fit this configuration: {str(error).splitlines()[0]}"
            ) from None
        for name, opt in method.optimizers.items():
            opt.load_state_dict(payload["optimizers"][name])
        saved_total = payload.get("schedule", {}).get("total")
        if saved_total is not None and saved_total != schedule.total:
            # The warm-up, the difficulty ramp, the decay and the batches all depend on the run's length: a longer
            # run cannot continue this one's, it would train its last steps at a decayed-to-zero rate.
            raise InputError(
                f"{path}: the run was started for {saved_total} steps, this one asks for {schedule.total}; "
                f"resume with the same --steps / --epochs, or start a new run in another --out"
            )
        try:  # the decay the run started with, even if --lr-decay-fraction changed since
            schedule.load_state_dict(payload["schedule"])
        except ValueError as error:
            raise InputError(f"{path}: {error}") from None
        self.best = dict(payload.get("best", {}))
        self.average = dict(payload.get("average", {}))
        if self.context.is_main:
            restore_rng_state(payload["rng"])
        else:
            torch.manual_seed(self.config.seed + 7919 * self.context.rank + payload["step"])
        if self.context.is_main:
            print(f"{self.name}: resumed from {path} at step {payload['step']}", file=sys.stderr)
        return int(payload["step"])

    # ----------------------------------------------------------------------------------------------- evaluation
    def _validate(self, step: int, method: Method, sessions: Sequence[Session]) -> None:
        if self.context.is_main and sessions:
            # Scoring must not move the training's random stream: building a generator's inference copy initialises
            # new layers, so without the fork each extra model validated (DS3-Net's teacher_ema, say) would change
            # the augmentation every later step draws, and the run's trajectory with it.
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                fitted = self._score_validation(step, method, sessions)
                self._refit_calibrations(method, sessions, skip=fitted)
        else:
            self.context.barrier()
        # Every process trains on the main process's fit (the others hold no validation subjects).
        for generator, _ in method.calibrated_during_training().values():
            self.context.broadcast([generator.calibration.source, generator.calibration.target])

    def _refit_calibrations(self, method: Method, sessions: Sequence[Session], *, skip: Container[int] = ()) -> None:
        """The intensity calibrations a method trains through (``Method.calibrated_during_training``), refitted on
        the validation subjects with the weights just scored (except the generators whose ``id`` is in ``skip``,
        already fitted from the scoring's own predictions); the final report refits the shipped ones anew."""
        for generator, flips in method.calibrated_during_training().values():
            if id(generator) in skip:
                continue
            calibrate_generator(
                generator, sessions, flips=flips, device=self.device, batch_size=self.config.eval_batch_size
            )
        method.train()

    def _score_validation(self, step: int, method: Method, sessions: Sequence[Session]) -> set[int]:
        """Score every generator on the validation subjects; returns the ``id`` of each generator whose in-training
        calibration was refitted from these very predictions (those calibrated through no flips: one pass serves
        both)."""
        summary: dict[str, float] = {}
        calibrated = {id(g) for g, flips in method.calibrated_during_training().values() if flips == "none"}
        fitted: set[int] = set()
        for role, generator in method.generators().items():
            fit = None
            if id(generator) in calibrated and id(generator) not in fitted:
                fit = CalibrationFit(generator.calibration.source.numel())
            # Uncalibrated: the step is chosen on the network alone, whatever calibration it carries during training
            # (the report fits the shipped generators' calibrations after the choice).
            result = evaluate_generator(
                generator,
                sessions,
                device=self.device,
                batch_size=self.config.eval_batch_size,
                calibrate=False,
                on_prediction=None if fit is None else _counting_into(fit),
            )
            if fit is not None:
                apply_calibration_fit(generator, fit)
                fitted.add(id(generator))
            summary.update({f"{role}/{k}": v for k, v in result.mean.items()})
            score = result.mean.get(SELECTION_METRIC)
            selectable = method.has_trained(role, step)
            if selectable and score is not None and score > self.best.get(role, {}).get(SELECTION_METRIC, -math.inf):
                self.best[role] = {"step": step, SELECTION_METRIC: score, "state": _cpu_state(generator)}
                judge = method.discriminators().get(role)
                if judge is not None:  # shipped with its generator, for the reliability map: the same step's
                    self.best[role]["discriminator_state"] = _cpu_state(judge)
            if self.config.select == "average" and selectable and step >= self.average_from:
                self.average[role] = _running_mean(self.average.get(role), step, generator)
            if role == method.shipped_generator() and self.on_validation is not None:
                self.on_validation(step, result.mean)
        method.train()
        self.log.log(step, "val", summary)
        self.context.barrier()
        return fitted

    def _validate_baselines(self, split: CohortSplit, sessions: Sequence[Session]) -> None:
        """The references the learning curves are drawn against, on the validation subjects (once per run)."""
        if not self.context.is_main or not sessions:
            return
        summary: dict[str, float] = {}
        for name, predictor in reference_predictors(CachedSessions(self.cache.select(split.train_paired))).items():
            summary.update({f"{name}/{k}": v for k, v in evaluate_predictor(predictor, sessions).mean.items()})
        self.log.log(0, "val_baselines", summary)

    def _finish(self, method: Method, split: CohortSplit, run_dir: Path, total: int) -> dict[str, Any]:
        assert self.cache is not None
        report = write_final_report(
            method,
            name=self.name,
            config=self.config,
            cache=self.cache,
            split=split,
            best=self.best,
            average=self.average,
            device=self.device,
            run_dir=run_dir,
            total=total,
            precision=training_precision(self.device, self.config.amp),
        )
        self.log.close()
        print(format_table(report), file=sys.stdout)
        return report


def stream_tumour_repeats(config: RunConfig, stream: str, method: type[Method]) -> int:
    """How many extra times a stream lists each slice holding tumour: ``tumour_repeats`` for the paired stream,
    ``unpaired_tumour_repeats`` for the unpaired one, none for the reference T1ce or for unpaired translation (whose
    two halves are not the paired / unpaired split)."""
    if method.target_domain_only:
        return 0
    return {"paired": config.tumour_repeats, "unpaired": config.unpaired_tumour_repeats}.get(stream, 0)


def _running_mean(average: dict[str, Any] | None, step: int, module: torch.nn.Module) -> dict[str, Any]:
    """``average`` (``{"steps", "state"}`` or None) with ``module``'s weights at ``step`` added to its uniform mean.
    Floating-point tensors are averaged in float64 and stored in their own dtype; the others (counters) are the
    latest value."""
    current = _cpu_state(module)
    if average is None:
        return {"steps": [step], "state": current}
    count = len(average["steps"]) + 1
    state = {}
    for name, value in current.items():
        before = average["state"][name]
        if value.is_floating_point():
            value = (before.double() + (value.double() - before.double()) / count).to(value.dtype)
        state[name] = value
    return {"steps": [*average["steps"], step], "state": state}


def _counting_into(fit: CalibrationFit) -> Callable[[Session, np.ndarray], None]:
    """An ``on_prediction`` callback that counts each scored prediction into a calibration fit."""

    def count(session: Session, prediction: np.ndarray) -> None:
        fit.add(prediction, session.target, session.brain_mask)

    return count


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().clone() for name, tensor in module.state_dict().items()}


def bf16_autocast_pays(device: torch.device) -> bool:
    """Whether the training step runs under bf16 autocast on ``device``: always on CUDA; on the CPU only where
    oneDNN has native bf16 (AVX512-BF16 or AMX), which runs the generator's step about 1.7x faster
    (docs/method.md, "bf16 autocast on the CPU"); elsewhere the CPU would emulate bf16, slower than float32."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def training_precision(device: torch.device, amp: bool) -> str:
    """What the method's step runs in on ``device``: ``"bf16 autocast"`` where :func:`bf16_autocast_pays` (and
    ``amp``), else ``"float32"``. The run's report records it: the same command runs in float32 on a CPU without
    native bf16, at another speed and with other rounding."""
    return "bf16 autocast" if amp and bf16_autocast_pays(device) else "float32"


def training_autocast(device: torch.device, amp: bool) -> Any:
    """The context the method's step runs in: bf16 autocast where :func:`training_precision` says so, else nothing."""
    if training_precision(device, amp) == "bf16 autocast":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
