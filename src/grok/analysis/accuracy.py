"""Train and test accuracy and loss of one checkpoint, read off the shared forward pass."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from grok.analysis.base import ForwardPass, Probe, Result


class AccuracyAnalyzer:
    """Argmax accuracy and mean cross-entropy on the split's train and test rows."""

    name = "accuracy"

    def __call__(self, model: nn.Module, probe: Probe, forward: ForwardPass) -> Result:
        out: Result = {}
        for scope, idx in (("train", probe.split.train_idx), ("test", probe.split.test_idx)):
            idx = idx.to(forward.logits.device)
            logits, labels = forward.logits[idx], probe.labels[idx]
            out[f"{scope}/acc"] = (logits.argmax(-1) == labels).double().mean().item()
            out[f"{scope}/loss"] = F.cross_entropy(logits, labels).item()
        return out
