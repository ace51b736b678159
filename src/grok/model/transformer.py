"""Decoder-only transformer over [a, b, =] with analysis-friendly parameter names.

Names and shapes follow TransformerLens: W_E (d_vocab, d_model), W_pos (n_ctx, d_model), per-head
W_Q/W_K/W_V (n_heads, d_model, d_head), W_O (n_heads, d_head, d_model), W_in (d_model, d_mlp),
W_out (d_mlp, d_model), W_U (d_model, n_classes).

The forward pass is exactly the function of a standard pre-LN causal transformer read out at the
last position (tests/test_model.py checks it against a plain every-layer-every-position reference),
but it spends only the FLOPs that function needs:

- Only the `=` position is read out, so the last layer computes its query, attention output, MLP
  and the unembedding at `=` alone (keys and values still come from every position).
- Under the causal mask position 0 attends only to itself, so its residual stream in every layer
  is a function of its token alone: it is computed once per vocabulary entry (d_vocab rows, not
  batch rows) and its keys and values are gathered from that table.
- Layer 0's queries, keys and values at every position are functions of (position, token) alone:
  they come from one (n_ctx * d_vocab)-row table instead of a matmul over the batch.

For a + b mod 97 with the 2-layer model at batch 512 this removes about 40% of the matmul FLOPs of
the forward and backward pass. The attention itself (3 keys) is written as broadcast products
rather than batched matmuls, which are slow for 3 x 32 matrices.
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


def _heads(w: torch.Tensor) -> torch.Tensor:
    """(n_heads, d_model, d_head) -> (d_model, n_heads * d_head): all heads in one matmul."""
    return w.transpose(0, 1).reshape(w.shape[1], -1)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        h, d, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        self.n_heads, self.d_head = h, dh
        self.W_Q = _normal(h, d, dh, fan_in=d)
        self.W_K = _normal(h, d, dh, fan_in=d)
        self.W_V = _normal(h, d, dh, fan_in=d)
        self.W_O = _normal(h, dh, d, fan_in=d)

    def w_qkv(self) -> torch.Tensor:
        """(d_model, 3 * n_heads * d_head): queries, keys, values of all heads, one matmul."""
        return torch.cat([_heads(self.W_Q), _heads(self.W_K), _heads(self.W_V)], dim=1)

    def w_kv(self) -> torch.Tensor:
        return torch.cat([_heads(self.W_K), _heads(self.W_V)], dim=1)

    def w_o(self) -> torch.Tensor:
        return self.W_O.reshape(-1, self.W_O.shape[-1])  # (n_heads * d_head, d_model)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               future: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """q: (batch, n_q, heads, d_head); k, v: (batch, n_ctx, heads, d_head); future: (n_q,
        n_ctx) bool, true where a key lies after its query (masked), None when nothing is.
        Returns the heads' outputs z (batch, n_q, heads, d_head), before W_O, and the pattern
        (batch, n_q, n_ctx, heads)."""
        scores = (q.unsqueeze(2) * k.unsqueeze(1)).sum(-1) / math.sqrt(self.d_head)
        if future is not None:
            scores = scores.masked_fill(future[None, :, :, None], float("-inf"))
        pattern = scores.softmax(dim=2)
        return (pattern.unsqueeze(-1) * v.unsqueeze(1)).sum(2), pattern


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.W_in = _normal(cfg.d_model, cfg.d_mlp, fan_in=cfg.d_model)
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = _normal(cfg.d_mlp, cfg.d_model, fan_in=cfg.d_mlp)
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act = F.relu if cfg.act == "relu" else F.gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.act(x @ self.W_in + self.b_in) @ self.W_out + self.b_out
        # Inference (evaluation, analyses): the bias adds inside the GEMMs and an in-place ReLU
        # save two passes over the (rows, d_mlp) hidden layer, a quarter of an evaluation.
        flat = x.reshape(-1, x.shape[-1])
        hidden = torch.addmm(self.b_in, flat, self.W_in)
        hidden = hidden.relu_() if self.act is F.relu else self.act(hidden)
        return torch.addmm(self.b_out, hidden, self.W_out).view(*x.shape[:-1], -1)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters) whose affine part, when gradients are on, is a separate
    multiply and add.

    torch.func.vmap computes a LayerNorm with per-seed weights exactly this way, so a model
    trained in a seed batch (grok.train.multiseed) gets bitwise the same numbers as alone.
    Inference (evaluation, which a seed batch runs per seed) takes torch's fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return F.layer_norm(x, self.normalized_shape, eps=self.eps) * self.weight + self.bias
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)
        norm = (lambda: LayerNorm(cfg.d_model)) if cfg.layer_norm else nn.Identity
        self.ln1, self.ln2 = norm(), norm()


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        if cfg.n_ctx < 2:
            raise ValueError("n_ctx must be at least 2 (operands and the `=` token)")
        self.cfg = cfg
        self.W_E = _normal(cfg.d_vocab, cfg.d_model, fan_in=cfg.d_model)
        self.W_pos = _normal(cfg.n_ctx, cfg.d_model, fan_in=cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg.d_model) if cfg.layer_norm else nn.Identity()
        self.W_U = _normal(cfg.d_model, cfg.n_classes, fan_in=cfg.d_model)
        # Not part of the state dict: row offsets of each position in the layer-0 table, and the
        # causal mask of the queries at positions 1..n_ctx-1 (query i + 1 must not see key j).
        t = cfg.n_ctx
        self.register_buffer("_row_offset", torch.arange(t) * cfg.d_vocab, persistent=False)
        self.register_buffer("_future", torch.ones(t - 1, t, dtype=torch.bool).triu(2),
                             persistent=False)

    def config_dict(self) -> dict:
        return {"arch": "transformer", **asdict(self.cfg)}

    def forward(self, tokens: torch.Tensor, return_cache: bool = False) -> ModelOutput:
        """tokens: (batch, n_ctx) int64. Logits at `=`; with return_cache, also the residual
        stream at `=` after every layer and every layer's attention pattern of the `=` query."""
        final, residuals, patterns = self._run(tokens, return_cache)
        logits = final @ self.W_U
        if not return_cache:
            return ModelOutput(logits)
        return ModelOutput(logits, torch.stack(residuals), torch.stack(patterns))

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """(batch, d_model): the normalised stream at `=` that the unembedding reads, so that
        forward(tokens).logits == features(tokens) @ W_U."""
        return self._run(tokens, False)[0]

    def _run(self, tokens: torch.Tensor, return_cache: bool
             ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        b, t = tokens.shape
        h, dh, vocab = self.cfg.n_heads, self.cfg.d_head, self.cfg.d_vocab
        hd, last = h * dh, len(self.blocks) - 1
        # Layer-0 input of every (position, token): (t * d_vocab, d_model); row i * d_vocab + tok.
        table = (self.W_pos[:t, None, :] + self.W_E[None]).flatten(0, 1)
        rows = tokens + self._row_offset[:t]  # (batch, t)
        # The residual stream as one matrix: position 0 once per vocabulary token (it attends only
        # to itself, so its stream is a function of its token), then every sample's positions
        # 1..t-1. A 1-layer model needs only `=`.
        if last == 0:
            xs, x = None, table.index_select(0, rows[:, -1])
        else:
            xs = torch.cat([table[:vocab], table.index_select(0, rows[:, 1:].reshape(-1))])
        residuals, patterns = [], []
        for i, block in enumerate(self.blocks):
            attn = block.attn
            n_q = 1 if i == last else t - 1  # queries: `=` alone in the last layer
            if i == 0:
                # queries, keys and values of every (position, token), gathered per sample
                q_tab, k_tab, v_tab = (block.ln1(table) @ attn.w_qkv()).split(hd, dim=1)
                q = q_tab.index_select(0, rows[:, t - n_q:].reshape(-1))
                k = k_tab.index_select(0, rows.reshape(-1))
                v = v_tab.index_select(0, rows.reshape(-1))
                v0 = v_tab[:vocab]
            else:
                ys = block.ln1(xs)
                if i == last:
                    k_all, v_all = (ys @ attn.w_kv()).split(hd, dim=1)
                    # contiguous: a strided matmul operand would take another BLAS kernel under
                    # vmap (seed batches) than alone, with other rounding
                    q = ys[vocab:].view(b, t - 1, -1)[:, -1].contiguous() @ _heads(attn.W_Q)
                else:
                    q_all, k_all, v_all = (ys @ attn.w_qkv()).split(hd, dim=1)
                    q = q_all[vocab:]
                k = torch.cat([k_all[:vocab].index_select(0, tokens[:, 0]).view(b, 1, hd),
                               k_all[vocab:].view(b, t - 1, hd)], dim=1)
                v = torch.cat([v_all[:vocab].index_select(0, tokens[:, 0]).view(b, 1, hd),
                               v_all[vocab:].view(b, t - 1, hd)], dim=1)
                v0 = v_all[:vocab]
            z, pattern = attn.attend(q.view(b, n_q, h, dh), k.view(b, t, h, dh),
                                     v.view(b, t, h, dh), None if n_q == 1 else self._future)
            if i == last:
                if xs is not None:
                    x = xs[vocab:].view(b, t - 1, -1)[:, -1]
                x = x + z.view(b, hd) @ attn.w_o()
                x = x + block.mlp(block.ln2(x))
            else:
                # position 0 attends to itself alone (pattern exactly 1): its output is v0 W_O
                xs = xs + torch.cat([v0, z.reshape(-1, hd)]) @ attn.w_o()
                xs = xs + block.mlp(block.ln2(xs))
                x = xs[vocab:].view(b, t - 1, -1)[:, -1]
            if return_cache:
                residuals.append(x)
                patterns.append(pattern[:, -1].transpose(1, 2))  # (batch, heads, t)
        return self.ln_final(x), residuals, patterns
