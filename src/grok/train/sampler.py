"""Minibatches as a pure function of (seed, step), so a resumed run draws the same batches."""

from __future__ import annotations

import torch


class BatchSampler:
    """Shuffles the n training rows once per epoch and cuts each epoch into n // batch_size
    batches (the remainder is dropped, so every batch has the same size).

    The permutation of epoch e comes from a generator seeded with (seed, e), so batch(step) needs
    no state beyond the step: resuming at any step continues with exactly the batches an
    uninterrupted run would have drawn.

    Permutations are drawn on the CPU (the same on every device) and moved to `device` once per
    epoch, so drawing a batch needs no host-to-device copy.
    """

    def __init__(self, n: int, batch_size: int | None, seed: int,
                 device: torch.device | str = "cpu"):
        self.n = n
        self.full_batch = batch_size is None or batch_size >= n
        self.batch_size = n if self.full_batch else batch_size
        self.per_epoch = n // self.batch_size
        self.seed = seed
        self._epoch = -1
        self.device = torch.device(device)
        self._perm = torch.arange(n, device=self.device)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=gen).to(self.device)
            self._perm, self._epoch = perm, epoch
        return self._perm

    def batch(self, step: int) -> torch.Tensor:
        """Row indices (into the training set) of the batch for the update after `step` updates."""
        if self.full_batch:
            return self._perm
        epoch, i = divmod(step, self.per_epoch)
        return self._permutation(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
