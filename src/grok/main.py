"""`python -m grok.main`: train, checkpoint, analyse and log one run (or one job of a sweep).

run(cfg, run_dir) is the composition root: it reads top to bottom and wires task, split, model,
logger, trainer and analyses. main() is the Hydra glue around it.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from grok import naming, plots
from grok.config import Config, config_dict, register_configs, to_config
from grok.data.splits import Split, SplitError, load_split, make_split, save_split
from grok.data.tasks import Task, build_task
from grok.device import resolve_device
from grok.errors import GrokError
from grok.model import build_model
from grok.tracking import Logger, build_logger
from grok.train import checkpoint as ckpt
from grok.train.preemption import GracefulStop
from grok.train.summary import summarize, summary_line
from grok.train.trainer import (
    ResumeMismatch,
    Trainer,
    TrainingStopped,
    build_settings,
    check_identity,
)

register_configs()


def run(cfg: Config, run_dir: Path, logger: Logger | None = None,
        stop: GracefulStop | None = None) -> dict:
    """Train (or resume) one run in run_dir and return its summary. With `stop` (an entered
    GracefulStop), a stop signal saves the resume state and raises TrainingStopped."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    task = build_task(cfg.task.op, cfg.task.p)
    settings = build_settings(cfg, naming.identity(cfg))
    resume = ckpt.load_resume_state(run_dir, map_location=device)
    if resume is not None:  # before anything is written or logged for a mismatching command
        check_identity(resume.get("identity", {}), settings.identity, run_dir)
        warn_if_threads_differ(resume.get("torch_threads"))
    torch.manual_seed(cfg.seed)  # the model's initial weights are the only global-RNG draw
    model = build_model(model_config(cfg, task)).to(device)
    report_disk(run_dir, model, task, settings.checkpoint_steps)
    split = prepare_split(cfg, task, run_dir)
    logger = logger or open_logger(cfg, run_dir, split, resume or {})
    exit_code = 1
    try:
        trainer = Trainer(model, task, split, settings, logger, run_dir, device)
        trainer.extra_state["wandb_run_id"] = logger.run_id
        trainer.extra_state["torch_threads"] = torch.get_num_threads()
        if hasattr(logger, "history_step"):  # W&B: where a resumed fragment's rows continue
            trainer.extra_state["wandb_step"] = lambda: logger.history_step
        if stop is not None:
            trainer.should_stop = stop
        rows = trainer.fit(resume)
        curves = plots.training_curves(rows, run_dir / "plots" / "curves.png",
                                       title=naming.run_name(cfg))
        logger.log_figure("plots/curves", curves)
        summary = summarize(rows)
        logger.summary(summary)
        print(summary_line(summary, run_dir), flush=True)
        exit_code = 0
        return summary
    except TrainingStopped:
        exit_code = 128 + (stop.signum or 0) if stop is not None else 1
        raise
    finally:
        logger.close(exit_code)


def warn_if_threads_differ(saved: int | None) -> None:
    """CPU float sums depend on the thread count: say so when a resume changes it."""
    if saved is not None and saved != torch.get_num_threads():
        logging.getLogger(__name__).warning(
            "this run was saved with %d torch threads and resumes with %d: the continuation is "
            "valid but not bit-identical to an uninterrupted run (set OMP_NUM_THREADS=%d to keep "
            "it exact)", saved, torch.get_num_threads(), saved)


def report_disk(run_dir: Path, model: torch.nn.Module, task: Task, steps: list[int]) -> None:
    """Print what the run's checkpoints will take; refuse to start if the disk cannot hold it."""
    estimate = ckpt.estimate_disk(run_dir, model, model.config_dict(),
                                  {"op": task.op, "p": task.p}, steps)
    print(estimate.line(), flush=True)
    if estimate.remaining_bytes > estimate.free_bytes:
        raise ckpt.InsufficientDisk(
            f"the checkpoints of this run need {estimate.remaining_bytes / 1e6:.1f} MB more but "
            f"only {estimate.free_bytes / 1e6:.1f} MB are free where {run_dir} is; free some "
            "space or lower train.checkpoints")


def prepare_split(cfg: Config, task: Task, run_dir: Path) -> Split:
    """The run's split: made and saved on a fresh run, loaded (checksum-verified) on resume."""
    path = run_dir / "split.pt"
    if path.exists():
        split = load_split(path, task)
        wanted = (cfg.split.name, cfg.split_seed)
        if (split.name, split.seed) != wanted or split.params["train_frac"] != cfg.split.train_frac:
            raise SplitError(f"{path} holds a {split.name} split (seed {split.seed}, "
                             f"{split.params}) that does not match this config; "
                             "use another run directory")
        return split
    split = make_split(task, cfg.split.name, cfg.split.train_frac, cfg.split_seed,
                       cfg.split.pattern)
    save_split(split, path)
    return split


def model_config(cfg: Config, task: Task) -> dict:
    """The model's plain config: the chosen architecture with sizes derived from the task."""
    m = cfg.model
    return {"arch": m.arch, "d_vocab": task.vocab_size, "n_classes": task.n_classes, "n_ctx": 3,
            "n_layers": m.n_layers, "d_model": m.d_model, "n_heads": m.n_heads,
            "d_mlp": m.d_mlp, "act": m.act, "layer_norm": m.layer_norm}


def open_logger(cfg: Config, run_dir: Path, split: Split, resume: dict) -> Logger:
    """The configured logger; on resume it reopens the saved W&B run where it left off."""
    lc = cfg.logger
    config = {**config_dict(cfg), "derived": {"mirror_leak": split.mirror_leak,
                                              "n_train": len(split.train_idx),
                                              "n_test": len(split.test_idx),
                                              "torch_threads": torch.get_num_threads()}}
    return build_logger(lc.backend, run_dir, project=lc.project, entity=lc.entity, mode=lc.mode,
                        config=config, group=naming.group(cfg), name=naming.run_name(cfg),
                        tags=[cfg.task.op, cfg.split.name, cfg.model.name, *lc.tags],
                        run_id=resume.get("wandb_run_id"), start_step=resume.get("wandb_step"))


def _hydra_record(run_dir: Path, keep: bool) -> None:
    """Hydra rewrites .hydra/ before a job starts, even when the job then refuses to resume a run
    with another config. keep=True saves the record of a run that started; keep=False puts it
    back, so a refused command leaves the run directory as it was."""
    record, accepted = run_dir / ".hydra", run_dir / ".hydra" / "accepted"
    src, dst = (record, accepted) if keep else (accepted, record)
    if src.is_dir():
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.yaml"):
            shutil.copy2(f, dst / f.name)


def _remove_if_unused(run_dir: Path) -> None:
    """Delete a run directory that holds nothing but what Hydra wrote before the job began."""
    if run_dir.is_dir() and all(p.name in (".hydra", ckpt.LOCK_FILE) or p.suffix == ".log"
                                for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)


@hydra.main(version_base="1.3", config_path="pkg://grok.conf", config_name="config")
def main(dcfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    stop = GracefulStop()
    try:
        cfg = to_config(dcfg)
        with stop, ckpt.lock_run_dir(run_dir):
            if not ckpt.has_resume_state(run_dir):
                _hydra_record(run_dir, keep=True)
            run(cfg, run_dir, stop=stop)
        _hydra_record(run_dir, keep=True)
    except TrainingStopped as exc:
        _hydra_record(run_dir, keep=True)
        print(f"stopped by {stop.signal_name} after step {exc.step}; the resume state is saved. "
              f"{_continue_hint(run_dir, stop)}", file=sys.stderr, flush=True)
        stop.hand_over()  # under submitit: requeue the job (this exits)
        raise SystemExit(128 + (stop.signum or 0)) from None
    except GrokError as exc:
        if isinstance(exc, (ResumeMismatch, ckpt.RunDirBusy)):
            _hydra_record(run_dir, keep=False)
        _remove_if_unused(run_dir)
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def _continue_hint(run_dir: Path, stop: GracefulStop) -> str:
    """How this run continues: submitit requeues it after its preemption signal; otherwise the
    command to run (or, in a sweep, the advice to rerun the sweep)."""
    preempt = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    if stop.hands_over and stop.signal_name == preempt:
        return "submitit takes over: it requeues the job, which resumes here"
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        return (f"To continue: run the same sweep again with hydra.sweep.dir={hc.sweep.dir}; "
                "finished jobs only redo their summary")
    args = [o for o in hc.overrides.task if not o.startswith("hydra.run.dir=")]
    return "To continue: " + shlex.join(["python", "-m", "grok.main", *args,
                                         f"hydra.run.dir={run_dir}"])


if __name__ == "__main__":
    main()
