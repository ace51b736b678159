"""Benchmark the trajectory suite: wall time and peak memory for N checkpoints of a real run.

    python benchmarks/trajectory.py                       # N = 200 checkpoints of power_2l, p = 97
    python benchmarks/trajectory.py --checkpoints 400 --run-dir /tmp/traj400

A child process trains a short run whose checkpoints are exactly N evenly spaced steps (reused if
--run-dir already holds them); a second, fresh child process runs the suite on them, so its peak
resident memory (ru_maxrss from os.wait4) is the suite's alone. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def train(run_dir: Path, p: int, n: int, model: str) -> None:
    from grok.config import Config, check
    from grok.main import run

    cfg = Config()
    cfg.task.p = p
    cfg.model.name = cfg.model.arch = model
    if model == "bilinear":
        cfg.model.n_layers, cfg.model.n_heads, cfg.model.d_mlp = 1, 1, 256
    # linear spacing over 2N steps gives exactly N distinct checkpoint steps
    cfg.steps, cfg.train.checkpoints, cfg.train.checkpoint_spacing = 2 * (n - 1), n, "linear"
    cfg.train.eval_every = cfg.steps
    cfg.train.resume_every = cfg.steps
    cfg.logger.backend, cfg.device = "none", "cpu"
    run(check(cfg), run_dir)


def analyse(run_dir: Path, p: int, n: int, block_size: int | None, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)

    from grok.analysis.trajectory import run_trajectory_suite
    from grok.data.splits import load_split
    from grok.data.tasks import build_task
    from grok.tracking import InMemoryLogger
    from grok.train.checkpoint import list_checkpoints

    task = build_task("add", p)
    split = load_split(run_dir / "split.pt", task)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    checkpoints = list_checkpoints(run_dir)[:n]
    clock = time.perf_counter()
    summary = run_trajectory_suite(run_dir, task, split, checkpoints, metrics,
                                   device=torch.device("cpu"), t_grok=None,
                                   logger=InMemoryLogger(), block_size=block_size)
    return {"n_checkpoints": len(checkpoints), "wall_s": time.perf_counter() - clock,
            "timing_s": summary["timing_s"], "block_size": summary["block_size"],
            "checkpoints_loaded_from_store": summary["checkpoints_loaded_from_store"],
            "torch_threads": torch.get_num_threads()}


def child(args: argparse.Namespace, mode: str) -> tuple[str, int, float]:
    """Run this script in `mode` as a fresh process; (stdout, peak RSS in MB, CPU seconds)."""
    cmd = [sys.executable, __file__, f"--{mode}", "--run-dir", str(args.run_dir), "--p",
           str(args.p), "--checkpoints", str(args.checkpoints), "--model", args.model]
    if args.block_size:
        cmd += ["--block-size", str(args.block_size)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{mode} child failed with exit code {proc.returncode}")
    return out, usage.ru_maxrss // 1024, usage.ru_utime + usage.ru_stime  # maxrss: kilobytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("outputs/bench/trajectory"))
    parser.add_argument("--p", type=int, default=97)
    parser.add_argument("--checkpoints", type=int, default=200)
    parser.add_argument("--model", default="power_2l", choices=["power_2l", "bilinear"])
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the suite (default: torch's choice); with 1, "
                             "cpu_s measures the work even on a busy machine")
    parser.add_argument("--train", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--analyse", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train:
        train(args.run_dir, args.p, args.checkpoints, "transformer" if args.model == "power_2l"
              else "bilinear")
        return
    if args.analyse:
        print(json.dumps(analyse(args.run_dir, args.p, args.checkpoints, args.block_size,
                                 args.threads)))
        return

    from grok.train.checkpoint import list_checkpoints

    if len(list_checkpoints(args.run_dir)) < args.checkpoints:
        print(f"training {args.checkpoints} checkpoints of {args.model} at p = {args.p} into "
              f"{args.run_dir} ...", file=sys.stderr)
        child(args, "train")
    load_before = os.getloadavg()[0]
    out, peak_mb, cpu_s = child(args, "analyse")
    result = json.loads(out.strip().splitlines()[-1])
    forward_per = result["timing_s"]["forward"] / result["n_checkpoints"]
    n, block = result["n_checkpoints"], result["block_size"]
    k = -(-n // block)
    result.update(
        peak_rss_mb=peak_mb, cpu_s=cpu_s, model=args.model, p=args.p,
        load_average=[load_before, os.getloadavg()[0]],
        forward_s_per_checkpoint=forward_per,
        store_read_s_per_checkpoint=(result["timing_s"]["block_loads"]
                                     / max(1, result["checkpoints_loaded_from_store"])),
        # the alternative to the feature store: recompute every later block's forward passes
        # for each block, N (K - 1) / 2 extra passes
        recompute_alternative_extra_s=forward_per * sum(n - min(n, (i + 1) * block)
                                                        for i in range(k)),
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
