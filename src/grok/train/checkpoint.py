"""Checkpoint files: atomic writes, weights-only analysis checkpoints and the resume state.

Layout inside a run directory:
  checkpoints/step_0001000.pt  {"step", "model_state", "model_config", "task"}: weights only
  checkpoints/last.pt          everything needed to continue exactly (see save_resume_state)
Both load with torch.load(weights_only=True): they hold only tensors and plain containers.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIR = "checkpoints"
RESUME_FILE = "last.pt"
_STEP_FILE = re.compile(r"step_(\d+)\.pt$")


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`.

    A reader (or a restart after kill -9) sees either the old file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:07d}.pt"


def resume_path(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / RESUME_FILE


def save_weights(run_dir: Path, step: int, model: torch.nn.Module, model_config: dict,
                 task: dict) -> Path:
    path = checkpoint_path(run_dir, step)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"step": step, "model_state": state, "model_config": model_config, "task": task},
                path)
    return path


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every weights-only checkpoint, sorted by step."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    found = []
    for path in folder.glob("step_*.pt"):
        match = _STEP_FILE.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def save_resume_state(run_dir: Path, state: dict) -> None:
    atomic_save(state, resume_path(run_dir))


def load_resume_state(run_dir: Path, map_location: str | torch.device = "cpu") -> dict | None:
    path = resume_path(run_dir)
    if not path.is_file():
        return None
    return torch.load(path, map_location=map_location, weights_only=True)
