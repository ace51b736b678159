"""Loggers behind one small protocol: W&B, CSV, none and in-memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grok.tracking.base import InMemoryLogger, Logger, NullLogger
from grok.tracking.csv_logger import CsvLogger

__all__ = ["InMemoryLogger", "Logger", "NullLogger", "CsvLogger", "build_logger"]


def build_logger(backend: str, run_dir: Path, **wandb_args: Any) -> Logger:
    """backend is wandb, csv or none; wandb_args go to WandbLogger (project, group, name, ...)."""
    if backend == "wandb":
        from grok.tracking.wandb_logger import WandbLogger

        return WandbLogger(run_dir, **wandb_args)
    if backend == "csv":
        return CsvLogger(run_dir)
    if backend == "none":
        return NullLogger()
    raise ValueError(f"unknown logger backend {backend!r}; choose wandb, csv or none")
