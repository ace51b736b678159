"""CSV backend: one long-format row per value (step, key, value) in <run_dir>/logs/metrics.csv,
and the summary values in <run_dir>/logs/summary.json.

Long format because analyses add keys as they go; a wide table would need its header rewritten.
The files belong to the run directory, so every job that logs into it (the training run, a resumed
fragment, `grok.analyze` afterwards) adds to them: a value logged again for the same step and key
(steps redone after a crash, an analysis run again) replaces the earlier one, and summary values
merge with those already saved. Rows are appended as they come (a crash loses nothing) and the
file is rewritten with one row per (step, key) when a job opens or closes it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from grok.files import atomic_write

HEADER = ["step", "key", "value"]

log = logging.getLogger(__name__)


def read_rows(path: Path) -> dict[tuple[str, str], str]:
    """{(step, key): value} of a metrics.csv, the last value of each pair, in first-seen order.
    A row cut short by a crash (fewer than three fields) is dropped."""
    rows: dict[tuple[str, str], str] = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) == 3 and row != HEADER:
                rows[(row[0], row[1])] = row[2]
    return rows


def read_summary(path: Path) -> dict[str, Any]:
    """The saved summary values to merge with; a damaged file (it is rewritten whole by each
    job, so only by hand or a disk error) is replaced, with a warning, by this job's values."""
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text())
    except ValueError:
        values = None
    if not isinstance(values, dict):
        log.warning("%s is damaged; rewriting it with this job's summary values only", path)
        return {}
    return values


def csv_text(rows: dict[tuple[str, str], str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(HEADER)
    writer.writerows([step, key, value] for (step, key), value in rows.items())
    return out.getvalue()


class CsvLogger:
    def __init__(self, run_dir: Path):
        self.run_id = None
        self.folder = Path(run_dir) / "logs"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "metrics.csv"
        self.summary_path = self.folder / "summary.json"
        self._summary = read_summary(self.summary_path)
        self._deduplicate()
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)

    def _deduplicate(self) -> None:
        rows = read_rows(self.path) if self.path.is_file() else {}
        atomic_write(self.path, lambda f: f.write(csv_text(rows).encode()))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for key, value in metrics.items():
            self._writer.writerow([step, key, value])
        self._file.flush()

    def log_figure(self, name: str, path: Path, step: int | None = None) -> None:
        pass  # figures already live in <run_dir>/plots

    def summary(self, values: dict[str, Any]) -> None:
        self._summary.update(values)
        text = json.dumps(self._summary, indent=2, default=str)
        atomic_write(self.summary_path, lambda f: f.write(text.encode()))

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        with open(self.folder / f"{name.replace('/', '_')}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)

    def close(self, exit_code: int = 0) -> None:
        self._file.close()
        self._deduplicate()
