"""`python -m grok.main`: train, checkpoint, analyse and log one run (or one job of a sweep).

run(cfg, run_dir) is the composition root: it reads top to bottom and wires task, split, model,
logger, trainer and analyses (grok.assemble builds the parts). main() is the Hydra glue around it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import hydra_plugins.grok_joblib_launcher
from grok import commands, naming, plots
from grok.analysis.runner import analysis_lines, run_analysis, settings_from_config
from grok.assemble import (
    RunParts,
    build_run,
    check_batch,
    check_run_or_batch,
    open_run,
    started,
)
from grok.config import Config, refuse_unknown_override_keys, register_configs, to_config
from grok.device import resolve_device
from grok.errors import GrokError
from grok.files import disk_full, remove_if_unused
from grok.output_folders import NEW_FOLDERS
from grok.tracking import Logger
from grok.train import checkpoint as ckpt
from grok.train.multiseed import SeedBatch
from grok.train.preemption import GracefulStop, StoppedAfterTraining, StoppedAtOnce
from grok.train.summary import summarize, summary_line
from grok.train.trainer import DamagedMetrics, ResumeMismatch, TrainingStopped

register_configs()
hydra_plugins.grok_joblib_launcher.register()  # conf/hydra/launcher/joblib.yaml names it


def run(cfg: Config, run_dir: Path, logger: Logger | None = None,
        stop: GracefulStop | None = None, sweep_dir: Path | None = None) -> dict:
    """Train (or resume) one run in run_dir and return its summary. With `stop` (an entered
    GracefulStop), a stop signal saves the resume state and raises TrainingStopped. With
    cfg.seeds, train a batch of runs in run_dir/seed_<s> (run_seeds); return the first summary.
    `sweep_dir`: the sweep folder of a sweep's job, which refusals then point beside."""
    check_run_or_batch(run_dir, cfg.seeds)
    if cfg.seeds:
        return run_seeds(cfg, run_dir, stop=stop, sweep_dir=sweep_dir)[0]
    device = resolve_device(cfg.device)
    parts = build_run(cfg, Path(run_dir), device, logger, sweep_dir=sweep_dir)
    if stop is not None:
        parts.trainer.should_stop = stop
    exit_code = 1
    try:
        rows = parts.trainer.fit(parts.resume)
        if stop is not None:
            stop.finish_training()
        summary = finish(cfg, parts, rows, device)
        exit_code = 0
        return summary
    except (TrainingStopped, StoppedAfterTraining, KeyboardInterrupt):
        exit_code = _stopped_exit_code(stop)
        raise
    finally:
        parts.logger.close(exit_code)


def run_seeds(cfg: Config, run_dir: Path, loggers: list[Logger] | None = None,
              stop: GracefulStop | None = None, sweep_dir: Path | None = None) -> list[dict]:
    """Train cfg.seeds as one batched model (grok.train.multiseed), each seed into its own
    complete run directory run_dir/seed_<s> with its own logger (W&B run); return the seeds'
    summaries. A seed's directory is what `seed=<s>` alone would have written, .hydra/config.yaml
    included, and can be analysed or resumed alone; resuming the batch needs every seed.
    `loggers` (one per seed) replaces the configured logger backend, e.g. in tests."""
    device = resolve_device(cfg.device)
    cfgs = [dataclasses.replace(cfg, seed=s, seeds=[]) for s in cfg.seeds]
    # A seed batch trains eagerly (SeedBatch has its own step), so train.compile must neither
    # ask for a compiler nor announce a compile here.
    eager = [dataclasses.replace(c, train=dataclasses.replace(c.train, compile=False))
             for c in cfgs]
    parts: list[RunParts] = []
    exit_code = 1
    try:
        runs = check_batch(eager, Path(run_dir), device, sweep_dir)
        for i, r in enumerate(runs):
            parts.append(open_run(r, device, loggers[i] if loggers else None))
            # The global RNG is drawn from only to initialise the model, so a separate run saves
            # the state its seed left there; the batch's own state is the last seed's.
            parts[-1].trainer.extra_state["torch_rng"] = r.torch_rng
        for c, p in zip(cfgs, parts):  # once every seed's resume check has passed
            _save_seed_record(c, p.trainer.run_dir)
        batch = SeedBatch([p.trainer for p in parts])
        if stop is not None:
            batch.should_stop = stop
        all_rows = batch.fit([p.resume for p in parts])
        if stop is not None:
            stop.finish_training()
        summaries = [finish(c, p, rows, device) for c, p, rows in zip(cfgs, parts, all_rows)]
        exit_code = 0
        return summaries
    except (TrainingStopped, StoppedAfterTraining, KeyboardInterrupt):
        exit_code = _stopped_exit_code(stop)
        raise
    finally:
        for p in parts:
            p.logger.close(exit_code)


def _stopped_exit_code(stop: GracefulStop | None) -> int:
    """The W&B exit code of a run stopped early: 128 + the signal's number, as a shell reports
    a process killed by it."""
    return 128 + (stop.signum or 0) if stop is not None else 1


def finish(cfg: Config, parts: RunParts, rows: list[dict], device: torch.device) -> dict:
    """Curves plot, summary (logged and printed) and the configured analysis of a finished run."""
    run_dir, logger = parts.trainer.run_dir, parts.logger
    curves = plots.training_curves(rows, run_dir / "plots" / "curves.png",
                                   title=naming.run_name(cfg))
    # at the run's last step: logged without one, a rerun's fresh W&B process files it at step 0
    logger.log_figure("plots/curves", curves, step=rows[-1]["step"])
    summary = summarize(rows)
    logger.summary(summary)
    print(summary_line(summary, run_dir), flush=True)
    analysis = run_analysis(run_dir, cfg.analysis.name, settings_from_config(cfg.analysis),
                            device, logger, progress=cfg.train.progress)
    for line in analysis_lines(analysis, run_dir):
        print(line, flush=True)
    return summary


def _save_seed_record(cfg: Config, seed_dir: Path) -> None:
    """The config record `seed=<s>` alone would have left (Hydra writes none for a batch's
    seeds), accepted as main() accepts a run's, so a refused command there can put it back."""
    for folder in (seed_dir / ".hydra", seed_dir / ".hydra" / "accepted"):
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.structured(cfg), folder / "config.yaml")


def _hydra_record(run_dir: Path, keep: bool) -> None:
    """Hydra rewrites .hydra/ before a job starts, even when the job then refuses to resume a run
    with another config. keep=True saves the record of a run that started; keep=False puts it
    back (and removes files the refused command added), so a refused command leaves the run
    directory as it was."""
    record, accepted = run_dir / ".hydra", run_dir / ".hydra" / "accepted"
    src, dst = (record, accepted) if keep else (accepted, record)
    if src.is_dir():
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.yaml"):
            shutil.copy2(f, dst / f.name)
        if not keep:
            for f in dst.glob("*.yaml"):
                if not (src / f.name).exists():
                    f.unlink()


@hydra.main(version_base="1.3", config_path="pkg://grok.conf", config_name="config")
def _main(dcfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    stop = GracefulStop()
    try:
        cfg = to_config(dcfg)
        with stop, ckpt.lock_run_dir(run_dir):
            if not started(run_dir):
                _hydra_record(run_dir, keep=True)
            run(cfg, run_dir, stop=stop, sweep_dir=_sweep_dir())
        _hydra_record(run_dir, keep=True)
    except TrainingStopped as exc:
        _hydra_record(run_dir, keep=True)
        print(f"stopped by {stop.signal_name} after step {exc.step}; the resume state is saved. "
              f"{_continue_hint(run_dir, stop)}", file=sys.stderr, flush=True)
        stop.hand_over()  # under submitit: requeue the job (this exits)
        raise SystemExit(128 + (stop.signum or 0)) from None
    except StoppedAfterTraining:
        _hydra_record(run_dir, keep=True)
        print(f"stopped by {stop.signal_name} during the analysis; training is finished and "
              f"saved. To redo the analysis: {commands.analyze(run_dir)}",
              file=sys.stderr, flush=True)
        stop.hand_over()  # under submitit: the requeued job redoes the summary and analysis
        raise SystemExit(128 + (stop.signum or 0)) from None
    except KeyboardInterrupt:
        # A second Ctrl-C (GracefulStop), or one before the run began: nothing was saved now,
        # and this command may not have passed the resume checks, so the directory keeps the
        # record of the last command that did (as for a refused command).
        _hydra_record(run_dir, keep=False)
        if ckpt.has_resume_state(run_dir):
            where = ("the steps since the last resume state are lost. "
                     + _continue_hint(run_dir, stop))
        else:
            where = "no resume state was saved yet"
        print(f"stopped at once by Ctrl-C: {where}", file=sys.stderr, flush=True)
        raise StoppedAtOnce() from None
    except GrokError as exc:
        if isinstance(exc, (ResumeMismatch, ckpt.RunDirBusy, DamagedMetrics)):
            _hydra_record(run_dir, keep=False)
        # a busy directory belongs to the lock's holder, which may not have written yet
        if not isinstance(exc, ckpt.RunDirBusy):
            remove_if_unused(run_dir, also=(ckpt.LOCK_FILE,), made=NEW_FOLDERS)
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except (OSError, RuntimeError) as exc:
        if not disk_full(exc):
            raise
        # every file is written atomically, so what is on disk is whole: the run can resume
        print(f"error: no space left on the device of {run_dir}; free some space and rerun the "
              "same command to continue from the last resume state", file=sys.stderr)
        raise SystemExit(1) from None


def _continue_hint(run_dir: Path, stop: GracefulStop) -> str:
    """How this run continues: submitit requeues it after its preemption signal; otherwise the
    command to run (or, in a sweep, the advice to rerun the sweep)."""
    preempt = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    if stop.hands_over and stop.signal_name == preempt:
        return "submitit takes over: it requeues the job, which resumes here"
    sweep_dir = _sweep_dir()
    if sweep_dir is not None:
        return ("To continue: run the same sweep again with "
                f"{commands.override('hydra.sweep.dir', sweep_dir)}; finished jobs only redo "
                "their summary")
    args = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.run.dir=")]
    return ("To continue: " + commands.typed("grok.main", args) + " "
            + commands.override("hydra.run.dir", run_dir))


def _sweep_dir() -> Path | None:
    """The folder of the sweep this job belongs to (hydra.sweep.dir); None for a single run."""
    hc = HydraConfig.get()
    return Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None


def main() -> None:
    """`python -m grok.main`: a mistyped key is refused in one line before Hydra composes."""
    refuse_unknown_override_keys(Config, "grok.main", groups=("experiment",))
    _main()


if __name__ == "__main__":
    main()
