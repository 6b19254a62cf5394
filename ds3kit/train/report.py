"""The final report of a training run: held-out evaluation, generator checkpoints, predictions, figures, the table.

:func:`write_final_report` runs once, on the main rank, after the last step; :func:`format_table` prints its result
as the fixed-width table a recipe ends with.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ds3kit.baselines import COPY_T1, LINEAR, ceiling_predictors, reference_predictors
from ds3kit.checkpoint import save_generator
from ds3kit.data import CachedSessions, CohortSplit, PreprocessResult, Session, save_volume
from ds3kit.evaluation import Evaluation, evaluate_generator, evaluate_predictor, session_metrics
from ds3kit.inference import calibrate_generator, synthesize_volume
from ds3kit.methods.base import Method
from ds3kit.models.calibration import IntensityCalibration
from ds3kit.reliability import edge_map, error_correlation, reliability_volume
from ds3kit.train.config import RunConfig
from ds3kit.train.figures import save_learning_curves, save_panel
from ds3kit.utils.atomic import atomic_write_text

# The report row of the segmenter run on the real T1ce (the Dice ceiling).
REAL_T1CE_ROW = "real T1ce (segmenter)"

# Test subjects drawn in the PNG panels.
_FIGURE_SUBJECTS = 4


def write_final_report(
    method: Method,
    *,
    name: str,
    config: RunConfig,
    cache: PreprocessResult,
    split: CohortSplit,
    best: Mapping[str, Mapping[str, Any]],
    device: torch.device,
    run_dir: Path,
    total: int,
    precision: str | None = None,
    average: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Evaluate every generator of ``method`` on the test subjects and write what a run leaves behind.

    With ``config.select == "best-val"`` each generator first takes its weights from ``best`` (role -> ``{"step",
    "state", ...}``, the trainer's best validation so far); with ``"average"`` from ``average`` (role -> ``{"steps",
    "state"}``, the mean of its weights at those validation checks; its discriminator stays the last step's, and
    ``report["averaged_steps"]`` lists the steps). Then, in ``run_dir``: one generator checkpoint per role
    (``checkpoints/<role>.pt``), the test predictions (``predictions/<role>/<case>_t1ce.nii.gz``, with Dice when
    ``config.segmenter`` is given), ``metrics.json`` (every model and the baselines and ceilings, per subject, mean
    and std), the PNG panels of the shipped model and the learning curves. Returns the report (``metrics.json``).
    ``precision`` is what the training step ran in (:func:`ds3kit.train.trainer.training_precision`); the report
    records it and the table's title line prints it.
    """
    cfg = config
    cases = split.test[: cfg.max_test_subjects] if cfg.max_test_subjects else split.test
    sessions = CachedSessions(cache.select(cases))  # built one at a time, when used
    report: dict[str, Any] = {
        "method": name,
        "steps": total,
        "paired_fraction": cfg.paired_fraction,
        "unpaired_t1ce": cfg.unpaired_t1ce if method.uses_reference_t1ce else None,
        # Whether the unpaired subjects' tumour labels entered training (DS3-Net's tumour-level pseudo-targets).
        "unpaired_labels": (
            ("used" if "unpaired" in type(method).labelled_streams(cfg.method_options) else "not used")
            if method.uses_unpaired and not method.target_domain_only
            else None
        ),
        "seed": cfg.seed,
        "precision": precision,
        "test_flips": cfg.test_flips,
        "shipped": method.shipped_generator(),
        "split": {key: [p.name for p in value] for key, value in vars(split).items()},
        "models": {},
    }
    references = reference_predictors(CachedSessions(cache.select(split.train_paired)))
    linear = references.get(LINEAR)
    provenance = {} if linear is None else {"linear_baseline": dataclasses.asdict(linear)}
    segmenter = _segmenter(cfg.segmenter, cases, device)
    if segmenter is not None:
        from ds3kit.segment import dice_by_subject, reference_t1ce, session_dice  # MONAI: only when asked
    evaluations: dict[str, Evaluation] = {}
    report["selected_step"] = {}
    # The validation subjects, which chose the step, also fit each shipped generator's intensity calibration.
    val_sessions = CachedSessions(cache.select(split.val)) if cfg.calibrate and split.val else None
    report["calibration"] = {}
    averaged = dict(average or {}) if cfg.select == "average" else {}
    if averaged:
        report["averaged_steps"] = {role: list(entry["steps"]) for role, entry in averaged.items()}
    for role, generator in method.generators().items():
        judge = method.discriminators().get(role)
        if cfg.select == "best-val" and role in best:
            # The validation subjects chose the step: a model past its best (over-training on few paired
            # subjects) ships as it was at its best, and the report says which step that was.
            generator.load_state_dict(best[role]["state"])
            if judge is not None and "discriminator_state" in best[role]:
                judge.load_state_dict(best[role]["discriminator_state"])
        report["selected_step"][role] = best[role]["step"] if cfg.select == "best-val" and role in best else total
        if role in averaged:
            # The mean of the weights the decay passed through; the discriminator that trained against the last of
            # them judges the average (the reliability map's).
            generator.load_state_dict(averaged[role]["state"])
            report["selected_step"][role] = averaged[role]["steps"][-1]
        calibration = _calibrate(generator, cfg, val_sessions, device)
        if calibration is not None:
            report["calibration"][role] = calibration
        # The discriminator that judged this generator ships with it: `ds3kit synthesize --difficulty` draws the
        # reliability map from it (docs/metrics.md).
        save_generator(
            run_dir / "checkpoints" / f"{role}.pt",
            generator,
            discriminator=judge,
            gan_mode=gan_mode_of(method),
            method=name,
            role=role,
            step=report["selected_step"][role],
            image_size=cfg.image_size,
            intensity="per-modality brain mean +- 3 sd -> [0, 1]",
            calibration=calibration,
            **provenance,
        )
        folder = run_dir / "predictions" / role
        folder.mkdir(parents=True, exist_ok=True)
        shown: dict[str, np.ndarray] = {}
        dice: dict[str, dict[str, float]] = {}

        reliability: dict[str, dict[str, float]] = {}

        def write(
            session: Session,
            prediction: np.ndarray,
            folder: Path = folder,
            shown: dict = shown,
            dice: dict = dice,
            judge: torch.nn.Module | None = judge,
            reliability: dict = reliability,
        ) -> None:
            # Written as made: a BraTS test set's predictions never sit in memory together.
            save_volume(folder / f"{session.case_id}_t1ce.nii.gz", prediction, session.affine, session.header)
            if len(shown) < _FIGURE_SUBJECTS:
                shown[session.case_id] = prediction
            if segmenter is not None:
                dice[session.case_id] = session_dice(segmenter, session, prediction, device=device)
            if judge is not None:
                reliability[session.case_id] = reliability_scores(
                    judge, session, prediction, gan_mode_of(method), device
                )

        uncalibrated: dict[str, dict[str, float]] = {}
        evaluation = evaluate_predictor(
            _scoring_uncalibrated(generator, cfg, device, uncalibrated), sessions, on_prediction=write
        )
        evaluation.predictions = shown
        for case_id, scores in dice.items():
            evaluation.subjects[case_id].update(scores)
        evaluations[role] = evaluation
        report["models"][role] = {"mean": evaluation.mean, "std": evaluation.std, "subjects": evaluation.subjects}
        if uncalibrated:
            # The same synthesis before the calibration, on the same subjects: what the calibration changed.
            report.setdefault("uncalibrated", {})[role] = {"mean": Evaluation(subjects=uncalibrated).mean}
        if role in averaged and role in best:
            # What best-validation selection would have shipped from the same training, on the same subjects (image
            # metrics only, calibrated alike), so one run compares the two selections; the average and its
            # calibration are put back for what follows.
            shipped = {key: value.clone() for key, value in generator.state_dict().items()}
            generator.load_state_dict(best[role]["state"])
            _calibrate(generator, cfg, val_sessions, device)
            alternative = evaluate_generator(
                generator, sessions, device=device, batch_size=cfg.eval_batch_size, flips=cfg.test_flips
            )
            generator.load_state_dict(shipped)
            report.setdefault("best_val", {})[role] = {"step": best[role]["step"], "mean": alternative.mean}
        if reliability:
            # Does the map earn its place: its correlation with |error| on the test voxels, beside a constant map's
            # (0 by definition) and the non-learned edge map's (docs/metrics.md, "Reliability map").
            keys = sorted({key for scores in reliability.values() for key in scores})
            report["models"][role]["reliability"] = {
                key: float(np.mean([scores[key] for scores in reliability.values() if key in scores])) for key in keys
            }
    report["baselines"] = {}
    ceilings = ceiling_predictors(cases, split.train_paired, split.train) or {}
    if segmenter is not None:
        # The segmenter's own ceiling: the real T1ce in place of a synthesis (Dice only: its image metrics are
        # perfect by definition).
        real = dice_by_subject(segmenter, sessions, lambda s: reference_t1ce(s, "real_t1ce"), device=device)
        evaluation = Evaluation(subjects=real)
        report["baselines"][REAL_T1CE_ROW] = {"mean": evaluation.mean, "std": evaluation.std, "subjects": real}
    for baseline, predictor in {**references, **ceilings}.items():
        evaluation = evaluate_predictor(predictor, sessions)
        if segmenter is not None and baseline == COPY_T1:
            for case_id, scores in dice_by_subject(segmenter, sessions, predictor, device=device).items():
                evaluation.subjects[case_id].update(scores)
        report["baselines"][baseline] = {
            "mean": evaluation.mean,
            "std": evaluation.std,
            "subjects": evaluation.subjects,
        }
    atomic_write_text(run_dir / "metrics.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
    _save_test_panel(method, sessions, evaluations, run_dir / "figures", name=name, device=device)
    save_learning_curves(run_dir / "figures" / "learning_curves.png", run_dir / "metrics.jsonl", title=name)
    return report


def _calibrate(
    generator: torch.nn.Module, cfg: RunConfig, sessions: CachedSessions | None, device: torch.device
) -> dict[str, Any] | None:
    """Fit ``generator``'s intensity calibration on the validation ``sessions`` (after the test-time flips the
    report applies); what the report records of it, or None when there is nothing to fit (``--no-calibrate``, no
    validation subjects, or a generator without a calibration)."""
    if not isinstance(getattr(generator, "calibration", None), IntensityCalibration):
        return None
    if sessions is None:
        # Uncalibrated as asked, even for a generator that trained through a calibration (DS3-Net's teacher under
        # calibrated_targets): it ships the identity.
        generator.calibration.reset()
        return None
    fit = calibrate_generator(generator, sessions, flips=cfg.test_flips, device=device, batch_size=cfg.eval_batch_size)
    return {
        "fitted": generator.calibration.fitted,
        "subjects": len(sessions),
        "voxels": fit.voxels,
        "flips": cfg.test_flips,
    }


def _scoring_uncalibrated(
    generator: torch.nn.Module, cfg: RunConfig, device: torch.device, scores: dict[str, dict[str, float]]
) -> Callable[[Session], np.ndarray]:
    """A predictor of the shipped (calibrated) synthesis that also scores the synthesis before its calibration into
    ``scores`` (case -> metrics), from one pass of the network."""
    calibration = getattr(generator, "calibration", None)

    def predict(session: Session) -> np.ndarray:
        raw = synthesize_volume(
            generator,
            session.inputs,
            brain_mask=session.brain_mask,
            batch_size=cfg.eval_batch_size,
            device=device,
            flips=cfg.test_flips,
            calibrate=False,
        )
        if not isinstance(calibration, IntensityCalibration) or not calibration.fitted:
            return raw
        scores[session.case_id] = session_metrics(session, raw)
        return calibration.apply(raw, session.brain_mask)

    return predict


def gan_mode_of(method: Method) -> str:
    """The GAN loss a method's discriminators were trained with (their realness depends on it)."""
    return getattr(getattr(method, "options", None), "gan_mode", "lsgan")


def reliability_scores(
    judge: torch.nn.Module, session: Session, prediction: np.ndarray, gan_mode: str, device: torch.device
) -> dict[str, float]:
    """Pearson correlation with ``|prediction - target|`` of the discriminator's reliability map and of the edge map,
    over the brain and (when the subject has one) the tumour: ``{"map/brain", "edge/brain", "map/tumour", ...}``."""
    unreliability = reliability_volume(
        prediction, judge, session.inputs, session.brain_mask, gan_mode=gan_mode, device=device
    )
    edges = edge_map(prediction, session.brain_mask)
    regions = {"brain": session.brain_mask}
    if session.seg is not None and bool((session.seg > 0).any()):
        regions["tumour"] = session.brain_mask & (session.seg > 0)
    scores = {}
    for region, mask in regions.items():
        scores[f"map/{region}"] = error_correlation(unreliability, prediction, session.target, mask)
        scores[f"edge/{region}"] = error_correlation(edges, prediction, session.target, mask)
    return scores


def _segmenter(checkpoint: str | None, cases: Sequence[Path], device: torch.device):
    """The ``--segmenter`` checkpoint, checked never to have seen the test subjects; None without one."""
    if checkpoint is None:
        return None
    from ds3kit.segment import check_held_out, check_reads_t1ce, load_segmenter

    segmenter, metadata = load_segmenter(checkpoint, device=device)
    check_reads_t1ce(metadata)
    check_held_out(metadata, [Path(case).name for case in cases])
    return segmenter


def _save_test_panel(
    method: Method,
    sessions: Sequence[Session],
    evaluations: Mapping[str, Evaluation],
    folder: Path,
    *,
    name: str,
    device: torch.device,
) -> None:
    """``test_<role>.png``: the shipped model on the first test subjects, at each one's slice with the most tumour."""
    role = method.shipped_generator()
    rows = []
    for session in sessions[:_FIGURE_SUBJECTS]:
        prediction = evaluations[role].predictions[session.case_id]
        z = _most_tumour_slice(session)
        inputs = torch.from_numpy(session.inputs[..., z][None]).to(device)
        difficulty = method.difficulty(inputs, torch.from_numpy(prediction[..., z][None, None]).to(device))
        rows.append(
            {
                "label": f"{session.case_id} z={z}",
                "T1": session.inputs[0, ..., z],
                "T2": session.inputs[1, ..., z],
                "FLAIR": session.inputs[2, ..., z],
                "real T1ce": session.target[..., z],
                "synthesis": prediction[..., z],
                "difficulty": None if difficulty is None else difficulty[0, 0].float().cpu().numpy(),
                "|error|": np.abs(prediction[..., z] - session.target[..., z]),
            }
        )
    if rows:
        save_panel(folder / f"test_{role}.png", rows, title=f"{name}: {role} on held-out subjects")


def _most_tumour_slice(session: Session) -> int:
    if session.seg is not None and session.seg.any():
        return int(np.argmax((session.seg > 0).sum(axis=(0, 1))))
    return int(np.argmax(session.brain_mask.sum(axis=(0, 1))))


_TABLE_COLUMNS = ("brain_ssim", "brain_psnr", "brain_mse", "tumour_ssim", "tumour_psnr", "tumour_mse")
_DICE_COLUMNS = ("dice_et", "dice_tc", "dice_wt")


def format_table(report: Mapping[str, Any]) -> str:
    """The held-out results as a fixed-width table: mean ± std over subjects, brain and tumour.

    One row per trained model, then the references of ``report["baselines"]`` (copy-T1, linear, and on phantom data
    the ceilings). A model whose brain PSNR does not beat copy-T1 is flagged; the last column gives each model's
    brain PSNR relative to copy-T1, and a footer how far the shipped model is from each ceiling.
    """
    baselines = report.get("baselines", {})
    rows_means = [r["mean"] for r in [*report["models"].values(), *baselines.values()]]
    columns = _TABLE_COLUMNS + tuple(c for c in _DICE_COLUMNS if any(c in mean for mean in rows_means))
    floor = baselines.get(COPY_T1, {}).get("mean", {}).get("brain_psnr")
    width = max([10, *(len(name) + 2 for name in [*report["models"], *baselines])])
    header = f"{'model':<{width}}" + "".join(f"{c:>18}" for c in columns) + "   brain PSNR vs copy-T1"
    lines = [
        f"{report['method']}: held-out subjects, {report['steps']} steps, paired fraction {report['paired_fraction']}"
        + (f", unpaired T1ce: {report['unpaired_t1ce']}" if report.get("unpaired_t1ce") else "")
        + (f", unpaired tumour labels: {report['unpaired_labels']}" if report.get("unpaired_labels") else "")
        + (f", step in {report['precision']}" if report.get("precision") else "")
        + (f", test-time flips: {report['test_flips']}" if report.get("test_flips") else ""),
        header,
        "-" * len(header),
    ]

    def row(name: str, result: Mapping[str, Any], trained: bool) -> str:
        mean, std = result["mean"], result["std"]
        cells = [f"{mean[c]:.4f} ± {std.get(c, 0.0):.4f}" if c in mean else "n/a" for c in columns]
        relative = ""
        if floor is not None and "brain_psnr" in mean and name != COPY_T1:
            gain = mean["brain_psnr"] - floor
            relative = f"{gain:+.2f} dB" + ("  LOSES TO COPY-T1" if trained and gain <= 0 else "")
        return f"{name:<{width}}" + "".join(f"{cell:>18}" for cell in cells) + f"   {relative}".rstrip()

    for role, result in report["models"].items():
        lines.append(row(role, result, trained=True))
    if baselines:
        lines.append("-" * len(header))
        for name, result in baselines.items():
            lines.append(row(name, result, trained=False))
    shipped = report["models"].get(report.get("shipped", ""), {}).get("mean", {})
    gaps = [
        f"{name[len('ceiling: ') :]} {result['mean']['brain_psnr'] - shipped['brain_psnr']:.2f} dB"
        for name, result in baselines.items()
        if name.startswith("ceiling") and "brain_psnr" in result["mean"] and "brain_psnr" in shipped
    ]
    if gaps:
        lines.append(f"{report.get('shipped')}: brain PSNR below the ceilings by " + ", ".join(gaps))
    fitted = [role for role, entry in report.get("calibration", {}).items() if entry.get("fitted")]
    if fitted:
        raw = report.get("uncalibrated", {})
        changes = [
            f"{role} {report['models'][role]['mean']['brain_psnr'] - raw[role]['mean']['brain_psnr']:+.2f} dB"
            for role in fitted
            if "brain_psnr" in raw.get(role, {}).get("mean", {}) and "brain_psnr" in report["models"][role]["mean"]
        ]
        subjects = report["calibration"][fitted[0]]["subjects"]
        lines.append(
            f"intensity calibration fitted on {subjects} validation subjects (--no-calibrate: off); brain PSNR "
            "against the uncalibrated synthesis: " + (", ".join(changes) or "n/a")
        )
    reliability = report["models"].get(report.get("shipped", ""), {}).get("reliability", {})
    if reliability:
        regions = [r for r in ("brain", "tumour") if f"map/{r}" in reliability]
        lines.append(
            f"{report.get('shipped')}: reliability map's correlation with |error| (constant map: 0) "
            + ", ".join(
                f"{r} {reliability[f'map/{r}']:+.3f} (edge map {reliability[f'edge/{r}']:+.3f})" for r in regions
            )
        )
    return "\n".join(lines)
