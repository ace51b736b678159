"""Aggregate curves of several runs (seeds of one variant) sampled at different steps."""

from __future__ import annotations

import numpy as np


def band(series: list[tuple[list[float], list[float]]]) -> dict[str, np.ndarray]:
    """Mean and std over runs of curves sampled at different steps.

    The grid is the union of all steps; each run is linearly interpolated onto it inside its own
    step range (no extrapolation). std is the sample std (ddof 1) where >= 2 runs cover a step,
    else NaN."""
    grid = np.unique(np.concatenate([np.asarray(s, dtype=np.float64) for s, _ in series]))
    stack = np.full((len(series), len(grid)), np.nan)
    for i, (steps, values) in enumerate(series):
        steps = np.asarray(steps, dtype=np.float64)
        values = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
        inside = (grid >= steps.min()) & (grid <= steps.max())
        stack[i, inside] = np.interp(grid[inside], steps, values)
    return {"step": grid, "mean": _nanmean(stack), "std": _nanstd(stack),
            "count": np.sum(~np.isnan(stack), axis=0)}


def _nanmean(stack: np.ndarray) -> np.ndarray:
    total = np.nansum(stack, axis=0)
    count = np.sum(~np.isnan(stack), axis=0)
    return np.divide(total, count, out=np.full(stack.shape[1], np.nan), where=count > 0)


def _nanstd(stack: np.ndarray) -> np.ndarray:
    mean = _nanmean(stack)
    count = np.sum(~np.isnan(stack), axis=0)
    sq = np.nansum((stack - mean) ** 2, axis=0)
    return np.sqrt(np.divide(sq, count - 1, out=np.full(stack.shape[1], np.nan),
                             where=count > 1))
