"""The logger protocol every backend implements, and the in-memory backend tests assert on."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Logger(Protocol):
    """Where metrics, figures and summary values go besides the run directory."""

    run_id: str | None  # kept in the resume state so a resumed run logs into the same run

    def log(self, metrics: dict[str, Any], step: int) -> None: ...

    def log_figure(self, name: str, path: Path, step: int | None = None) -> None: ...

    def summary(self, values: dict[str, Any]) -> None: ...

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None: ...

    def close(self, exit_code: int = 0) -> None: ...


class NullLogger:
    run_id = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def log_figure(self, name: str, path: Path, step: int | None = None) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        pass

    def close(self, exit_code: int = 0) -> None:
        pass


class InMemoryLogger:
    """Keeps everything in lists; for tests and notebooks."""

    def __init__(self) -> None:
        self.run_id = None
        self.rows: list[tuple[int, dict[str, Any]]] = []
        self.figures: list[tuple[str, Path, int | None]] = []
        self.summary_values: dict[str, Any] = {}
        self.tables: dict[str, tuple[list[str], list[list[Any]]]] = {}
        self.closed = False

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.rows.append((step, dict(metrics)))

    def log_figure(self, name: str, path: Path, step: int | None = None) -> None:
        self.figures.append((name, Path(path), step))

    def summary(self, values: dict[str, Any]) -> None:
        self.summary_values.update(values)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.tables[name] = (list(columns), [list(r) for r in rows])

    def close(self, exit_code: int = 0) -> None:
        self.closed = True
