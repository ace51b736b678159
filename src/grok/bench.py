"""`python -m grok.bench`: how fast this machine trains, evaluates and analyses.

Prints a table and one JSON object (also written to --json PATH): the fp32 (and bf16) matmul peak,
training steps/s, matmul FLOPs per step and achieved GFLOP/s for power_2l (p = 97, batch 512) and
nanda_1l (p = 113, 30% split, full batch) next to a plain public-code-style step, the evaluation
pass, the default experiment's wall time to 99% test accuracy, the projected time of
`split=structured steps=400000` (the speed issue's long run, as typed), seed-steps/s of seed batches
and the throughput of each analysis suite.

Every comparison inside one section (baseline vs fast step, fp32 vs bf16, K seeds) is measured in
interleaved rounds and reported as the median, so the ratios stay meaningful on a shared machine
even when the absolute figures drift. `--quick` runs every section at toy sizes in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from grok.analysis.base import Probe, forward_pass, load_model
from grok.analysis.runner import SUITES, run_analysis, settings_from_config
from grok.assemble import model_config
from grok.config import AnalysisConfig, Config, check_device, compose
from grok.data.splits import load_split, make_split, save_split
from grok.data.tasks import build_task
from grok.device import resolve_device
from grok.errors import GrokError
from grok.files import file_in_the_way
from grok.model import build_model
from grok.naming import identity
from grok.tracking import NullLogger
from grok.train import checkpoint as ckpt
from grok.train.multiseed import SeedBatch
from grok.train.trainer import Trainer, build_settings, read_metrics


@dataclass(frozen=True)
class Scale:
    """What one mode measures: sizes, repetitions and the configurations (as CLI overrides)."""

    peak_n: int
    rounds: int
    reps: int  # steps (or evaluations) per round
    power: tuple[str, ...]
    nanda: tuple[str, ...]
    default: tuple[str, ...]  # overrides of the default experiment (none in the full mode)
    long: tuple[str, ...]
    seeds: tuple[int, ...]
    checkpoints: int  # analysis checkpoints


FULL = Scale(
    peak_n=2048, rounds=5, reps=20,
    power=("model=power_2l", "task.p=97", "split.train_frac=0.5", "train.batch_size=512"),
    nanda=("model=nanda_1l", "task.p=113", "split.train_frac=0.3", "train=full_batch"),
    default=(),
    long=("split=structured", "steps=400000"),  # the speed issue's command, as typed
    seeds=(1, 4, 16), checkpoints=20)
_TOY = ("task.p=23", "model.d_model=32", "model.d_mlp=64")
QUICK = Scale(
    peak_n=256, rounds=2, reps=3,
    power=("model=power_2l", *_TOY, "train.batch_size=64"),
    nanda=("model=nanda_1l", *_TOY, "split.train_frac=0.3", "train=full_batch"),
    default=(*_TOY, "steps=200", "train.checkpoints=10"),
    long=("split=structured", "steps=400000", "train.compile=false", *_TOY),
    seeds=(1, 2), checkpoints=3)

# The clock of every measurement but the default run's: wall time, or with --clock cpu this
# process's CPU time, which other processes on a shared machine perturb far less (one thread only:
# with more, CPU time adds up the threads and their spin-waiting).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter
_device = torch.device("cpu")


def sync() -> None:
    """Wait for queued GPU work, so that a timed block holds all of its own work."""
    if _device.type == "cuda":
        torch.cuda.synchronize(_device)

# Analysis suites measured in checkpoints per second: name -> fn(run_dir, device) that analyses
# every checkpoint in run_dir and returns how many it analysed. Add a suite by adding an entry.
AnalysisSuite = Callable[[Path, torch.device], int]


def forward_suite(run_dir: Path, device: torch.device) -> int:
    """The shared forward pass every analysis starts from, as the scan runs it: the probe set
    built once from split.pt, then each checkpoint loaded (checksum verified) and run on it."""
    split = load_split(run_dir / "split.pt")
    probe = Probe.full(build_task(split.task["op"], split.task["p"]), split, device)
    checkpoints = ckpt.list_checkpoints(run_dir)
    for step, path in checkpoints:
        _, model = load_model(path, device)
        forward_pass(model, probe, step)
    return len(checkpoints)


def configured_suite(name: str) -> AnalysisSuite:
    """`analysis=<name>` as a run ends with it: every step of the suite, files and plots
    included, with the suite's default settings."""
    def analyse(run_dir: Path, device: torch.device) -> int:
        run_analysis(run_dir, name, settings_from_config(AnalysisConfig(name=name)), device,
                     NullLogger(), progress=False)
        return len(ckpt.list_checkpoints(run_dir))
    return analyse


ANALYSIS_SUITES: dict[str, AnalysisSuite] = {
    "forward": forward_suite,
    **{name: configured_suite(name) for name, steps in SUITES.items() if steps},
}


# ----------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, reps: int,
                n_threads: dict[str, int] | None = None) -> dict[str, float]:
    """Median seconds per call of each fn, over `rounds` rounds that take turns (reps calls of
    each fn per round), after one warm-up call each."""
    n_threads = n_threads or {}
    for name, fn in fns.items():
        with threads(n_threads.get(name)):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            with threads(n_threads.get(name)):
                sync()
                start = clock()
                for _ in range(reps):
                    fn()
                sync()
                times[name].append((clock() - start) / reps)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_peak(n: int, dtype: torch.dtype, reps: int = 10) -> float:
    """GFLOP/s of an n x n x n matmul, best of a few timed batches."""
    a = torch.randn(n, n, device=_device).to(dtype)
    b = torch.randn(n, n, device=_device).to(dtype)
    a @ b
    best = math.inf
    for _ in range(3):
        sync()
        start = clock()
        for _ in range(reps):
            a @ b
        sync()
        best = min(best, (clock() - start) / reps)
    return 2 * n**3 / best / 1e9


def matmul_flops(fn: Callable[[], Any]) -> int:
    """Matmul FLOPs of one call, counted by torch's FlopCounterMode (elementwise work is not
    counted; in these models it is well under 1% of the matmuls)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def build_trainer(cfg: Config, run_dir: Path, device: torch.device) -> Trainer:
    task = build_task(cfg.task.op, cfg.task.p)
    split = make_split(task, cfg.split.name, cfg.split.train_frac, cfg.split_seed,
                       cfg.split.pattern)
    torch.manual_seed(cfg.seed)
    model = build_model(model_config(cfg, task)).to(device)
    settings = build_settings(cfg, identity(cfg), device)
    return Trainer(model, task, split, settings, NullLogger(), run_dir, device)


class PlainStep:
    """A public-code-style training step, for a speed ratio measured in the same run: every layer
    at every position with per-head einsums, batched-matmul attention, the unembedding at every
    position, torch's default AdamW (a Python loop over parameters on the CPU) and the loss read
    back with .item() every step. Same parameters and batches as `trainer`, own copies."""

    def __init__(self, trainer: Trainer):
        self.t, self.model = trainer, copy.deepcopy(trainer.model)
        s = trainer.s
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=s.lr, betas=s.betas,
                                           weight_decay=s.weight_decay, foreach=False)
        self.step = 0

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        m, n = self.model, tokens.shape[1]
        x = m.W_E[tokens] + m.W_pos[:n]
        future = torch.ones(n, n, dtype=torch.bool, device=tokens.device).triu(1)
        for block in m.blocks:
            a, h = block.attn, block.ln1(x)
            q, k, v = (torch.einsum("btd,hde->bhte", h, w) for w in (a.W_Q, a.W_K, a.W_V))
            scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(
                future, float("-inf"))
            x = x + torch.einsum("bhte,hed->btd", scores.softmax(-1) @ v, a.W_O)
            x = x + block.mlp(block.ln2(x))
        return (m.ln_final(x) @ m.W_U)[:, -1]

    def __call__(self) -> float:
        idx = self.t.sampler.batch(self.step)
        loss = F.cross_entropy(self.logits(self.t.train_x[idx]), self.t.train_y[idx])
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss.item()


# ---------------------------------------------------------------------------------- sections
def bench_peak(scale: Scale) -> dict:
    return {"fp32_gflops": matmul_peak(scale.peak_n, torch.float32),
            "bf16_gflops": matmul_peak(scale.peak_n, torch.bfloat16)}


def bench_step(name: str, overrides: tuple[str, ...], scale: Scale, device: torch.device,
               tmp: Path, compiled: bool) -> dict:
    """Steps/s of the fast step, its variants and the plain step, and the fraction of the fp32
    matmul peak the fast step reaches, with the peak's matmul timed in the same interleaved rounds
    (a peak measured minutes apart can catch this shared machine in another mood)."""
    cfg = compose(*overrides, "logger=none", f"device={device.type}")
    fast = build_trainer(cfg, tmp / f"{name}_fast", device)
    bf16 = build_trainer(compose(*overrides, "logger=none", "train.precision=bf16"),
                         tmp / f"{name}_bf16",
                         device)
    plain = PlainStep(build_trainer(cfg, tmp / f"{name}_plain", device))
    foreach = build_trainer(compose(*overrides, "logger=none", "train.fused_optimizer=false"),
                            tmp / f"{name}_foreach", device)
    n = scale.peak_n
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    fns: dict[str, Callable[[], Any]] = {"fast": fast._train_step, "bf16": bf16._train_step,
                                         "foreach_adamw": foreach._train_step, "plain": plain,
                                         "peak": lambda: a @ b}
    n_threads = {}
    if device.type == "cpu" and torch.get_num_threads() > 1:
        fns["one_thread"] = build_trainer(cfg, tmp / f"{name}_1t", device)._train_step
        n_threads["one_thread"] = 1
    out: dict[str, Any] = {}
    if compiled:
        comp = build_trainer(compose(*overrides, "logger=none", "train.compile=true"),
                             tmp / f"{name}_c", device)
        start = time.perf_counter()  # wall: the compiler works in subprocesses
        comp._train_step()
        out["compile_s"] = time.perf_counter() - start
        fns["compiled"] = comp._train_step
    sec = interleaved(fns, scale.rounds, scale.reps, n_threads)
    peak = 2 * n**3 / sec.pop("peak") / 1e9
    flops = matmul_flops(fast._train_step)
    plain_flops = matmul_flops(plain)
    if compiled:
        out["compiled_fraction_of_peak"] = flops / sec["compiled"] / 1e9 / peak
    out.update({
        "batch": len(fast.train_x) if fast.sampler.full_batch else fast.s.batch_size,
        "peak_gflops": peak,
        "steps_per_s": 1 / sec["fast"],
        "gflop_per_step": flops / 1e9,
        "gflops": flops / sec["fast"] / 1e9,
        "fraction_of_peak": flops / sec["fast"] / 1e9 / peak,
        "plain_steps_per_s": 1 / sec["plain"],
        "plain_gflop_per_step": plain_flops / 1e9,
        "speedup_vs_plain": sec["plain"] / sec["fast"],
        "bf16_steps_per_s": 1 / sec["bf16"],
    })
    out.update({f"{k}_steps_per_s": 1 / v for k, v in sec.items()
                if k not in ("fast", "plain", "bf16")})
    return out


def bench_eval(scale: Scale, device: torch.device, tmp: Path, step_s: float) -> dict:
    """The evaluation pass of power_2l, and what it costs at the default cadence."""
    trainer = build_trainer(compose(*scale.power, "logger=none"), tmp / "eval", device)
    sec = interleaved({"eval": trainer.evaluate}, scale.rounds, max(1, scale.reps // 4))["eval"]
    default = build_trainer(compose(*scale.default, "logger=none"), tmp / "eval_default", device)
    n_evals, steps = len(default.eval_at), default.s.steps
    return {"rows": len(trainer.eval_x), "eval_s": sec, "eval_in_steps": sec / step_s,
            "default_evals": n_evals, "default_steps": steps,
            "default_eval_overhead": n_evals * sec / (steps * step_s)}


def bench_default(scale: Scale, tmp: Path) -> dict:
    """`python -m grok.main` (logger=none) as a user runs it, in a subprocess with as many threads
    as this process; timed by the wall clock (its own training clock and the process)."""
    run_dir = tmp / "default_run"
    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "grok.main", *scale.default, "logger=none",
                             f"hydra.run.dir={run_dir}"], env=env, capture_output=True,
                            text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"the default run failed:\n{result.stderr}")
    rows = read_metrics(run_dir / "metrics.jsonl")
    hit = next((r for r in rows if r["test/acc"] >= 0.99), None)
    return {"overrides": list(scale.default), "steps": rows[-1]["step"],
            "step_to_0.99": hit and hit["step"], "time_to_0.99_s": hit and hit["time/elapsed_s"],
            "train_wall_s": rows[-1]["time/elapsed_s"], "process_wall_s": wall,
            "evaluations": len(rows), "run_dir": str(run_dir)}


def bench_long(scale: Scale, device: torch.device, tmp: Path) -> dict:
    """Projected wall time of the long structured run from its measured step and eval times."""
    trainer = build_trainer(compose(*scale.long, "logger=none"), tmp / "long", device)
    start = time.perf_counter()  # the first calls compile (train.compile=auto at 400k steps)
    trainer._train_step()
    trainer.evaluate()
    warmup = time.perf_counter() - start
    sec = interleaved({"step": trainer._train_step, "eval": trainer.evaluate}, scale.rounds,
                      scale.reps)
    steps, n_evals = trainer.s.steps, len(trainer.eval_at)
    total = warmup + steps * sec["step"] + n_evals * sec["eval"]
    return {"overrides": list(scale.long), "compile": trainer.s.compile, "steps": steps,
            "steps_per_s": 1 / sec["step"], "first_step_and_eval_s": warmup,
            "evaluations": n_evals, "eval_s": sec["eval"], "projected_h": total / 3600,
            "steps_per_s_with_eval": steps / total}


def bench_seeds(scale: Scale, device: torch.device, tmp: Path) -> dict:
    """Seed-steps/s of power_2l trained as seed batches of K seeds, and of one plain Trainer."""
    fns: dict[str, Callable[[], Any]] = {}
    single = build_trainer(compose(*scale.power, "logger=none"), tmp / "single", device)
    fns["single"] = single._train_step
    for k in scale.seeds:
        batch = SeedBatch([build_trainer(compose(*scale.power, "logger=none", f"seed={s}"),
                                         tmp / f"k{k}_{s}", device) for s in range(k)])
        fns[f"K={k}"] = batch._train_step
    sec = interleaved(fns, scale.rounds, max(1, scale.reps // 2))
    out = {"single_trainer_steps_per_s": 1 / sec.pop("single")}
    out.update({name: {"seed_steps_per_s": int(name[2:]) / s, "batch_steps_per_s": 1 / s}
                for name, s in sec.items()})
    return out


def bench_analysis(scale: Scale, device: torch.device, tmp: Path) -> dict:
    """Checkpoints per second of the shared forward pass and of each analysis suite, on the run
    directory of the default experiment trained with scale.checkpoints checkpoints (so that
    t_grok and the checkpoint selection are those of a run that groks)."""
    trainer = build_trainer(compose(*scale.default, "logger=none", "train.progress=false",
                                    f"train.checkpoints={scale.checkpoints}"),
                            tmp / "analysis_run", device)
    run_dir = trainer.run_dir
    save_split(trainer.split, run_dir / "split.pt")
    trainer.fit()
    out = {}
    # The suites' warnings are about the run, not the measurement: at --quick sizes it does not
    # grok, and each suite said "t_grok not detected" among the benchmark's figures.
    with _quiet("grok.analysis"):
        for name, suite in ANALYSIS_SUITES.items():
            start = clock()
            n = suite(run_dir, device)
            sync()
            out[name] = {"checkpoints": n, "checkpoints_per_s": n / (clock() - start)}
    return out


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Drop the warnings of logger `name` (and its children) inside the block."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ------------------------------------------------------------------------------------ output
def _f(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def table(r: dict) -> str:
    n = r["machine"]["threads"]
    lines = [("machine", f"{r['machine']['cpu']} ({r['machine']['cores']} cores, "
                         f"{n} thread{'' if n == 1 else 's'}), torch {r['machine']['torch']}, "
                         f"{r['clock']} clock, load {r['machine']['load_avg'][0]:.1f}")]
    if "peak" in r:
        lines.append(("matmul peak", f"fp32 {_f(r['peak']['fp32_gflops'], '.0f')} GFLOP/s, "
                                     f"bf16 {_f(r['peak']['bf16_gflops'], '.0f')} GFLOP/s"))
    for name, s in r.get("step", {}).items():
        extra = "".join(f", {k[:-12]} {_f(v)}" for k, v in s.items()
                        if k.endswith("_steps_per_s")
                        and k not in ("plain_steps_per_s", "compiled_steps_per_s"))
        lines.append((f"{name} step (batch {s['batch']})",
                      f"{_f(s['steps_per_s'])} steps/s, {_f(s['gflop_per_step'], '.2f')} "
                      f"GFLOP/step, {_f(s['gflops'], '.0f')} GFLOP/s = "
                      f"{_f(100 * s['fraction_of_peak'], '.0f')}% of peak "
                      f"({_f(s['peak_gflops'], '.0f')} GFLOP/s in the same rounds); plain "
                      f"{_f(s['plain_steps_per_s'])} steps/s "
                      f"({_f(s['plain_gflop_per_step'], '.2f')} GFLOP) -> "
                      f"x{_f(s['speedup_vs_plain'], '.2f')}{extra}"))
        if "compile_s" in s:
            lines.append((f"{name} compiled", f"{_f(s['compiled_steps_per_s'])} steps/s = "
                          f"{_f(100 * s['compiled_fraction_of_peak'], '.0f')}% of peak; "
                          f"compiling {_f(s['compile_s'])} s"))
    if "eval" in r:
        e = r["eval"]
        lines.append(("evaluation pass", f"{_f(1000 * e['eval_s'], '.0f')} ms on {e['rows']} rows"
                      f" = {_f(e['eval_in_steps'])} steps; default cadence {e['default_evals']} "
                      f"evals in {e['default_steps']} steps = "
                      f"{_f(100 * e['default_eval_overhead'])}% of training"))
    if "default" in r:
        d = r["default"]
        reached = (f"at step {d['step_to_0.99']} after {_f(d['time_to_0.99_s'])} s"
                   if d["step_to_0.99"] is not None else "never")
        lines.append(("default run", f"test acc >= 0.99 {reached}; {d['steps']} steps in "
                      f"{_f(d['train_wall_s'])} s; process wall {_f(d['process_wall_s'])} s"))
    if "long" in r:
        lg = r["long"]
        lines.append(("long run", f"{' '.join(lg['overrides'])}"
                      f"{' (compiled)' if lg['compile'] else ''}: {_f(lg['steps_per_s'])} steps/s,"
                      f" {lg['evaluations']} evals -> {_f(lg['projected_h'], '.2f')} h"))
    if "seeds" in r:
        s = r["seeds"]
        lines.append(("seed batches", ", ".join(f"{k} {_f(v['seed_steps_per_s'])}"
                                                 for k, v in s.items() if k.startswith("K="))
                      + f" seed-steps/s (one Trainer {_f(s['single_trainer_steps_per_s'])})"))
    for name, a in r.get("analysis", {}).items():
        lines.append((f"analysis: {name}", f"{_f(a['checkpoints_per_s'])} checkpoints/s"))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "load_avg": list(os.getloadavg())}


SECTIONS = ("peak", "step", "eval", "default", "long", "seeds", "analysis")


def run_bench(quick: bool = False, sections: tuple[str, ...] = SECTIONS, device: str = "cpu",
              compiled: bool = False, clock_name: str = "wall",
              log: Callable[[str], None] = print) -> dict:
    global clock, _device
    clock = CLOCKS[clock_name]
    scale = QUICK if quick else FULL
    dev = _device = resolve_device(device)
    result: dict[str, Any] = {"mode": "quick" if quick else "full", "clock": clock_name,
                              "machine": machine()}
    try:
        _measure(result, scale, sections, dev, compiled, log)
    except KeyboardInterrupt:
        # the sections measured so far are still worth having: the later ones take minutes
        result["stopped_by"] = "SIGINT"
    result["machine"]["load_avg_end"] = list(os.getloadavg())
    return result


def _measure(result: dict[str, Any], scale: Scale, sections: tuple[str, ...], dev: torch.device,
             compiled: bool, log: Callable[[str], None]) -> None:
    """Fill `result` section by section (a section's figures appear when it is done)."""
    with tempfile.TemporaryDirectory(prefix="grok-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if "peak" in sections:
            result["peak"] = bench_peak(scale)
        if "step" in sections or "eval" in sections:
            log("bench: training steps")
            result["step"] = {name: bench_step(name, over, scale, dev, tmp, compiled)
                              for name, over in (("power_2l", scale.power),
                                                 ("nanda_1l", scale.nanda))}
        if "eval" in sections:
            log("bench: evaluation")
            step_s = 1 / result["step"]["power_2l"]["steps_per_s"]
            result["eval"] = bench_eval(scale, dev, tmp, step_s)
        if "default" in sections:
            log("bench: default experiment")
            result["default"] = bench_default(scale, tmp)
        if "long" in sections:
            log("bench: long run projection")
            result["long"] = bench_long(scale, dev, tmp)
        if "seeds" in sections:
            log("bench: seed batches")
            result["seeds"] = bench_seeds(scale, dev, tmp)
        if "analysis" in sections:
            log("bench: analysis suites")
            result["analysis"] = bench_analysis(scale, dev, tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grok.bench", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes: a smoke test in seconds")
    parser.add_argument("--json", type=Path, help="also write the JSON result to this file")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    parser.add_argument("--compile", action="store_true",
                        help="also measure train.compile=true (compiling takes a minute or more)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall (default) or cpu: this process's CPU time, for a busy shared "
                             "machine; needs --threads 1")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        parser.error("--clock cpu measures one thread's CPU time; add --threads 1")
    sections = tuple(s for s in args.sections.split(",") if s)
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if not sections:
        parser.error(f"--sections names no section; choose from {', '.join(SECTIONS)}")
    # checked before measuring, which takes minutes: the device a typo or a CUDA-less machine
    # cannot give, a --json folder that cannot be made
    try:
        check_device(args.device)
        resolve_device(args.device)
    except GrokError as exc:
        parser.error(str(exc))
    if args.json and (args.json.is_dir() or file_in_the_way(args.json.parent)):
        parser.error(f"--json {args.json}: cannot write a file there (a folder on its path is a "
                     "file, or it is a folder itself)")
    result = run_bench(args.quick, sections, args.device, args.compile, args.clock,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
    print(table(result))
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if "stopped_by" in result:
        print("stopped by Ctrl-C: the figures above are those of the sections measured before it",
              file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
