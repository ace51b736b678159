"""Which checkpoints represent the run around t_grok: some before, some near, some after.

near: the `near` checkpoints closest to t_grok (earlier one on equal distance). before: `before`
checkpoints evenly spaced by index over all checkpoints earlier than the near ones, from the first
to the one just before them; after: likewise over the later ones, from the one just after them to
the last. Fewer are chosen when fewer exist.
"""

from __future__ import annotations

import numpy as np


def spread(items: list[int], count: int) -> list[int]:
    """`count` items evenly spaced by index, including the first and the last: positions
    k (n - 1) / (count - 1) rounded half to even (numpy's rounding)."""
    if count <= 0 or not items:
        return []
    if count >= len(items):
        return list(items)
    if count == 1:
        return [items[-1]]
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, count)).astype(int))
    return [items[i] for i in idx]


def select_checkpoints(steps: list[int], t_grok: int | None, before: int = 3, near: int = 2,
                       after: int = 3) -> dict[str, list[int]]:
    """{"before", "near", "after"}: checkpoint steps, each list ascending; all empty without
    t_grok."""
    steps = sorted(steps)
    if t_grok is None or not steps:
        return {"before": [], "near": [], "after": []}
    by_distance = sorted(steps, key=lambda s: (abs(s - t_grok), s))
    chosen = sorted(by_distance[:near])
    lo, hi = (chosen[0], chosen[-1]) if chosen else (t_grok, t_grok - 1)
    earlier = [s for s in steps if s < lo]
    later = [s for s in steps if s > hi]
    picked_before = spread(earlier, before)
    picked_after = spread(later[::-1], after)[::-1]  # keep the one just after `near` and the last
    return {"before": picked_before, "near": chosen, "after": picked_after}


def nearest_step(steps: list[int], target: float) -> int:
    """The checkpoint step closest to target (the earlier one on ties)."""
    return min(steps, key=lambda s: (abs(s - target), s))
