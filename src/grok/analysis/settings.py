"""Plain settings of the analysis suites, and their error type."""

from __future__ import annotations

from dataclasses import dataclass

from grok.errors import GrokError


class AnalysisError(GrokError):
    """A run directory cannot be analysed; the message says why and what to do."""


@dataclass(frozen=True)
class AnalysisSettings:
    window: int = 5  # t_grok: evaluation points per sliding window (>= 2)
    threshold: float = 0.15  # t_grok: smallest test-accuracy rise across a window that counts
    monotone: bool = True  # t_grok: rises of the best test accuracy so far (spikes do not count)
    t_grok: int | None = None  # force t_grok to this step instead of detecting it
    before: int = 3  # checkpoints selected before t_grok ...
    near: int = 2  # ... closest to it ...
    after: int = 3  # ... and after it
    before_after_ratio: float = 2.0  # "before"/"after" values at t_grok / r and t_grok * r
    batch_size: int = 2048  # probe inputs per forward batch
    block_size: int | None = None  # trajectory: checkpoints per Gram block (None: automatic)
