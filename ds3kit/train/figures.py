"""PNG panels a person reads at a glance: inputs, truth, synthesis, difficulty map, error map."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ds3kit.utils.atomic import atomic_path  # noqa: E402

COLUMNS = ("T1", "T2", "FLAIR", "real T1ce", "synthesis", "difficulty", "|error|")


def save_panel(path: str | Path, rows: Sequence[dict[str, np.ndarray]], *, title: str = "") -> None:
    """One row per slice; each row maps a column name of :data:`COLUMNS` to a 2-D array (missing ones stay blank).

    Images are shown in [0, 1]; the difficulty map on its own range (colour bar); the error in [0, 0.5].
    """
    figure, axes = plt.subplots(
        len(rows), len(COLUMNS), figsize=(2.0 * len(COLUMNS), 2.1 * len(rows) + 0.4), squeeze=False
    )
    for r, row in enumerate(rows):
        for c, column in enumerate(COLUMNS):
            axis = axes[r, c]
            axis.set_axis_off()
            if r == 0:
                axis.set_title(column, fontsize=9)
            image = row.get(column)
            if image is None:
                continue
            image = np.rot90(np.asarray(image, dtype=np.float32))  # axial slices, anterior up
            if column == "difficulty":
                shown = axis.imshow(image, cmap="magma")
                figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.02)
            elif column == "|error|":
                shown = axis.imshow(image, cmap="inferno", vmin=0.0, vmax=0.5)
                figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.02)
            else:
                axis.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
        if "label" in row:
            axes[r, 0].text(
                -0.08,
                0.5,
                str(row["label"]),
                transform=axes[r, 0].transAxes,
                rotation=90,
                va="center",
                ha="right",
                fontsize=8,
            )
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)


def save_learning_curves(path: str | Path, log_path: str | Path, *, title: str = "") -> None:
    """Validation brain PSNR and SSIM against step, one line per model, from a run's ``metrics.jsonl``.

    The references logged once as ``val_baselines`` (copy-T1, linear) are drawn as horizontal lines, so a model
    that never clears copying its input, or that peaks and falls back (over-training), shows at a glance.
    Writes nothing when the log holds no validation record.
    """
    import json

    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    references: dict[str, dict[str, float]] = {}
    with open(log_path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            for key, value in record.items():
                if "/" not in key or not isinstance(value, (int, float)):
                    continue
                name, metric = key.rsplit("/", 1)
                if metric not in ("brain_psnr", "brain_ssim"):
                    continue
                if record.get("split") == "val":
                    curves.setdefault(metric, {}).setdefault(name, []).append((int(record["step"]), float(value)))
                elif record.get("split") == "val_baselines":
                    references.setdefault(metric, {})[name] = float(value)
    if not curves:
        return
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
    for axis, (metric, label) in zip(axes[0], (("brain_psnr", "brain PSNR (dB)"), ("brain_ssim", "brain SSIM"))):
        for name, points in sorted(curves.get(metric, {}).items()):
            steps, values = zip(*sorted(points))
            axis.plot(steps, values, marker="o", markersize=3, label=name)
        for (name, value), style in zip(sorted(references.get(metric, {}).items()), ("--", ":", "-.")):
            axis.axhline(value, color="grey", linestyle=style, linewidth=1, label=name)
        axis.set_xlabel("step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"{title}: validation subjects" if title else "validation subjects", fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)
