"""Weights & Biases backend: one W&B run per training job, offline unless told otherwise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class WandbLogger:
    """Opens its own W&B run in `run_dir/wandb` and finishes it in close().

    reinit="create_new" makes every job get a fresh run even if a previous job in the same
    process (a Hydra multirun) left one unfinished; without it wandb 0.31 hands back the old run.
    Metrics use "step" as their x-axis (define_metric), so analyses may log values for earlier
    steps after training has moved on, which wandb.log(step=...) would drop.

    A resumed run reopens the same run id and, offline, with start_step (the run's history_step
    when its resume state was saved) continues W&B's own row counter `_step` there: rows redone
    after a crash take the `_step` of their first version, so `wandb sync` of the fragments in
    order rebuilds the uninterrupted history.
    """

    def __init__(self, run_dir: Path, *, project: str, config: dict[str, Any], group: str,
                 name: str, tags: list[str], entity: str | None = None, mode: str | None = None,
                 run_id: str | None = None, job_type: str = "train",
                 start_step: int | None = None):
        import wandb  # lazily: importing wandb costs about a second and most code never logs

        self._wandb = wandb
        self.mode = mode or os.environ.get("WANDB_MODE") or "offline"
        self._run = wandb.init(
            project=project,
            entity=entity,
            dir=str(run_dir),
            mode=self.mode,
            id=run_id,
            resume="allow" if run_id else None,
            group=group,
            name=name,
            tags=tags,
            job_type=job_type,
            config=config,
            reinit="create_new",
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )
        self.run_id = self._run.id
        self._run.define_metric("step")
        self._run.define_metric("*", step_metric="step")
        # Applied to the first row this fragment logs. Offline only: online, W&B resumes the
        # counter from the server and would drop a row with a lower _step.
        self._start_step = (start_step or None) if self.mode == "offline" else None

    @property
    def history_step(self) -> int:
        """W&B's `_step` of the next row (saved in the resume state)."""
        return self._run.step

    def _log(self, row: dict[str, Any]) -> None:
        step, self._start_step = self._start_step, None
        if step is None:
            self._run.log(row)
        else:  # with an explicit step W&B would hold the row open for more keys: commit it
            self._run.log(row, step=step, commit=True)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._log({**metrics, "step": step})

    def log_figure(self, name: str, path: Path, step: int | None = None) -> None:
        row: dict[str, Any] = {name: self._wandb.Image(str(path))}
        if step is not None:
            row["step"] = step
        self._log(row)

    def summary(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self._run.summary[key] = value

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        table = self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])
        self._run.log({name: table})

    def close(self, exit_code: int = 0) -> None:
        self._run.finish(exit_code=exit_code)
