"""Decoder-only transformer over [a, b, =] with analysis-friendly parameter names.

Names and shapes follow TransformerLens: W_E (d_vocab, d_model), W_pos (n_ctx, d_model), per-head
W_Q/W_K/W_V (n_heads, d_model, d_head), W_O (n_heads, d_head, d_model), W_in (d_model, d_mlp),
W_out (d_mlp, d_model), W_U (d_model, n_classes).

Only the `=` position is ever read out, so the last layer computes its query, attention output and
MLP at `=` alone (keys and values still come from every position). Earlier layers run on all
positions under a causal mask. This spends only the FLOPs the prediction needs and is exactly the
same function as running the last layer everywhere and keeping position -1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TransformerConfig:
    d_vocab: int  # input tokens: p residues and `=`
    n_classes: int  # output classes: the p residues
    n_ctx: int = 3
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    act: str = "relu"
    layer_norm: bool = True

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (batch, n_classes) at `=`
    residuals: torch.Tensor | None = None  # (n_layers, batch, d_model): stream at `=` per layer
    attention: torch.Tensor | None = None  # (n_layers, batch, n_heads, n_ctx): `=` query's pattern


def _normal(*shape: int, fan_in: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) / math.sqrt(fan_in))


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        h, d, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        self.n_heads, self.d_head = h, dh
        self.W_Q = _normal(h, d, dh, fan_in=d)
        self.W_K = _normal(h, d, dh, fan_in=d)
        self.W_V = _normal(h, d, dh, fan_in=d)
        self.W_O = _normal(h, dh, d, fan_in=d)

    def _heads(self, w: torch.Tensor) -> torch.Tensor:
        """(n_heads, d_model, d_head) -> (d_model, n_heads * d_head) for one matmul over heads."""
        return w.transpose(0, 1).reshape(w.shape[1], -1)

    def forward(self, x: torch.Tensor, last_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (batch, n_ctx, d_model). Returns the attention output (batch, n_q, d_model), with
        n_q = 1 (the `=` query) when last_only, and the `=` query's pattern
        (batch, heads, n_ctx)."""
        b, t, _ = x.shape
        h, dh = self.n_heads, self.d_head
        w_kv = torch.cat([self._heads(self.W_K), self._heads(self.W_V)], dim=1)
        k, v = (x @ w_kv).view(b, t, 2, h, dh).permute(2, 0, 3, 1, 4)  # each (b, h, t, dh)
        x_q = x[:, -1:] if last_only else x
        q = (x_q @ self._heads(self.W_Q)).view(b, -1, h, dh).transpose(1, 2)  # (b, h, n_q, dh)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh)  # (b, h, n_q, t)
        if not last_only:
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
        pattern = scores.softmax(dim=-1)
        z = (pattern @ v).transpose(1, 2).reshape(b, -1, h * dh)  # (b, n_q, h * dh)
        return z @ self.W_O.reshape(h * dh, -1), pattern[:, :, -1]


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.W_in = _normal(cfg.d_model, cfg.d_mlp, fan_in=cfg.d_model)
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = _normal(cfg.d_mlp, cfg.d_model, fan_in=cfg.d_mlp)
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act = F.relu if cfg.act == "relu" else F.gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x @ self.W_in + self.b_in) @ self.W_out + self.b_out


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)
        norm = (lambda: nn.LayerNorm(cfg.d_model)) if cfg.layer_norm else nn.Identity
        self.ln1, self.ln2 = norm(), norm()

    def forward(self, x: torch.Tensor, last_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
        attn_out, pattern = self.attn(self.ln1(x), last_only)
        x = (x[:, -1:] if last_only else x) + attn_out
        return x + self.mlp(self.ln2(x)), pattern


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.W_E = _normal(cfg.d_vocab, cfg.d_model, fan_in=cfg.d_model)
        self.W_pos = _normal(cfg.n_ctx, cfg.d_model, fan_in=cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = nn.LayerNorm(cfg.d_model) if cfg.layer_norm else nn.Identity()
        self.W_U = _normal(cfg.d_model, cfg.n_classes, fan_in=cfg.d_model)

    def config_dict(self) -> dict:
        return {"arch": "transformer", **asdict(self.cfg)}

    def forward(self, tokens: torch.Tensor, return_cache: bool = False) -> ModelOutput:
        """tokens: (batch, n_ctx) int64. Logits at `=`; with return_cache, also the residual
        stream at `=` after every layer and every layer's attention pattern of the `=` query."""
        x = self.W_E[tokens] + self.W_pos  # (batch, n_ctx, d_model)
        residuals, patterns = [], []
        for i, block in enumerate(self.blocks):
            x, pattern = block(x, last_only=i == len(self.blocks) - 1)
            if return_cache:
                residuals.append(x[:, -1])
                patterns.append(pattern)
        logits = self.ln_final(x[:, -1]) @ self.W_U
        if not return_cache:
            return ModelOutput(logits)
        return ModelOutput(logits, torch.stack(residuals), torch.stack(patterns))
