"""Train K seeds of one configuration in one process, as one batched model.

The K models' parameters are stacked along a leading seed dimension. The forward pass is
torch.func.vmap over the seeds of one model's functional_call, so every matmul becomes one batched
matmul over the seeds; the loss is the sum of the seeds' own mean losses, so each seed receives
exactly its own gradient; one AdamW updates the stacked tensors element by element.

Everything that belongs to a run stays per seed, in one ordinary Trainer per seed: the split, the
minibatch order, metrics.jsonl, the weights-only checkpoints, the resume state (last.pt, in the
single-run format, so a seed's directory can also be resumed alone) and the logger. The batch
copies its stacked state into those trainers' models and optimizers only when it writes files.

On the CPU the seeds' numbers are bitwise those of separate runs (tests/test_multiseed.py): a
batched matmul computes each seed's slice with the same kernel as a plain one, LayerNorm's affine
part is written the way vmap computes it (grok.model.transformer.LayerNorm), and the loss and the
weight norm are taken per seed. Other devices are only checked to agree within rounding.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from grok.errors import GrokError
from grok.train import checkpoint as ckpt
from grok.train.trainer import (
    EVAL_BATCH,
    Trainer,
    _NullBar,
    make_optimizer,
    read_metrics,
    train_until,
)


class SeedBatchError(GrokError):
    """The seeds cannot be trained as one batch (different shapes or resume points)."""


class SeedBatch:
    """Trains the models of `trainers` (one per seed, same configuration apart from the seed)
    together; each trainer's run directory ends up as if it had been trained alone."""

    def __init__(self, trainers: list[Trainer]):
        first = trainers[0]
        sizes = {(len(t.train_x), len(t.test_x)) for t in trainers}
        if len(sizes) > 1:
            raise SeedBatchError(f"the seeds' splits have different sizes {sorted(sizes)}; "
                                 "train them as separate runs (seed=..., -m for a sweep)")
        self.trainers, self.s, self.device = trainers, first.s, first.device
        self.template = first.model  # supplies the code and the (unbatched) buffers
        self.names = [name for name, _ in first.model.named_parameters()]
        self.params = {name: nn.Parameter(torch.stack([t.model.get_parameter(name).detach()
                                                       for t in trainers]))
                       for name in self.names}
        self.optimizer = make_optimizer(list(self.params.values()), self.s, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: first.lr_factor(i + 1))
        self.train_x = torch.stack([t.train_x for t in trainers])  # (K, n_train, n_ctx)
        self.train_y = torch.stack([t.train_y for t in trainers])
        # Models with features() (the transformer) unembed per seed, see _train_step; others
        # (e.g. a model without an unembedding matrix) run whole under vmap.
        self.unembed_per_seed = hasattr(first.model, "features") and "W_U" in self.params
        self.batched = vmap(self._batched_one, in_dims=(0, 0))
        self.step = 0
        self.should_stop = first.should_stop  # a stop signal stops the whole batch

    @property
    def saved_step(self) -> int:
        """Step of the last resume state written (all seeds save together)."""
        return self.trainers[0].saved_step

    def _batched_one(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if self.unembed_per_seed:
            return self._call(params, x, "features")
        return self._call(params, x, "forward").logits

    def _call(self, params: dict[str, torch.Tensor], x: torch.Tensor, method: str) -> Any:
        """template.<method>(x) with `params` (one seed's) in place of its parameters."""
        state = {f"model.{name}": p for name, p in params.items()}
        state.update({f"model.{name}": b for name, b in self.template.named_buffers()})
        return functional_call(_Method(self.template, method), state, (x,))


    # ------------------------------------------------------------------------------- train
    def _train_step(self) -> None:
        if self.trainers[0].sampler.full_batch:
            x, y = self.train_x, self.train_y
        else:
            idx = torch.stack([t.sampler.batch(self.step) for t in self.trainers])  # (K, batch)
            x = torch.take_along_dim(self.train_x, idx[..., None], dim=1)
            y = torch.take_along_dim(self.train_y, idx, dim=1)
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.s.precision == "bf16"):
            out = self.batched(self.params, x)
            if self.unembed_per_seed:  # out: (K, batch, d_model)
                # The unembedding per seed, outside vmap: with an odd number of classes the seeds'
                # logits would sit at unaligned offsets of one batched output, where BLAS may pick
                # another kernel (other rounding) than for a single run's.
                logits = [f @ w for f, w in zip(out.unbind(0), self.params["W_U"].unbind(0))]
            else:
                logits = list(out.unbind(0))
        # Each seed's own mean loss, computed as a single run computes it; their sum gives every
        # seed exactly its own gradient.
        loss = sum(F.cross_entropy(lg.float(), t) for lg, t in zip(logits, y.unbind(0)))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        for t in self.trainers:
            t.step = self.step

    @torch.no_grad()
    def evaluate(self) -> list[dict[str, float]]:
        """Each seed's metrics row, computed exactly as its own Trainer.evaluate would: one plain
        forward pass per seed (evaluation is not per step, so batching it over the seeds would
        save little, and MKL computes some small batched matmuls with different rounding)."""
        self.template.eval()
        rows = []
        for k, t in enumerate(self.trainers):
            params = {name: self.params[name][k] for name in self.names}
            logits = torch.cat([self._call(params, t.eval_x[i:i + EVAL_BATCH], "forward").logits
                                .float() for i in range(0, len(t.eval_x), EVAL_BATCH)])
            rows.append(t.metric_row(logits, list(params.values())))
        self.template.train()
        return rows

    # ------------------------------------------------------------------ per-seed state sync
    @torch.no_grad()
    def _sync(self, optimizer: bool) -> None:
        """Copy the stacked weights (and optimizer state) into every seed's own trainer."""
        stacked = self.optimizer.state_dict() if optimizer else None
        for k, t in enumerate(self.trainers):
            for name, p in t.model.named_parameters():
                p.copy_(self.params[name][k])
            if stacked is not None:
                t.optimizer.load_state_dict(_seed_state(stacked, k))
                t.scheduler.load_state_dict(self.scheduler.state_dict())

    @torch.no_grad()
    def _load_from_trainers(self) -> None:
        """The stacked state from the seeds' resumed trainers (the inverse of _sync)."""
        for name in self.names:
            self.params[name].copy_(torch.stack([t.model.get_parameter(name)
                                                 for t in self.trainers]))
        states = [t.optimizer.state_dict() for t in self.trainers]
        merged = {"param_groups": states[0]["param_groups"], "state": {}}
        for i, first in states[0]["state"].items():
            merged["state"][i] = {key: (value if key == "step" else
                                        torch.stack([s["state"][i][key] for s in states]))
                                  for key, value in first.items()}
        self.optimizer.load_state_dict(merged)
        self.scheduler.load_state_dict(self.trainers[0].scheduler.state_dict())

    # ------------------------------------------------------------------------------- loop
    def _at_step_boundary(self, bar: Any) -> None:
        first = self.trainers[0]
        if self.step in first.eval_at:
            rows = self.evaluate()
            if not all(math.isfinite(r["train/loss"]) for r in rows):
                self._sync(optimizer=True)  # a diverged seed saves its state and stops the batch
            for t, row in zip(self.trainers, rows):
                t._record(row)
            bar.set_postfix(test_acc=" ".join(f"{r['test/acc']:.2f}" for r in rows),
                            refresh=False)
        if self.step in first.checkpoint_at:
            self._sync(optimizer=False)
            for t in self.trainers:
                ckpt.save_weights(t.run_dir, self.step, t.model, t.model.config_dict(),
                                  t.split.task)
        if self.step % self.s.resume_every == 0 or self.step == self.s.steps:
            self.save_resume_state()

    def save_resume_state(self) -> None:
        self._sync(optimizer=True)
        for t in self.trainers:
            t.save_resume_state()

    def fit(self, resume_states: list[dict | None], until: int | None = None,
            ) -> list[list[dict[str, float]]]:
        """Train every seed to settings.steps, continuing from their resume states (all or none);
        return each seed's metric rows. `until` stops early as Trainer.fit does."""
        stop = self.s.steps if until is None else min(until, self.s.steps)
        resumed = [s is not None for s in resume_states]
        if any(resumed) and not all(resumed):
            missing = [str(t.run_dir) for t, r in zip(self.trainers, resumed) if not r]
            raise SeedBatchError(f"some seeds have no resume state ({', '.join(missing)}); "
                                 "resume the batch with all its seeds or start a new run dir")
        # checked before any seed resumes: _resume cuts a seed's metrics.jsonl back to its own
        # step (and rewrites its checkpoint there), which a refused batch must not do
        steps = sorted({int(s["step"]) for s in resume_states if s is not None})
        if len(steps) > 1:
            raise SeedBatchError(f"the seeds were saved at different steps {steps}; resume each "
                                 "seed's run directory on its own")
        self.template.train()
        for t, state in zip(self.trainers, resume_states):
            t.run_dir.mkdir(parents=True, exist_ok=True)
            t._clock = time.perf_counter()  # the seeds' clocks start together, here
            if state is not None:
                t._resume(state)
        if all(resumed):
            self.step = steps[0]
            self._load_from_trainers()
        else:
            for t in self.trainers:
                t.metrics_path.unlink(missing_ok=True)
            self._at_step_boundary(_NullBar())
        train_until(self, stop, f"train x{len(self.trainers)}")
        return [read_metrics(t.metrics_path) for t in self.trainers]


class _Method(nn.Module):
    """Calls one method of `model` as its forward (functional_call always calls forward)."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x: torch.Tensor) -> Any:
        return getattr(self.model, self.method)(x)


def _seed_state(stacked: dict, k: int) -> dict:
    """Seed k's slice of a stacked AdamW state dict (same parameter order as a single model).

    The slices are copies: load_state_dict keeps a view as it is, and torch.save writes a view's
    whole storage, so every seed's resume state would hold all K seeds' moments."""
    return {
        "param_groups": stacked["param_groups"],
        "state": {i: {key: (value if key == "step" else value[k].clone())
                      for key, value in s.items()}
                  for i, s in stacked["state"].items()},
    }
