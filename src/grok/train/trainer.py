"""The training loop: AdamW with warmup, evaluation at a cadence, checkpoints, exact resume."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from grok import commands
from grok.data.splits import Split
from grok.data.tasks import Task
from grok.device import use_compile
from grok.errors import GrokError
from grok.naming import complete_identity
from grok.progress import progress_enabled
from grok.tracking.base import Logger
from grok.train import checkpoint as ckpt
from grok.train.sampler import BatchSampler
from grok.train.schedule import checkpoint_count, checkpoint_steps, eval_steps

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
# Rows per evaluation forward pass: small enough for the activations to stay in cache (an
# evaluation of all 9409 pairs of p = 97 in chunks of 2048 runs 1.7x faster than in one piece).
EVAL_BATCH = 2048


class TrainingDiverged(GrokError):
    """The loss became NaN or infinite."""


class ResumeMismatch(GrokError):
    """The run directory holds a run with a different configuration, or one already past the
    requested length."""


class TrainingStopped(Exception):
    """fit() was asked to stop (should_stop) and saved the resume state at a step boundary."""

    def __init__(self, step: int):
        super().__init__(f"training stopped at step {step}; resume state saved")
        self.step = step


@contextlib.contextmanager
def deterministic_algorithms():
    """torch.use_deterministic_algorithms(True) inside the block (warn_only: an op without a
    deterministic version warns instead of failing), the previous setting after it."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def first_difference(saved: Any, wanted: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    """(dotted key, saved value, wanted value) of the first leaf where two nested dicts differ,
    in sorted key order; None when they are equal."""
    if not (isinstance(saved, dict) and isinstance(wanted, dict)):
        return None if saved == wanted else (prefix, saved, wanted)
    for key in sorted(set(saved) | set(wanted)):
        found = first_difference(saved.get(key), wanted.get(key), f"{prefix}{key}.")
        if found is not None:
            return found
    return None


def check_identity(saved: dict[str, Any], wanted: dict[str, Any], run_dir: Path,
                   fresh_beside: Path | None = None, sweep_dir: Path | None = None) -> None:
    """Raise ResumeMismatch naming the first key where the saved run and this command differ,
    and a folder beside `fresh_beside` (default run_dir) to start fresh in, or, for a job of the
    sweep in `sweep_dir`, a fresh sweep folder."""
    found = first_difference(complete_identity(saved), complete_identity(wanted))
    if found is not None:
        key, had, has = found[0].removesuffix("."), found[1], found[2]
        digest = hashlib.sha1(json.dumps(wanted, sort_keys=True, default=str).encode())
        raise ResumeMismatch(
            f"{run_dir} holds a run with {key}={had!r}, but this command has {key}={has!r}; "
            "repeat the original overrides to resume it, or start fresh elsewhere with "
            f"{commands.elsewhere(fresh_beside or run_dir, digest.hexdigest()[:6], sweep_dir)}")


@dataclass
class TrainSettings:
    steps: int
    batch_size: int | None  # None: full batch
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    warmup_steps: int
    seed: int
    eval_every: int | str  # steps, or "auto" (grok.train.schedule.eval_steps)
    checkpoint_steps: list[int]
    resume_every: int
    progress: bool = True
    # Speed-ups that leave the trained function unchanged (bf16 changes the matmul precision).
    compile: bool = False  # torch.compile the loss and the evaluation forward pass
    precision: str = "fp32"  # "bf16": matmuls under torch.autocast(bfloat16), weights fp32
    fused_optimizer: bool = True  # one fused AdamW kernel (else the foreach implementation)
    # Parts of the run's config that must match to resume (a different one is a different run).
    identity: dict[str, Any] = field(default_factory=dict)


def build_settings(cfg, identity: dict[str, Any], device: torch.device) -> TrainSettings:
    """TrainSettings from a checked grok.config.Config for training on `device` (which decides
    train.compile=auto; raises GrokError when train.compile=true cannot work there)."""
    tr, o = cfg.train, cfg.optim
    return TrainSettings(
        steps=cfg.steps,
        batch_size=None if tr.batch_size == "full" else int(tr.batch_size),
        lr=o.lr,
        weight_decay=o.weight_decay,
        betas=(o.betas[0], o.betas[1]),
        warmup_steps=o.warmup_steps,
        seed=cfg.seed,
        eval_every=tr.eval_every,
        checkpoint_steps=checkpoint_steps(cfg.steps, checkpoint_count(tr.checkpoints, cfg.steps),
                                          tr.checkpoint_spacing),
        resume_every=tr.resume_every,
        progress=tr.progress,
        compile=use_compile(tr.compile, device, cfg.steps),
        precision=tr.precision,
        fused_optimizer=tr.fused_optimizer,
        identity=identity,
    )


class Trainer:
    """Trains `model` on `split` of `task`, writing metrics and checkpoints into run_dir."""

    def __init__(self, model: nn.Module, task: Task, split: Split, settings: TrainSettings,
                 logger: Logger, run_dir: Path, device: torch.device):
        self.model, self.task, self.split, self.s = model, task, split, settings
        self.logger, self.run_dir, self.device = logger, Path(run_dir), device
        tokens, labels = task.tokens().to(device), task.labels.to(device)
        self.train_x, self.train_y = tokens[split.train_idx], labels[split.train_idx]
        self.test_x, self.test_y = tokens[split.test_idx], labels[split.test_idx]
        # Evaluation runs one forward pass over both sets, train rows first.
        self.eval_x = torch.cat([self.train_x, self.test_x])
        self.eval_y = torch.cat([self.train_y, self.test_y])
        self.sampler = BatchSampler(len(split.train_idx), settings.batch_size, settings.seed,
                                    device)
        self.optimizer = make_optimizer(model.parameters(), settings, device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: self.lr_factor(i + 1))
        self.eval_at = eval_steps(settings.steps, settings.eval_every, settings.checkpoint_steps)
        self.checkpoint_at = set(settings.checkpoint_steps)
        self.metrics_path = self.run_dir / METRICS_FILE
        # Stored in last.pt, e.g. the W&B run id; a callable value is called at each save.
        self.extra_state: dict[str, Any] = {}
        # Checked at every step boundary; when it returns True, fit() saves the resume state and
        # raises TrainingStopped (set by the entry point, e.g. to a signal flag).
        self.should_stop: Callable[[], bool] = lambda: False
        self._loss = self._loss_fn
        self._eval_logits = self._eval_logits_fn
        self._deterministic = contextlib.nullcontext
        if settings.compile:
            # Static shapes only: with dynamo's automatic dynamic shapes, the kernel a shape gets
            # (and its rounding) would depend on which shapes this process compiled before.
            self._loss = torch.compile(self._loss_fn, dynamic=False)
            self._eval_logits = torch.compile(self._eval_logits_fn, dynamic=False)
            # Inductor writes the backward of the embedding gathers as a parallel scatter with
            # atomic adds, whose order (and so rounding) changes from run to run on 2 threads.
            # Under deterministic algorithms, which it checks while compiling and dynamo guards
            # on at every call, it calls ATen's serial CPU kernel instead.
            self._deterministic = deterministic_algorithms
        self.step = 0
        self.last_eval_step: int | None = None  # step of the last row in metrics.jsonl
        self.saved_step = -1  # step of the last resume state written by this process
        self._elapsed_before = 0.0
        self._clock = time.perf_counter()

    def lr_factor(self, update: int) -> float:
        """Linear warmup over the first warmup_steps updates (1-based), then constant."""
        return min(1.0, update / self.s.warmup_steps) if self.s.warmup_steps else 1.0

    @property
    def elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._clock

    # ----------------------------------------------------------------------------- resume
    def _resume(self, state: dict) -> None:
        check_identity(state.get("identity", {}), self.s.identity, self.run_dir)
        self.model.load_state_dict(state["model"])  # load_state_dict copies onto the device
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.step = int(state["step"])
        self._elapsed_before = float(state["elapsed_s"])
        self._clock = time.perf_counter()
        rows = check_history(self.run_dir, state)  # before the file is touched
        self._truncate_metrics(rows)
        self.last_eval_step = rows[-1]["step"] if rows else None
        self._restore_checkpoint()

    def _restore_checkpoint(self) -> None:
        """Write the analysis checkpoint of the resumed step again if it is missing or damaged:
        the resume state holds the same weights. Steps after it are written as training passes
        them, but a finished run trains no further step, so without this its final checkpoint,
        once lost, could never come back."""
        if self.step not in self.checkpoint_at:
            return
        path = ckpt.checkpoint_path(self.run_dir, self.step)
        try:
            ckpt.load_checkpoint(path)
            return
        except FileNotFoundError:
            problem = "missing"
        except ckpt.DamagedCheckpoint as exc:
            problem = f"damaged ({exc.reason})"
        ckpt.save_weights(self.run_dir, self.step, self.model, self.model.config_dict(),
                          self.split.task)
        log.warning("%s was %s; wrote it again from the resume state at step %d", path, problem,
                    self.step)

    def _truncate_metrics(self, rows: list[dict[str, float]]) -> None:
        """Keep only `rows`: those written after the resume state was saved are redone."""
        if not self.metrics_path.exists():
            return
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, self.metrics_path)

    def save_resume_state(self) -> None:
        self.saved_step = self.step
        # The rows the state records as written must be on disk before it: after a power cut a
        # resume checks metrics.jsonl against it (check_history), and appends are not synced.
        if self.metrics_path.exists():
            with open(self.metrics_path, "rb+") as f:
                os.fsync(f.fileno())
        ckpt.save_resume_state(self.run_dir, {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "elapsed_s": self.elapsed,
            "last_eval_step": self.last_eval_step,  # resume checks metrics.jsonl against it
            "identity": self.s.identity,
            **{k: v() if callable(v) else v for k, v in self.extra_state.items()},
        })

    # ---------------------------------------------------------------------------- evaluate
    def _eval_logits_fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits.float()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss and accuracy on the full train and test sets (fp32, one forward pass over both
        in batches of EVAL_BATCH), learning rate and weight norm; one host synchronisation."""
        was_training = self.model.training
        self.model.eval()
        logits = torch.cat([self._eval_logits(self.eval_x[i:i + EVAL_BATCH])
                            for i in range(0, len(self.eval_x), EVAL_BATCH)])
        self.model.train(was_training)
        return self.metric_row(logits, list(self.model.parameters()))

    @torch.no_grad()
    def metric_row(self, logits: torch.Tensor, params: list[torch.Tensor]) -> dict[str, float]:
        """The metrics row of this step from the logits on eval_x (train rows, then test rows)
        and the model's parameters."""
        y, n = self.eval_y, len(self.train_x)
        loss = F.cross_entropy(logits, y, reduction="none")
        # float64 for the hits: their mean is then exactly correct / n, as a count would give
        hit = (logits.argmax(-1) == y).double()
        norm = torch.sqrt(sum((p.float() ** 2).sum() for p in params))
        train_loss, train_acc, test_loss, test_acc, weight_norm = torch.stack([
            loss[:n].mean().double(), hit[:n].mean(), loss[n:].mean().double(), hit[n:].mean(),
            norm.double()]).tolist()
        return {
            "step": self.step,
            "train/loss": train_loss,
            "train/acc": train_acc,
            "test/loss": test_loss,
            "test/acc": test_acc,
            "lr": self.s.lr * self.lr_factor(max(self.step, 1)),
            "weight_norm": weight_norm,
            "time/elapsed_s": self.elapsed,
        }

    def _record(self, row: dict[str, float]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.last_eval_step = row["step"]
        self.logger.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        if not math.isfinite(row["train/loss"]):
            self.save_resume_state()
            raise TrainingDiverged(
                f"the training loss became {row['train/loss']} by step {self.step}; state saved "
                f"in {self.run_dir}. Lower optim.lr or raise optim.warmup_steps and start a new "
                "run")

    # ------------------------------------------------------------------------------- train
    def _loss_fn(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.s.precision == "bf16"):
            logits = self.model(x).logits
        return F.cross_entropy(logits.float(), y)

    def _train_step(self) -> None:
        """One update, with no host synchronisation (no .item(), no copy to the CPU)."""
        if self.sampler.full_batch:  # the batch is the training set in its own order
            x, y = self.train_x, self.train_y
        else:
            idx = self.sampler.batch(self.step)
            x, y = self.train_x[idx], self.train_y[idx]
        with self._deterministic():
            loss = self._loss(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1

    def _at_step_boundary(self, bar: tqdm) -> None:
        if self.step in self.eval_at:
            row = self.evaluate()
            self._record(row)
            bar.set_postfix(train_acc=f"{row['train/acc']:.3f}", test_acc=f"{row['test/acc']:.3f}",
                            refresh=False)
        if self.step in self.checkpoint_at:
            ckpt.save_weights(self.run_dir, self.step, self.model, self.model.config_dict(),
                              self.split.task)
        if self.step % self.s.resume_every == 0 or self.step == self.s.steps:
            self.save_resume_state()

    def fit(self, resume_state: dict | None = None, until: int | None = None,
            ) -> list[dict[str, float]]:
        """Train to settings.steps, continuing from `resume_state` (the contents of last.pt) when
        given; return all metric rows of the run so far. With `until`, stop after that step as if
        interrupted there (the resume state is saved)."""
        stop = self.s.steps if until is None else min(until, self.s.steps)
        self.model.train()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_state is not None:
            self._resume(resume_state)
        else:
            self.metrics_path.unlink(missing_ok=True)
            self._at_step_boundary(_NullBar())
        train_until(self, stop, "train")
        return read_metrics(self.metrics_path)


def train_until(trainer: Any, stop: int, desc: str) -> None:
    """The loop of Trainer.fit and SeedBatch.fit: update to step `stop` with a progress bar,
    evaluating and saving at each step boundary; save the resume state if stopped early, and
    raise TrainingStopped if `trainer.should_stop()` asked for the stop."""
    bar = tqdm(total=trainer.s.steps, initial=trainer.step, desc=desc, unit="step",
               dynamic_ncols=True, disable=not progress_enabled(trainer.s.progress))
    try:
        while trainer.step < stop and not trainer.should_stop():
            trainer._train_step()
            bar.update(1)
            trainer._at_step_boundary(bar)
    finally:
        bar.close()
    if trainer.step < trainer.s.steps:
        if trainer.saved_step != trainer.step:  # keep previous.pt one save behind last.pt
            trainer.save_resume_state()
        if trainer.should_stop():
            raise TrainingStopped(trainer.step)


def make_optimizer(params: Iterable[torch.Tensor], s: TrainSettings, device: torch.device
                   ) -> torch.optim.Optimizer:
    """AdamW; fused into one kernel where torch has one (CPU, CUDA), else the foreach version.
    Both are AdamW exactly; they differ only in floating-point rounding."""
    fused = s.fused_optimizer and device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=s.lr, betas=s.betas,
                             weight_decay=s.weight_decay, fused=fused or None,
                             foreach=None if fused else True)


class _NullBar:
    def set_postfix(self, **_: Any) -> None:
        pass


def check_history(run_dir: Path, state: dict) -> list[dict[str, float]]:
    """The metric rows of run_dir up to its resume state `state`. Refuses a run whose
    metrics.jsonl lost rows (deleted, cut short, replaced): they cannot be redone, and t_grok
    would be detected on what is left; and a run that diverged: its saved weights are not
    finite. grok.assemble calls it before anything is written, Trainer._resume again."""
    path = Path(run_dir) / METRICS_FILE
    rows = ([r for r in read_metrics(path, torn_tail_ok=True) if r["step"] <= state["step"]]
            if path.exists() else [])
    last_eval_step = state.get("last_eval_step")
    if last_eval_step is not None and (not rows or rows[-1]["step"] != last_eval_step):
        found = f"ends at step {rows[-1]['step']}" if rows else "is missing or empty"
        raise ResumeMismatch(
            f"{path} {found}, but the run had evaluated step {last_eval_step} when its resume "
            "state was saved: its history is damaged and cannot be redone. Restore the file "
            "from a copy, or start fresh in another directory (hydra.run.dir=...)")
    if rows and not math.isfinite(rows[-1]["train/loss"]):
        raise ResumeMismatch(
            f"{run_dir} diverged (training loss {rows[-1]['train/loss']} at step "
            f"{rows[-1]['step']}), so it cannot continue: start a new run with a lower optim.lr "
            "or a larger optim.warmup_steps")
    return rows


class DamagedMetrics(GrokError):
    """metrics.jsonl cannot be read."""


def read_metrics(path: Path, torn_tail_ok: bool = False) -> list[dict[str, float]]:
    """All rows of a metrics.jsonl file, in order. With torn_tail_ok, a last line cut short by a
    killed write is dropped (with a warning) instead of raising."""
    try:
        with open(path) as f:
            lines = [line for line in f if line.strip()]
    except FileNotFoundError:
        raise DamagedMetrics(f"{path} is missing; restore it from a copy of the run directory "
                             "(the evaluation history cannot be recomputed)") from None
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if not (torn_tail_ok and i == len(lines) - 1):
                raise DamagedMetrics(f"{path} line {i + 1} is not valid JSON: the file is "
                                     "damaged; restore it from a copy of the run directory"
                                     ) from None
            log.warning("%s: its last line is cut short (a write was killed); ignoring it", path)
    return rows
