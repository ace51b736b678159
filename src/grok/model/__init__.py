"""Models built from plain config dicts (the same dicts that checkpoints store)."""

from __future__ import annotations

from typing import Any

from torch import nn

from grok.model.bilinear import Bilinear, BilinearConfig
from grok.model.transformer import ModelOutput, Transformer, TransformerConfig

__all__ = ["Bilinear", "BilinearConfig", "ModelOutput", "Transformer", "TransformerConfig",
           "build_model"]


def build_model(config: dict[str, Any]) -> nn.Module:
    """Build a model from {"arch": ..., **arch parameters}, e.g. a checkpoint's model_config."""
    params = {k: v for k, v in config.items() if k != "arch"}
    if config["arch"] == "transformer":
        return Transformer(TransformerConfig(**params))
    if config["arch"] == "bilinear":
        return Bilinear(BilinearConfig(**params))
    raise ValueError(f"unknown model arch {config['arch']!r}")
