"""Which steps evaluate, save analysis checkpoints and save the resume state."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# train.checkpoints=auto: a short run needs few analysis checkpoints, but a long one needs many,
# or its log-spaced half leaves the grokking transition between two of them (12 checkpoints of a
# 400k-step run: none between steps 174 and 2297, where t_grok lies). From LONG_RUN_STEPS steps
# on, auto saves as many as train=long.
LONG_RUN_STEPS = 20_000
AUTO_CHECKPOINTS = 12
AUTO_CHECKPOINTS_LONG = 200
# train.eval_every=auto: every 100 steps up to step LONG_RUN_STEPS, where the default recipes'
# transitions lie (t_grok keeps its resolution, and a short run is evaluated as before), every
# 500 after it, as train=long does. Every evaluation costs ~4 training steps, so every 100 steps
# throughout would spend ~4% of a 400k-step run on its 4189 evaluations (the 200 checkpoints
# included); auto evaluates 1149 times.
AUTO_EVAL_EVERY = 100
AUTO_EVAL_EVERY_LATE = 500


def checkpoint_count(setting: int | str, steps: int) -> int:
    """The number of analysis checkpoints train.checkpoints asks for: an int as given, or auto
    (AUTO_CHECKPOINTS, or AUTO_CHECKPOINTS_LONG for runs of at least LONG_RUN_STEPS steps)."""
    if setting == "auto":
        return AUTO_CHECKPOINTS_LONG if steps >= LONG_RUN_STEPS else AUTO_CHECKPOINTS
    return int(setting)


def checkpoint_steps(steps: int, count: int, spacing: str) -> list[int]:
    """About `count` distinct steps in [0, steps], always including 0 and `steps`.

    log: geometric from 1 to steps, dense early where grokking curves change fastest;
    linear: evenly spaced; log+linear: half of each, so both the start and the long middle of a
    run are covered. Rounding merges close early steps, so short runs get fewer.
    """
    if count <= 0:
        return []
    log_count = {"log": count, "linear": 0, "log+linear": count // 2}[spacing]
    lin_count = count - log_count
    chosen = {0, steps}
    if log_count:
        chosen.update(np.unique(np.round(np.geomspace(1, steps, log_count))).astype(int).tolist())
    if lin_count:
        chosen.update(np.round(np.linspace(0, steps, lin_count)).astype(int).tolist())
    return sorted(chosen)


def eval_steps(steps: int, eval_every: int | str, extra: list[int]) -> EvalSteps:
    """Every eval_every steps (auto: every AUTO_EVAL_EVERY up to step LONG_RUN_STEPS, every
    AUTO_EVAL_EVERY_LATE after it), plus 0, the last step and the `extra` steps (checkpoints), so
    that every saved checkpoint has its train and test metrics."""
    return EvalSteps(steps, eval_every, frozenset(extra))


@dataclass(frozen=True)
class EvalSteps:
    """The steps that evaluate (eval_steps), as a test of membership and a count: a set of them
    would take memory in proportion to the run's length, gigabytes for a long run evaluated
    every step."""

    steps: int
    every: int | str
    extra: frozenset[int]

    def __contains__(self, step: int) -> bool:
        return step in self.extra or step == self.steps or self._on_cadence(step)

    def __len__(self) -> int:
        off_cadence = {s for s in self.extra | {self.steps} if not self._on_cadence(s)}
        return self._cadence_count() + len(off_cadence)

    def _every(self, step: int) -> int:
        if self.every == "auto":
            return AUTO_EVAL_EVERY if step <= LONG_RUN_STEPS else AUTO_EVAL_EVERY_LATE
        return int(self.every)

    def _on_cadence(self, step: int) -> bool:
        return 0 <= step <= self.steps and step % self._every(step) == 0

    def _cadence_count(self) -> int:
        if self.every != "auto":
            return self.steps // int(self.every) + 1
        early = min(self.steps, LONG_RUN_STEPS) // AUTO_EVAL_EVERY + 1
        late = max(0, self.steps // AUTO_EVAL_EVERY_LATE - LONG_RUN_STEPS // AUTO_EVAL_EVERY_LATE)
        return early + late
