"""Resolve the `device` setting: auto picks CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from grok.errors import GrokError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GrokError(f"device={name} but CUDA is not available here; use device=auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise GrokError("device=mps but MPS is not available here; use device=auto or cpu")
    return torch.device(name)
