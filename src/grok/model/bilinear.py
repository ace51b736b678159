"""A one-layer bilinear model: logits = W_U((W_L x) * (W_R x)), x the concatenated embeddings of
a and b (the `=` token is ignored).

Written in the repo's row-vector convention, with TransformerLens-style names and shapes:
W_E (d_vocab, d_embed), W_L and W_R (2 d_embed, d_hidden), W_U (d_hidden, n_classes), so that
logits = ((x @ W_L) * (x @ W_R)) @ W_U. There are no biases, so every logit is exactly a
quadratic form in the one-hot encoding of (a, b); `interaction_factors` exposes that form for the
weight-only tensor similarity (grok.analysis.similarity.interaction_similarity).

The representation returned with return_cache is the hidden activation (x @ W_L) * (x @ W_R),
the last representation before the unembedding (the analogue of the transformer's final
residual stream), shaped (1, batch, d_hidden).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from grok.model.transformer import ModelOutput


@dataclass(frozen=True)
class BilinearConfig:
    d_vocab: int  # input tokens: p residues and `=` (whose embedding is never used)
    n_classes: int  # output classes: the p residues
    d_embed: int = 128  # per-token embedding width; x has 2 * d_embed entries
    d_hidden: int = 256  # number of bilinear hidden units


class Bilinear(nn.Module):
    def __init__(self, cfg: BilinearConfig):
        super().__init__()
        self.cfg = cfg
        d_in = 2 * cfg.d_embed
        # Unit-variance embeddings and 1/sqrt(fan_in) maps keep the pre-activations, the hidden
        # products and the logits all of order one at initialisation (there is no LayerNorm).
        self.W_E = nn.Parameter(torch.randn(cfg.d_vocab, cfg.d_embed))
        self.W_L = nn.Parameter(torch.randn(d_in, cfg.d_hidden) / math.sqrt(d_in))
        self.W_R = nn.Parameter(torch.randn(d_in, cfg.d_hidden) / math.sqrt(d_in))
        self.W_U = nn.Parameter(torch.randn(cfg.d_hidden, cfg.n_classes) / math.sqrt(cfg.d_hidden))

    def config_dict(self) -> dict:
        return {"arch": "bilinear", **asdict(self.cfg)}

    def forward(self, tokens: torch.Tensor, return_cache: bool = False) -> ModelOutput:
        """tokens: (batch, n_ctx) int64, [a, b, =]; only a and b are read."""
        x = self.W_E[tokens[:, :2]].flatten(1)  # (batch, 2 d_embed) = [e_a; e_b]
        hidden = (x @ self.W_L) * (x @ self.W_R)  # (batch, d_hidden)
        logits = hidden @ self.W_U
        if not return_cache:
            return ModelOutput(logits)
        return ModelOutput(logits, hidden[None], None)

    @torch.no_grad()
    def interaction_factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The model as a quadratic form over one-hot inputs z = [onehot(a); onehot(b)] (2p
        entries, p = n_classes): logit_c(z) = sum_h U[h, c] (z . L[:, h]) (z . R[:, h]).

        Returns (U, L, R) in float64: U = W_U (d_hidden, p); L, R (2p, d_hidden) are W_L, W_R
        composed with the embeddings of the p residues, so models with different embeddings
        are compared on the same input space."""
        p, d = self.cfg.n_classes, self.cfg.d_embed
        emb = self.W_E[:p].double()  # residues only; `=` never enters x

        def compose(w: torch.Tensor) -> torch.Tensor:
            w = w.double()
            return torch.cat([emb @ w[:d], emb @ w[d:]])  # rows: a = 0..p-1, then b = 0..p-1

        return self.W_U.double(), compose(self.W_L), compose(self.W_R)
