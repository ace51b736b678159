"""Modular-arithmetic tasks: the full table of (a, b) -> c for one operation and modulus p.

Inputs are the token sequences [a, b, =] with a, b in 0..p-1 and `=` the extra token p; the label
c in 0..p-1 is predicted at the `=` position over the p residue classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# Each integer operation maps tensors a, b to the plain integer result before reduction mod p.
# The conflict split relies on this: it trains on pairs whose unreduced result already lies in
# 0..p-1. div has no integer shortcut, so it is defined directly mod p in build_task.
INTEGER_OPERATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "x2_plus_y2": lambda a, b: a**2 + b**2,
    "x2_xy_y2": lambda a, b: a**2 + a * b + b**2,
    "x3_xy": lambda a, b: a**3 + a * b,
}
OPERATIONS = ("add", "sub", "mul", "div", "x2_plus_y2", "x2_xy_y2", "x3_xy")
COMMUTATIVE = frozenset({"add", "mul", "x2_plus_y2", "x2_xy_y2"})


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % k for k in range(2, int(n**0.5) + 1))


@dataclass(frozen=True)
class Task:
    """All inputs of one modular-arithmetic task, in a fixed order (a-major, then b)."""

    op: str
    p: int
    pairs: torch.Tensor  # (n, 2) int64: a, b
    labels: torch.Tensor  # (n,) int64: (a op b) mod p
    raw: torch.Tensor | None  # (n,) int64: the unreduced integer result; None for div

    @property
    def n(self) -> int:
        return self.pairs.shape[0]

    @property
    def vocab_size(self) -> int:
        """Input vocabulary: the p residues and the `=` token."""
        return self.p + 1

    @property
    def n_classes(self) -> int:
        return self.p

    @property
    def equals_token(self) -> int:
        return self.p

    @property
    def commutative(self) -> bool:
        return self.op in COMMUTATIVE

    def tokens(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """Token sequences [a, b, =] of shape (n, 3) for the given rows (all rows by default)."""
        pairs = self.pairs if index is None else self.pairs[index]
        eq = torch.full((pairs.shape[0], 1), self.equals_token, dtype=torch.long)
        return torch.cat([pairs, eq], dim=1)


def build_task(op: str, p: int) -> Task:
    """The full table of `op` mod p: p*p rows, or p*(p-1) for div (b = 0 has no inverse)."""
    if op not in OPERATIONS:
        raise ValueError(f"unknown operation {op!r}; choose one of {', '.join(OPERATIONS)}")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    if op == "div":
        if not is_prime(p):
            raise ValueError(f"div needs a prime modulus, got p={p}")
        keep = b != 0
        a, b = a[keep], b[keep]
        # Fermat: b^(p-2) is the inverse of b mod p; pow keeps the numbers small.
        inverse = torch.tensor([pow(int(x), p - 2, p) for x in b.tolist()], dtype=torch.long)
        labels = (a * inverse) % p
        raw = None
    else:
        raw = INTEGER_OPERATIONS[op](a, b)
        labels = raw % p
    return Task(op=op, p=p, pairs=torch.stack([a, b], dim=1), labels=labels, raw=raw)
