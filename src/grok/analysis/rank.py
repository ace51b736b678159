"""Effective rank (Roy & Vetterli 2007) of the residual stream at `=` after every layer.

For a representation matrix X (n inputs x d_model) with its columns centred over the inputs and
singular values s: q = s / sum(s), erank = exp(-sum_k q_k log q_k) (0 log 0 = 0). It runs from 1
(all variance along one direction) to min(n, d) (all singular values equal); the zero matrix gets
0 by convention.
"""

from __future__ import annotations

import torch
from torch import nn

from grok.analysis.base import ForwardPass, Probe, Result


def singular_values(x: torch.Tensor, center: bool = True) -> torch.Tensor:
    """Singular values, descending, of each (n, d) matrix in x (..., n, d), in float64.

    A direct SVD in float64 rather than the cheaper eigenvalues of the Gram matrix X^T X: those
    carry an absolute error of ~1e-8 * s_max after the square root, which would lift every zero
    singular value and add ~1e-6 to the effective rank of an exactly low-rank matrix.
    """
    x = x.double()
    if center:
        x = x - x.mean(dim=-2, keepdim=True)
    return torch.linalg.svdvals(x)


def effective_rank_from_singular_values(s: torch.Tensor) -> torch.Tensor:
    """exp(entropy of s / sum(s)) over the last dimension; 0 where all s are 0."""
    total = s.sum(dim=-1, keepdim=True)
    q = s / total.clamp(min=torch.finfo(s.dtype).tiny)
    entropy = -(torch.where(q > 0, q * q.log(), torch.zeros_like(q))).sum(dim=-1)
    return torch.where(total.squeeze(-1) > 0, entropy.exp(), torch.zeros_like(entropy))


def effective_rank(x: torch.Tensor, center: bool = True) -> torch.Tensor:
    """Effective rank of each (n, d) matrix in x (..., n, d); columns centred when `center`."""
    return effective_rank_from_singular_values(singular_values(x, center))


class RankAnalyzer:
    """Per-layer effective rank of the residual stream at `=` over the probe inputs."""

    name = "rank"

    def __call__(self, model: nn.Module, probe: Probe, forward: ForwardPass) -> Result:
        s = singular_values(forward.residuals)  # (n_layers, d_model)
        return {"rank": effective_rank_from_singular_values(s).cpu().numpy(),
                "singular_values": s.cpu().numpy()}
