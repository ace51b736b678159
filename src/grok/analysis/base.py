"""What an analyzer receives and returns.

An analyzer is a read-only observer: it gets one checkpoint's model, the probe inputs and the one
shared forward pass over them, and returns named scalars and arrays. It never trains, never writes
files and never imports wandb; the runner decides when it runs and where results go.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from grok.data.splits import Split
from grok.data.tasks import Task
from grok.model import ModelOutput, build_model
from grok.train.checkpoint import load_checkpoint

Result = dict[str, float | int | np.ndarray]


@dataclass(frozen=True)
class Probe:
    """The inputs analyses run on: all task inputs by default, in the task's row order."""

    task: Task
    split: Split
    tokens: torch.Tensor  # (n, n_ctx) int64
    labels: torch.Tensor  # (n,) int64

    @classmethod
    def full(cls, task: Task, split: Split, device: torch.device | str = "cpu") -> Probe:
        return cls(task, split, task.tokens().to(device), task.labels.to(device))


@dataclass(frozen=True)
class ForwardPass:
    """One model's outputs on the whole probe set, computed once and shared by all analyzers."""

    step: int
    logits: torch.Tensor  # (n, n_classes)
    residuals: torch.Tensor  # (n_layers, n, d_model): residual stream at `=` after each layer
    # (n_layers, n, n_heads, n_ctx): the `=` query's attention pattern; None for models without
    # attention (the bilinear model)
    attention: torch.Tensor | None


class Analyzer(Protocol):
    name: str

    def __call__(self, model: nn.Module, probe: Probe, forward: ForwardPass) -> Result: ...


@torch.no_grad()
def forward_pass(model: nn.Module, probe: Probe, step: int, batch: int = 2048) -> ForwardPass:
    """Run `model` over the probe set in batches, keeping logits, residuals and attention."""
    model.eval()
    outs: list[ModelOutput] = [model(probe.tokens[i:i + batch], return_cache=True)
                               for i in range(0, len(probe.tokens), batch)]
    return ForwardPass(
        step=step,
        logits=torch.cat([o.logits for o in outs]).float(),
        residuals=torch.cat([o.residuals for o in outs], dim=1).float(),
        attention=(None if outs[0].attention is None
                   else torch.cat([o.attention for o in outs], dim=1).float()),
    )


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[int, nn.Module]:
    """(step, model in eval mode) from a weights-only checkpoint file, checksum verified (raises
    grok.train.checkpoint.DamagedCheckpoint for a damaged file)."""
    data = load_checkpoint(path, map_location=device)
    model = build_model(data["model_config"]).to(device)
    model.load_state_dict(data["model_state"])
    return int(data["step"]), model.eval()
