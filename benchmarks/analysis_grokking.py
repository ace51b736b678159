"""Benchmark: the grokking suite on 200 checkpoints of power_2l at p = 97 on 2 CPU threads.

    python benchmarks/analysis_grokking.py [--checkpoints 200] [--p 97] [--threads 2]
    python benchmarks/analysis_grokking.py --default-run [overrides...]

Builds a synthetic run directory (split.pt, metrics.jsonl with a sharp accuracy rise, N weights-only
checkpoints of independently initialised power_2l models; the weights do not change the cost),
then times grok.analysis.runner.run_analysis(..., "grokking") end to end: loading, the shared
forward pass over all p^2 inputs, rank (float64 SVD), entropy, the report, the plots. It also
times the forward passes alone, to show how much of the cost is the model itself.

--default-run trains the default experiment with analysis=grokking (logger=csv, in a temporary
directory; extra arguments are passed on as overrides) and prints the training time, the analysis
time and their ratio: the figure that decides whether grokking should be the default suite
(it should when the ratio is under 10%).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from grok.analysis.base import Probe, forward_pass
from grok.analysis.runner import AnalysisSettings, run_analysis
from grok.data.splits import make_split, save_split
from grok.data.tasks import build_task
from grok.model import build_model
from grok.tracking import NullLogger
from grok.train.checkpoint import save_weights


def build_run(run_dir: Path, n_checkpoints: int, p: int) -> list[int]:
    task = build_task("add", p)
    split = make_split(task, "random", 0.5, seed=0)
    save_split(split, run_dir / "split.pt")
    config = {"arch": "transformer", "d_vocab": task.vocab_size, "n_classes": task.n_classes,
              "n_ctx": 3, "n_layers": 2, "d_model": 128, "n_heads": 4, "d_mlp": 512,
              "act": "relu", "layer_norm": True}
    steps = [round(i * 400_000 / (n_checkpoints - 1)) for i in range(n_checkpoints)]
    for i, step in enumerate(steps):
        torch.manual_seed(i)
        save_weights(run_dir, step, build_model(config), config, split.task)
    with open(run_dir / "metrics.jsonl", "w") as f:
        # evaluations between the checkpoints: their accuracy is made up, the checkpoints' is not
        for step in sorted(set(range(0, 400_001, 500)) - set(steps)):
            acc = 0.02 if step < 150_000 else 1.0
            f.write(json.dumps({"step": step, "train/loss": 0.0, "train/acc": 1.0,
                                "test/loss": 0.0, "test/acc": acc}) + "\n")
    return steps


def default_run(overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "grok.main", "analysis=grokking", "logger=csv",
               f"hydra.run.dir={tmp}/run", *overrides]
        subprocess.run(cmd, check=True)
        summary = json.loads((Path(tmp) / "run" / "logs" / "summary.json").read_text())
        n = len(list((Path(tmp) / "run" / "checkpoints").glob("step_*.pt")))
    train, analysis = summary["time/wall_s"], summary["time/analysis_s"]
    print(f"default run{' ' + ' '.join(overrides) if overrides else ''}: training {train:.1f} s, "
          f"analysis=grokking on its {n} checkpoints {analysis:.1f} s "
          f"= {analysis / train:.1%} of the training time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=200)
    parser.add_argument("--p", type=int, default=97)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--default-run", action="store_true")
    args, overrides = parser.parse_known_args()
    if args.default_run:
        default_run(overrides)
        return
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        steps = build_run(run_dir, args.checkpoints, args.p)
        clock = time.perf_counter()
        report = run_analysis(run_dir, "grokking", AnalysisSettings(), torch.device("cpu"),
                              NullLogger(), progress=False)["grokking"]
        total = time.perf_counter() - clock

        task = build_task("add", args.p)
        probe = Probe.full(task, make_split(task, "random", 0.5, seed=0))
        model = build_model(report["model"])
        clock = time.perf_counter()
        for _ in range(10):
            forward_pass(model, probe, 0)
        forward = (time.perf_counter() - clock) / 10
    assert report["checkpoint_steps"] == steps and report["t_grok"] == 150_000
    print(f"grokking suite: {len(steps)} checkpoints of power_2l, p={args.p} "
          f"({args.p ** 2} inputs), {args.threads} CPU threads")
    print(f"  total {total:.1f} s = {total / len(steps) * 1000:.0f} ms per checkpoint")
    print(f"  of which the forward pass alone: {forward * 1000:.0f} ms per checkpoint "
          f"({forward * len(steps) / total:.0%} of the total)")


if __name__ == "__main__":
    main()
