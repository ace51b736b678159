"""Similarity between models seen as functions on the task's finite input domain: pure numerics.

Three pairwise measures, each with a one-pair reference form (for tests and spot checks) and a
block kernel that fills a rectangle of an N x N matrix at once:
- TN similarity: cosine between two logit tensors (inputs x classes), logits centred over the
  classes of each input first, so adding a constant to all logits of an input changes nothing.
- linear CKA between two representation matrices (inputs x features), columns centred:
  ||X^T Y||_F^2 / (||X^T X||_F ||Y^T Y||_F).
- Jensen-Shannon divergence of the softmax outputs, natural log, averaged over inputs.

`blockwise_matrices` assembles symmetric N x N matrices from such kernels while holding at most
two blocks of N in memory; the loader decides where blocks come from (memory, disk, recompute).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

# Probabilities are floored here (float32's smallest normal number) so that log() stays finite;
# a floored entry changes a JS value by less than 1e-36 per entry.
PROB_FLOOR = float(torch.finfo(torch.float32).tiny)
LN2 = math.log(2.0)


# ------------------------------------------------------------------------------ feature maps
def centre_classes(logits: torch.Tensor) -> torch.Tensor:
    """Logits minus their mean over classes (last axis), per input."""
    return logits - logits.mean(dim=-1, keepdim=True)


def centre_inputs(x: torch.Tensor) -> torch.Tensor:
    """Representations (inputs x features) with every feature's mean over inputs removed; the
    mean is taken in float64 so that large offsets do not eat float32 precision."""
    return (x.double() - x.double().mean(dim=0, keepdim=True)).to(x.dtype)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis, floored at PROB_FLOOR (see above)."""
    return torch.softmax(logits, dim=-1).clamp_min_(PROB_FLOOR)


def neg_entropy_and_mass(probs: torch.Tensor) -> tuple[float, float]:
    """(sum of p log p, sum of p) over all entries, accumulated in float64."""
    p = probs.reshape(-1).double()
    return float((p * p.log()).sum()), float(p.sum())


# ------------------------------------------------------------------------ one-pair references
def tn_similarity(logits_a: torch.Tensor, logits_b: torch.Tensor) -> float:
    """Cosine between two (inputs x classes) logit tensors, centred over classes."""
    a = centre_classes(logits_a.double()).reshape(-1)
    b = centre_classes(logits_b.double()).reshape(-1)
    return float(a @ b / (a.norm() * b.norm()))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two (inputs x features) representation matrices (feature counts may
    differ)."""
    x, y = centre_inputs(x.double()), centre_inputs(y.double())
    cross = (x.T @ y).square().sum()
    return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()))


def js_divergence(logits_a: torch.Tensor, logits_b: torch.Tensor) -> float:
    """Mean over inputs (rows) of the Jensen-Shannon divergence between the softmax outputs, in
    nats: JS(P, Q) = H((P + Q) / 2) - (H(P) + H(Q)) / 2, which lies in [0, ln 2]."""
    p = torch.softmax(logits_a.double(), dim=-1)
    q = torch.softmax(logits_b.double(), dim=-1)
    return js_from_probs(p, q)


def js_from_probs(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean JS divergence between matching rows of two probability tables (0 log 0 = 0)."""
    p, q = p.double(), q.double()
    m = (p + q) / 2
    kl_pm = torch.special.xlogy(p, p) - torch.special.xlogy(p, m)
    kl_qm = torch.special.xlogy(q, q) - torch.special.xlogy(q, m)
    return float(((kl_pm + kl_qm) / 2).sum(dim=-1).mean())


# --------------------------------------------------------------------------- block kernels
def gram_block(a: torch.Tensor, b: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """Inner products (len(a), len(b)) of flattened rows, in float64. The rows are converted to
    float64 a column chunk at a time, so the float64 copies stay small."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    out = torch.zeros(len(a), len(b), dtype=torch.float64, device=a.device)
    for s in range(0, a.shape[1], chunk):
        out += a[:, s:s + chunk].double() @ b[:, s:s + chunk].double().T
    return out


def hsic_block(xa: torch.Tensor, xb: torch.Tensor, upper: bool = False,
               rows: int = 8) -> torch.Tensor:
    """||X_i^T X_j||_F^2 for every i in xa, j in xb, from transposed centred representations
    xa (a, d, n) and xb (b, d, n). With upper=True (xa is xb) only pairs j >= i are computed,
    in groups of `rows` models, and the rest is mirrored."""
    a, d, n = xa.shape
    b = xb.shape[0]
    out = torch.zeros(a, b, dtype=torch.float64, device=xa.device)
    flat_b = xb.reshape(b * d, n)
    for s in range(0, a, rows):
        e = min(s + rows, a)
        start = s if upper else 0
        cross = xa[s:e].reshape((e - s) * d, n) @ flat_b[start * d:].T  # ((e-s) d, (b-start) d)
        out[s:e, start:] = cross.view(e - s, d, b - start, d).double().square().sum(dim=(1, 3))
    if upper:
        out = torch.triu(out) + torch.triu(out, 1).T
    return out


def xlogx_sum_block(pa: torch.Tensor, pb: torch.Tensor, upper: bool = False, tile: int = 8,
                    chunk: int = 1 << 14) -> torch.Tensor:
    """sum(S log S) over all entries with S = P_i + P_j, for every i in pa, j in pb (rows are
    flattened probability tables, floored above 0). Summed in float32 over chunks of `chunk`
    entries, then in float64, so the error stays near float32 rounding of each entry.
    With upper=True (pa is pb) only tiles with j >= i are computed and the rest is mirrored."""
    pa, pb = pa.reshape(len(pa), -1), pb.reshape(len(pb), -1)
    a, b, f = len(pa), len(pb), pa.shape[1]
    out = torch.zeros(a, b, dtype=torch.float64, device=pa.device)
    s_buf = torch.empty(tile, tile, chunk, device=pa.device)
    l_buf = torch.empty_like(s_buf)
    for i in range(0, a, tile):
        ie = min(i + tile, a)
        for j in range(i if upper else 0, b, tile):
            je = min(j + tile, b)
            acc = torch.zeros(ie - i, je - j, dtype=torch.float64, device=pa.device)
            for c in range(0, f, chunk):
                ce = min(c + chunk, f)
                s = s_buf[:ie - i, :je - j, :ce - c]
                lg = l_buf[:ie - i, :je - j, :ce - c]
                torch.add(pa[i:ie, None, c:ce], pb[None, j:je, c:ce], out=s)
                torch.log(s, out=lg)
                acc += torch.linalg.vecdot(s, lg)
            out[i:ie, j:je] = acc
    if upper:
        out = torch.triu(out) + torch.triu(out, 1).T
    return out


def js_from_sums(xlogx: np.ndarray, neg_entropy: np.ndarray, mass: np.ndarray,
                 n_inputs: int) -> np.ndarray:
    """Mean JS divergences from sum(S log S) (S = P_i + P_j), each model's sum(p log p) and its
    total probability mass (n_inputs up to rounding), clipped to [0, ln 2].

    Per input, with M = S / 2: -sum m log m = (ln 2 * sum S - sum S log S) / 2, hence
    JS = (ln 2 (mass_i + mass_j) - sum S log S + negH_i + negH_j) / 2 summed over inputs."""
    # each pairwise sum is grouped so that swapping i and j gives the same rounding
    own = LN2 * (mass[:, None] + mass[None, :]) + (neg_entropy[:, None] + neg_entropy[None, :])
    total = (own - xlogx) / 2
    return np.clip(total / n_inputs, 0.0, LN2)


def cosine_from_gram(gram: np.ndarray) -> np.ndarray:
    """Cosine similarities from a Gram matrix of inner products (nan where a norm is zero)."""
    norms = np.sqrt(np.diag(gram))
    with np.errstate(invalid="ignore", divide="ignore"):
        return gram / np.outer(norms, norms)


# ------------------------------------------------------------ bilinear interaction tensors
# A bilinear model over one-hot inputs z (D = 2p entries) is logit_c(z) = z^T T_c z with
# T[c, i, j] = sum_h U[h, c] L[i, h] R[j, h] (factors from Bilinear.interaction_factors). Only the
# symmetric part S_c = (T_c + T_c^T) / 2 affects the function, and U is centred over classes as
# the logits are for the TN similarity. The exact tensor similarity is <S1, S2> / (|S1| |S2|).
Factors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # U (H, C), L (D, H), R (D, H)


def _centred_unembed(u: torch.Tensor) -> torch.Tensor:
    return u.double() - u.double().mean(dim=1, keepdim=True)


def interaction_inner(f1: Factors, f2: Factors) -> float:
    """<S1, S2> from the weights alone, never materialising the (C, D, D) tensors.

    With outer products, <u v^T + v u^T, u' v'^T + v' u'^T> / 4 = ((u.u')(v.v') + (u.v')(v.u')) / 2,
    so summing over classes and hidden pairs (h, k):
    <S1, S2> = 1/2 sum_hk (U1 U2^T)_hk [(L1^T L2)_hk (R1^T R2)_hk + (L1^T R2)_hk (R1^T L2)_hk].
    Cost O(H1 H2 (C + D)) per pair."""
    (u1, l1, r1), (u2, l2, r2) = f1, f2
    l1, r1, l2, r2 = (t.double() for t in (l1, r1, l2, r2))
    classes = _centred_unembed(u1) @ _centred_unembed(u2).T  # (H1, H2)
    inputs = (l1.T @ l2) * (r1.T @ r2) + (l1.T @ r2) * (r1.T @ l2)  # (H1, H2)
    return float((classes * inputs).sum() / 2)


def interaction_similarity(f1: Factors, f2: Factors) -> float:
    """Exact, weight-only cosine between two bilinear models' symmetrised interaction tensors."""
    return interaction_inner(f1, f2) / math.sqrt(interaction_inner(f1, f1)
                                                 * interaction_inner(f2, f2))


def interaction_features(f: Factors) -> torch.Tensor:
    """A flat float64 vector whose inner products are exactly <S1, S2>: for every class, the
    upper triangle of S_c with off-diagonal entries scaled by sqrt(2) (C D (D + 1) / 2 numbers).
    Materialising costs O(C D^2 H) once per model, after which a pair costs O(C D^2), far less
    than interaction_inner's O(H^2 (C + D)) when many pairs share each model."""
    u, l_, r = f
    uc = _centred_unembed(u)
    t = (uc.T[:, None, :] * l_.double()[None]) @ r.double().T  # (C, D, D)
    s = (t + t.transpose(1, 2)) / 2
    d = s.shape[1]
    iu = torch.triu_indices(d, d)
    weight = torch.full(iu[0].shape, math.sqrt(2.0), dtype=torch.float64, device=s.device)
    weight[iu[0] == iu[1]] = 1.0
    return (s[:, iu[0], iu[1]] * weight).reshape(-1)


# ---------------------------------------------------------------------------- assembly
Loader = Callable[[int, int], dict[str, torch.Tensor]]
Kernel = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], bool], dict[str, torch.Tensor]]


def blockwise_matrices(n: int, block: int, load: Loader, kernel: Kernel,
                       on_block: Callable[[], None] | None = None) -> dict[str, np.ndarray]:
    """Symmetric n x n matrices built from blocks of at most `block` items.

    load(start, stop) returns the features of items start..stop-1; kernel(A, B, same) returns
    named (len A, len B) matrices for two loaded blocks (same=True when A is B: only its upper
    triangle needs computing, the kernel returns the full square). At most two blocks are held
    at once; block i is loaded once and every later block once per earlier block."""
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    out: dict[str, np.ndarray] = {}
    for i in range(0, n, block):
        ie = min(i + block, n)
        first = load(i, ie)
        for j in range(i, n, block):
            je = min(j + block, n)
            second = first if j == i else load(j, je)
            for name, values in kernel(first, second, j == i).items():
                if j == i:  # mirror the upper triangle so the matrix is exactly symmetric
                    values = torch.triu(values) + torch.triu(values, 1).T
                m = out.setdefault(name, np.full((n, n), np.nan))
                m[i:ie, j:je] = values.cpu().numpy()
                m[j:je, i:ie] = m[i:ie, j:je].T
            del second
            if on_block is not None:
                on_block()
    return out


def n_block_pairs(n: int, block: int) -> int:
    k = -(-n // block)
    return k * (k + 1) // 2
