"""Run logs: JSON lines and CSV always, TensorBoard when it is installed. Only rank 0 writes."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any


class RunLogger:
    """Appends one record per call to ``metrics.jsonl`` and ``metrics.csv`` in the run directory."""

    def __init__(self, run_dir: Path, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self._csv_fields: list[str] | None = None
        self._tensorboard = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        except ImportError:  # TensorBoard is optional
            self._tensorboard = None

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record: dict[str, Any] = {"step": step, "split": split, "time": round(time.time(), 3), **values}
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self._write_csv(record)
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(f"{split}/{name}", value, step)

    def _write_csv(self, record: dict[str, Any]) -> None:
        path = self.run_dir / "metrics.csv"
        if self._csv_fields is None and path.exists():
            with open(path, encoding="utf-8") as handle:
                self._csv_fields = next(csv.reader(handle), None)
        if self._csv_fields is None:
            self._csv_fields = list(record)
            with open(path, "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerow(self._csv_fields)
        # A key first seen later (the student's losses after warm-up) widens the header once.
        new = [key for key in record if key not in self._csv_fields]
        if new:
            self._csv_fields += new
            with open(path, encoding="utf-8") as handle:
                rows = list(csv.reader(handle))[1:]
            with open(path, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(self._csv_fields)
                writer.writerows(row + [""] * (len(self._csv_fields) - len(row)) for row in rows)
        with open(path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=self._csv_fields, restval="").writerow(record)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
