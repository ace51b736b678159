"""CSV backend: one long-format row per value (step, key, value) in <run_dir>/logs/metrics.csv.

Long format because analyses add keys as they go; a wide table would need its header rewritten.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


class CsvLogger:
    def __init__(self, run_dir: Path):
        self.run_id = None
        self.folder = Path(run_dir) / "logs"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "metrics.csv"
        self._summary: dict[str, Any] = {}
        new = not self.path.exists()
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(["step", "key", "value"])

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for key, value in metrics.items():
            self._writer.writerow([step, key, value])
        self._file.flush()

    def log_figure(self, name: str, path: Path, step: int | None = None) -> None:
        pass  # figures already live in <run_dir>/plots

    def summary(self, values: dict[str, Any]) -> None:
        self._summary.update(values)
        (self.folder / "summary.json").write_text(json.dumps(self._summary, indent=2, default=str))

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        with open(self.folder / f"{name.replace('/', '_')}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)

    def close(self, exit_code: int = 0) -> None:
        self._file.close()
