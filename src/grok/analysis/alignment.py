"""How rank and attention entropy line up with grokking: correlations and the sharpest drops.

- Pearson and Spearman (Pearson of average ranks, so ties are handled) correlations between test
  accuracy and a signal over the analysed checkpoints; None when either series is constant or
  fewer than 3 checkpoints exist.
- The sharpest drop of a signal: the same sliding-window rule as t_grok (grok.analysis.tgrok),
  applied to the negated signal over the checkpoint series: the window of `window` checkpoints
  with the largest fall, reported at the end of its largest single decrease. lag = drop step -
  t_grok: negative when the signal drops before the accuracy rises (it leads), positive when it
  lags.
"""

from __future__ import annotations

import numpy as np

from grok.analysis.tgrok import sharpest_window


def pearson(x, y) -> float | None:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3:
        return None
    if np.all(x == x[0]) or np.all(y == y[0]):
        return None  # tested before centring: x - x.mean() of a constant is ~1e-17, not 0
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc**2).sum() * (yc**2).sum())
    if denom == 0 or not np.isfinite(denom):
        return None
    return float(np.clip((xc * yc).sum() / denom, -1.0, 1.0))


def average_ranks(x) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x, y) -> float | None:
    if len(x) < 3:
        return None
    return pearson(average_ranks(x), average_ranks(y))


def sharpest_drop(steps, values, window: int = 5) -> dict:
    """{"step", "drop", "window_steps"} of the sharpest fall of `values` over `steps`."""
    steps, values = np.asarray(steps), np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return {"step": None, "drop": None, "window_steps": None}
    start, at, fall = sharpest_window(-values, window)
    end = start + min(window, len(values)) - 1
    return {"step": int(steps[at]), "drop": fall,
            "window_steps": [int(steps[start]), int(steps[end])]}


def align(steps, test_acc, signals: dict[str, list[float]], t_grok: int | None,
          window: int = 5) -> tuple[dict, dict]:
    """(correlations, drops): for each named signal, its correlations with test accuracy and its
    sharpest drop with the lag relative to t_grok (None without t_grok)."""
    correlations, drops = {}, {}
    for name, values in signals.items():
        correlations[name] = {"pearson": pearson(test_acc, values),
                              "spearman": spearman(test_acc, values)}
        drop = sharpest_drop(steps, values, window)
        drop["lag"] = (drop["step"] - t_grok
                       if t_grok is not None and drop["step"] is not None else None)
        drops[name] = drop
    return correlations, drops
