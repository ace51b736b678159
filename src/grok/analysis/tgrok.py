"""When did the run grok: the sharpest-rise t_grok, the first steps at 0.95 / 0.99, a forced value.

Sharpest rise, precisely: over the evaluation points (step_k, acc_k) of test accuracy, each
window of `window` consecutive points i..i+w-1 rises by acc[i+w-1] - acc[i]. The window with the
largest rise wins (the earliest one on ties). If that rise is below `threshold`, nothing is
detected. Otherwise t_grok is the step at the *end* of the largest single increase
acc[j] - acc[j-1] inside the winning window (j in i+1..i+w-1, the earliest on ties): the first
evaluation at which the jump is visible. With fewer evaluation points than `window`, the whole
series is one window. A t_grok at the last evaluation, with test accuracy there still below 0.99,
comes with a warning: the run may have stopped mid-rise.

With monotone=True (the default) acc is first replaced by its running maximum, the best test
accuracy so far. Runs trained with AdamW at the usual learning rates have loss spikes: test
accuracy collapses from ~1 to ~0 and recovers within a few evaluations, long after grokking.
On the raw curve that recovery is the sharpest rise there is; on the running maximum it is no
rise at all, and t_grok stays at the first generalisation. monotone=False is the rule on the raw
curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHOD_SHARPEST_RISE = "sharpest_rise"
METHOD_FORCED = "forced"
# A rise is a difference of two float accuracies: 0.35 - 0.2 is 0.1499999..., which must still
# count as the 0.15 it is. Far below one pair's share of any test set this tool can make (1/p^2).
RISE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class TGrok:
    t_grok: int | None  # the forced value, else the detected one
    method: str  # sharpest_rise | forced
    detected: int | None  # what the sharpest-rise rule finds (None: nothing above threshold)
    window: int
    threshold: float
    monotone: bool  # rises measured on the running maximum of test accuracy
    max_rise: float | None  # rise across the winning window (None with < 2 evaluation points)
    window_steps: tuple[int, int] | None  # first and last step of the winning window
    step_95: int | None  # first step with test accuracy >= 0.95
    step_99: int | None  # first step with test accuracy >= 0.99
    warning: str | None = None


def first_step_reaching(steps, values, level: float) -> int | None:
    """The first step whose value is >= level, or None."""
    for step, value in zip(steps, values):
        if value >= level:
            return int(step)
    return None


def sharpest_window(values: np.ndarray, window: int) -> tuple[int, int, float]:
    """(start index, index of the largest single increase inside, rise) of the window of `window`
    points whose last-minus-first rise is largest. Needs at least 2 values."""
    w = min(window, len(values))
    rises = values[w - 1:] - values[:len(values) - w + 1]
    start = int(np.argmax(rises))  # argmax returns the first maximum: earliest window on ties
    jumps = np.diff(values[start:start + w])
    return start, start + 1 + int(np.argmax(jumps)), float(rises[start])


def detect_t_grok(steps, test_acc, window: int = 5, threshold: float = 0.15,
                  forced: int | None = None, monotone: bool = True) -> TGrok:
    """t_grok of one run from its evaluation steps and test accuracies (see the module doc)."""
    if window < 2:
        raise ValueError(f"window must be at least 2 evaluation points, got {window}")
    order = np.argsort(np.asarray(steps), kind="stable")
    steps = np.asarray(steps, dtype=np.int64)[order]
    acc = np.asarray(test_acc, dtype=np.float64)[order]
    common = dict(window=window, threshold=threshold, monotone=monotone,
                  step_95=first_step_reaching(steps, acc, 0.95),
                  step_99=first_step_reaching(steps, acc, 0.99))
    if monotone:
        acc = np.maximum.accumulate(acc)
    if len(acc) < 2:
        found = dict(max_rise=None, window_steps=None, detected=None,
                     warning=f"t_grok not detected: only {len(acc)} evaluation point(s)")
    else:
        start, at, rise = sharpest_window(acc, window)
        end = start + min(window, len(acc)) - 1
        found = dict(max_rise=rise, window_steps=(int(steps[start]), int(steps[end])),
                     detected=int(steps[at]), warning=None)
        if rise < threshold - RISE_TOLERANCE:
            found.update(detected=None, warning=(
                f"t_grok not detected: maximum accuracy increase below threshold ({rise:.4f} < "
                f"{threshold} over {min(window, len(acc))} evaluation points)"))
        elif at == len(acc) - 1 and acc[-1] < 0.99:
            # The run stopped inside the rise: the jump that follows may be larger and later.
            found["warning"] = (
                f"t_grok {found['detected']} is the last evaluation and test accuracy there is "
                f"only {acc[-1]:.3f}: the run may have stopped mid-rise; train longer (more "
                "steps) or force t_grok=STEP")
    if forced is not None:
        return TGrok(t_grok=int(forced), method=METHOD_FORCED, **{**found, "warning": None},
                     **common)
    return TGrok(t_grok=found["detected"], method=METHOD_SHARPEST_RISE, **found, **common)
