"""Train/test splits of a task's pairs: random, structured (block or stripe) and conflict.

Every split is a pure function of (task, parameters, seed). It is saved once to split.pt with a
checksum; analyses load that file and never recompute it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from grok.data.tasks import Task
from grok.errors import GrokError, brief


class SplitError(GrokError, ValueError):
    """A split cannot be built or loaded; the message says why."""


@dataclass(frozen=True)
class Split:
    """Row indices into `task.pairs` for training and testing, with how they were made."""

    name: str
    params: dict[str, Any]
    seed: int
    train_idx: torch.Tensor  # (n_train,) int64, sorted
    test_idx: torch.Tensor  # (n_test,) int64, sorted
    mirror_leak: float  # fraction of test pairs (a, b) whose mirror (b, a) is in training
    task: dict[str, Any] = field(default_factory=dict)  # {"op", "p"} the split belongs to

    @property
    def checksum(self) -> str:
        return split_checksum(self.task, self.train_idx, self.test_idx)


def split_checksum(task: dict[str, Any], train_idx: torch.Tensor, test_idx: torch.Tensor) -> str:
    h = hashlib.sha256(f"{task.get('op')}:{task.get('p')}".encode())
    h.update(train_idx.to(torch.int64).numpy().tobytes())
    h.update(b"|")
    h.update(test_idx.to(torch.int64).numpy().tobytes())
    return h.hexdigest()


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_subset(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=gen)[:k]


def random_test_mask(task: Task, train_frac: float, gen: torch.Generator) -> torch.Tensor:
    n_train = round(train_frac * task.n)
    test = torch.ones(task.n, dtype=torch.bool)
    test[_random_subset(task.n, n_train, gen)] = False
    return test


def block_test_mask(task: Task, train_frac: float, gen: torch.Generator) -> torch.Tensor:
    """Test on A x A for a random residue set A with |A| = round(sqrt(1 - train_frac) * p)."""
    size = round(math.sqrt(1.0 - train_frac) * task.p)
    in_a = torch.zeros(task.p, dtype=torch.bool)
    in_a[_random_subset(task.p, size, gen)] = True
    a, b = task.pairs[:, 0], task.pairs[:, 1]
    return in_a[a] & in_a[b]


def stripe_test_mask(task: Task, train_frac: float, gen: torch.Generator) -> torch.Tensor:
    """Test on all pairs with (a - b) mod p in a random symmetric difference set D = -D.

    |D| is round((1 - train_frac) * p): pairs {d, p - d} are drawn at random, plus 0 when |D| is
    odd (0 is its own negative; for even p, p/2 is too and completes an odd count first).
    """
    p = task.p
    target = round((1.0 - train_frac) * p)
    singles = [0] + ([p // 2] if p % 2 == 0 else [])
    couples = [(d, p - d) for d in range(1, (p + 1) // 2)]
    order = torch.randperm(len(couples), generator=gen).tolist()
    chosen: list[int] = []
    if target % 2 == 1:
        chosen.append(singles.pop(0))
    for i in order:
        if len(chosen) + 2 > target:
            break
        chosen.extend(couples[i])
    while len(chosen) < target and singles:  # even p: p/2 (and 0 when D is every difference)
        chosen.append(singles.pop(0))
    in_d = torch.zeros(p, dtype=torch.bool)
    in_d[torch.tensor(chosen, dtype=torch.long)] = True
    diff = (task.pairs[:, 0] - task.pairs[:, 1]) % p
    return in_d[diff]


def conflict_masks(task: Task, train_frac: float, gen: torch.Generator):
    """Train on (a subsample of) the pairs whose integer result needs no reduction mod p."""
    if task.raw is None:
        raise SplitError(f"the conflict split is not defined for {task.op} (no integer shortcut)")
    no_wrap = (task.raw >= 0) & (task.raw < task.p)
    candidates = no_wrap.nonzero().squeeze(1)
    keep = candidates[_random_subset(len(candidates), round(train_frac * len(candidates)), gen)]
    train = torch.zeros(task.n, dtype=torch.bool)
    train[keep] = True
    return train, ~no_wrap


def mirror_leak_fraction(task: Task, train: torch.Tensor, test: torch.Tensor) -> float:
    """Fraction of test pairs (a, b) whose mirror (b, a) is a training pair."""
    p = task.p
    row_of = torch.full((p * p,), -1, dtype=torch.long)
    row_of[task.pairs[:, 0] * p + task.pairs[:, 1]] = torch.arange(task.n)
    mirror = row_of[task.pairs[:, 1] * p + task.pairs[:, 0]]
    mirror_in_train = (mirror >= 0) & train[mirror.clamp(min=0)]
    n_test = int(test.sum())
    return float((mirror_in_train & test).sum()) / n_test if n_test else 0.0


def make_split(task: Task, name: str, train_frac: float, seed: int,
               pattern: str = "block") -> Split:
    """Build a split; raises SplitError when the result would leave train or test empty."""
    gen = _generator(seed)
    params: dict[str, Any] = {"train_frac": train_frac}
    if name == "random":
        test = random_test_mask(task, train_frac, gen)
        train = ~test
    elif name == "structured":
        params["pattern"] = pattern
        if pattern == "block":
            test = block_test_mask(task, train_frac, gen)
        elif pattern == "stripe":
            test = stripe_test_mask(task, train_frac, gen)
        else:
            raise SplitError(f"unknown structured pattern {pattern!r}; choose block or stripe")
        train = ~test
    elif name == "conflict":
        train, test = conflict_masks(task, train_frac, gen)
    else:
        raise SplitError(f"unknown split {name!r}; choose random, structured or conflict")
    if not train.any() or not test.any():
        raise SplitError(
            f"split={name} with train_frac={train_frac} on {task.op} mod {task.p} leaves "
            f"{int(train.sum())} training and {int(test.sum())} test pairs; "
            "choose a train_frac that leaves both non-empty"
        )
    return Split(
        name=name,
        params=params,
        seed=seed,
        train_idx=train.nonzero().squeeze(1),
        test_idx=test.nonzero().squeeze(1),
        mirror_leak=mirror_leak_fraction(task, train, test),
        task={"op": task.op, "p": task.p},
    )


def save_split(split: Split, path: Path) -> None:
    from grok.train.checkpoint import atomic_save

    atomic_save(
        {
            "name": split.name,
            "params": split.params,
            "seed": split.seed,
            "train_idx": split.train_idx,
            "test_idx": split.test_idx,
            "mirror_leak": split.mirror_leak,
            "task": split.task,
            "checksum": split.checksum,
        },
        path,
    )


def load_split(path: Path, task: Task | None = None) -> Split:
    """Load split.pt and verify its checksum (and, if given, that it belongs to `task`)."""
    if not path.is_file():
        raise SplitError(f"no split file at {path}; the run directory is incomplete")
    try:
        data = torch.load(path, weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise SplitError(f"cannot read {path} ({brief(exc, 'empty file')}): the file is damaged; "
                         "restore it from a copy of the run directory") from exc
    try:
        split = Split(
            name=data["name"],
            params=dict(data["params"]),
            seed=int(data["seed"]),
            train_idx=data["train_idx"],
            test_idx=data["test_idx"],
            mirror_leak=float(data["mirror_leak"]),
            task=dict(data["task"]),
        )
        checksum = data["checksum"]
    except (KeyError, IndexError, TypeError, ValueError) as exc:  # a readable file of another kind
        raise SplitError(f"{path} is not a split file ({brief(exc)}): restore it from a copy of "
                         "the run directory") from None
    if split.checksum != checksum:
        raise SplitError(f"{path} fails its checksum: the split indices were modified or damaged")
    if task is not None and split.task != {"op": task.op, "p": task.p}:
        raise SplitError(
            f"{path} belongs to {split.task['op']} mod {split.task['p']}, "
            f"but the config says {task.op} mod {task.p}"
        )
    return split
