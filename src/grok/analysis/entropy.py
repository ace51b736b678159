"""Attention entropy of the `=` query, per layer and head, averaged over the probe inputs.

For the `=` query's pattern A over its keys k: H = -sum_k A_k log A_k (natural log, 0 log 0 = 0),
averaged over the probe inputs; normalised by log(number of keys) it lies in [0, 1] (1: uniform,
0: all attention on one key). The `=` query sees all n_ctx positions (causal mask, last position).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from grok.analysis.base import ForwardPass, Probe, Result


def attention_entropy(pattern: torch.Tensor) -> torch.Tensor:
    """(n_layers, n, n_heads, n_keys) pattern -> mean entropy over inputs (n_layers, n_heads)."""
    p = pattern.double()
    h = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(dim=-1)
    return h.mean(dim=1)


class EntropyAnalyzer:
    """Attention entropy per layer and head, raw (nats) and normalised by log(n_keys)."""

    name = "entropy"

    def __call__(self, model: nn.Module, probe: Probe, forward: ForwardPass) -> Result:
        if forward.attention is None:
            return {}
        h = attention_entropy(forward.attention)
        n_keys = forward.attention.shape[-1]
        return {"entropy": h.cpu().numpy(),
                "entropy_norm": (h / math.log(n_keys)).cpu().numpy() if n_keys > 1
                else torch.zeros_like(h).cpu().numpy()}
