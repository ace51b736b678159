"""Run analyzers over a run's checkpoints: each file loaded once, one shared forward pass each.

A damaged checkpoint (truncated, unreadable, failing its checksum) raises DamagedCheckpoint: the
runner refuses it before a scan starts. A checkpoint that is whole but holds no model this code
can build (a foreign file) is skipped with a warning; a CUDA out-of-memory error moves the rest of
the scan to the CPU with a warning. Both warnings are reported back so the runner can record them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from grok.analysis.base import Analyzer, Probe, Result, forward_pass, load_model
from grok.errors import brief
from grok.progress import progress_enabled
from grok.train.checkpoint import DamagedCheckpoint

log = logging.getLogger(__name__)


@dataclass
class Scan:
    steps: list[int] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)  # merged analyzer outputs per step
    warnings: list[str] = field(default_factory=list)
    device: torch.device = torch.device("cpu")  # where the scan finished
    model_config: dict | None = None  # of the first checkpoint read


def _warn(scan: Scan, message: str) -> None:
    log.warning(message)
    scan.warnings.append(message)


def load_or_reason(path: Path, device: torch.device):
    """(step, model), or the reason a whole file cannot be used (one line). A damaged file
    raises DamagedCheckpoint: leaving it out would change which steps the analysis covers."""
    try:
        return load_model(path, device)
    except (torch.cuda.OutOfMemoryError, DamagedCheckpoint):
        raise
    except Exception as exc:  # a foreign file: wrong or missing keys, another architecture
        return brief(exc)


def _analyse(model, step: int, probe: Probe, analyzers: Sequence[Analyzer], batch: int) -> Result:
    forward = forward_pass(model, probe, step, batch=batch)
    result: Result = {}
    for analyzer in analyzers:
        result.update(analyzer(model, probe, forward))
    return result


def _attempt(scan: Scan, step: int, path: Path, probe: Probe, analyzers: Sequence[Analyzer],
             batch: int):
    """(step, model, result) of one checkpoint, or None (with a warning) if it cannot be used."""
    loaded = load_or_reason(path, scan.device)
    if isinstance(loaded, str):
        _warn(scan, f"skipping unusable checkpoint {path} ({loaded})")
        return None
    found, model = loaded
    if found != step:
        _warn(scan, f"{path} holds step {found}, not {step} as its name says; using {found}")
    return found, model, _analyse(model, found, probe, analyzers, batch)


def _on_device(probe: Probe, device: torch.device) -> Probe:
    return Probe(probe.task, probe.split, probe.tokens.to(device), probe.labels.to(device))


def scan_checkpoints(checkpoints: Sequence[tuple[int, Path]], probe: Probe,
                     analyzers: Sequence[Analyzer], device: torch.device, batch: int = 2048,
                     progress: bool = True) -> Scan:
    """Apply every analyzer to every checkpoint; results in checkpoint order."""
    scan = Scan(device=torch.device(device))
    probe = _on_device(probe, scan.device)
    bar = tqdm(checkpoints, desc="analyse", unit="ckpt", dynamic_ncols=True,
               disable=not progress_enabled(progress))
    for step, path in bar:
        try:
            done = _attempt(scan, step, path, probe, analyzers, batch)
        except torch.cuda.OutOfMemoryError:
            if scan.device.type != "cuda":
                raise
            _warn(scan, f"CUDA out of memory at checkpoint step {step}; continuing the analysis "
                        "on the CPU (slower)")
            scan.device = torch.device("cpu")
            probe = _on_device(probe, scan.device)
            torch.cuda.empty_cache()
            done = _attempt(scan, step, path, probe, analyzers, batch)
        if done is not None:
            found, model, result = done
            if scan.model_config is None and hasattr(model, "config_dict"):
                scan.model_config = model.config_dict()
            scan.steps.append(found)
            scan.results.append(result)
    bar.close()
    return scan
