"""benchmarks/search.py's summary: ``summary.md`` (best trial, every trial) and the history / importance plots."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


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
    lines = [
        f"# Study `{study.study_name}`",
        "",
        f"{len(trials)} trials: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n) + ".",
        f"Direction: {direction}. Written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
        "",
    ]
    if complete:
        best = study.best_trial
        lines += [f"## Best trial: #{best.number}, value {best.value:.6g}", "", "| parameter | value |", "|---|---|"]
        lines += [f"| {name} | {_format(value)} |" for name, value in best.params.items()]
        lines += [f"| user attr {name} | {_format(value)} |" for name, value in best.user_attrs.items()]
        lines.append("")
    else:
        lines += ["No completed trial yet.", ""]
    names = sorted({name for t in trials for name in t.params})
    lines += [
        "## Trials",
        "",
        "| # | state | value | seconds | " + " | ".join(names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
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
    varying = [
        name
        for name in {n for t in complete for n in t.params}
        if len({repr(t.params.get(name)) for t in complete}) > 1
    ]
    if len(complete) < 2 or not varying:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization.matplotlib import plot_param_importances

    return plot_param_importances(study).figure
