"""`python -m grok.main`: train, checkpoint, analyse and log one run (or one job of a sweep).

run(cfg, run_dir) is the composition root: it reads top to bottom and wires task, split, model,
logger, trainer and analyses. main() is the Hydra glue around it.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from grok import naming, plots
from grok.config import Config, config_dict, register_configs, to_config
from grok.data.splits import Split, SplitError, load_split, make_split, save_split
from grok.data.tasks import Task, build_task
from grok.device import resolve_device
from grok.errors import GrokError
from grok.model import build_model
from grok.tracking import Logger, build_logger
from grok.train import checkpoint as ckpt
from grok.train.multiseed import SeedBatch
from grok.train.summary import summarize, summary_line
from grok.train.trainer import ResumeMismatch, Trainer, build_settings

register_configs()


def run(cfg: Config, run_dir: Path, logger: Logger | None = None) -> dict:
    """Train (or resume) one run in run_dir and return its summary (with cfg.seeds: a batch of
    runs in run_dir/seed_<s>, see run_seeds, and the first seed's summary)."""
    if cfg.seeds:
        return run_seeds(cfg, run_dir)[0]
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    task = build_task(cfg.task.op, cfg.task.p)
    split = prepare_split(cfg, task, run_dir)
    resume = ckpt.load_resume_state(run_dir, map_location=device)
    torch.manual_seed(cfg.seed)  # the model's initial weights are the only global-RNG draw
    model = build_model(model_config(cfg, task)).to(device)
    logger = logger or open_logger(cfg, run_dir, split, run_id=(resume or {}).get("wandb_run_id"))
    exit_code = 1
    try:
        trainer = Trainer(model, task, split, build_settings(cfg, naming.identity(cfg)), logger,
                          run_dir, device)
        trainer.extra_state["wandb_run_id"] = logger.run_id
        summary = finish(cfg, run_dir, trainer.fit(resume), logger)
        exit_code = 0
        return summary
    finally:
        logger.close(exit_code)


def run_seeds(cfg: Config, run_dir: Path, loggers: list[Logger] | None = None) -> list[dict]:
    """Train cfg.seeds as one batched model (grok.train.multiseed), each seed into its own
    complete run directory run_dir/seed_<s> with its own logger (W&B run); return the seeds'
    summaries. A seed's directory is what `seed=<s>` alone would have written, .hydra/config.yaml
    included, and can be analysed or resumed alone; resuming the batch needs every seed.
    `loggers` (one per seed) replaces the configured logger backend, e.g. in tests."""
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    task = build_task(cfg.task.op, cfg.task.p)
    cfgs = [dataclasses.replace(cfg, seed=s, seeds=[]) for s in cfg.seeds]
    dirs = [run_dir / f"seed_{s}" for s in cfg.seeds]
    given, loggers, trainers, resumes = loggers, [], [], []
    exit_code = 1
    try:
        for c, d in zip(cfgs, dirs):
            d.mkdir(parents=True, exist_ok=True)
            (d / ".hydra").mkdir(exist_ok=True)
            OmegaConf.save(OmegaConf.structured(c), d / ".hydra" / "config.yaml")
            split = prepare_split(c, task, d)
            resumes.append(ckpt.load_resume_state(d, map_location=device))
            torch.manual_seed(c.seed)
            model = build_model(model_config(c, task)).to(device)
            loggers.append(given[len(loggers)] if given else
                           open_logger(c, d, split, run_id=(resumes[-1] or {}).get("wandb_run_id")))
            trainer = Trainer(model, task, split, build_settings(c, naming.identity(c)),
                              loggers[-1], d, device)
            trainer.extra_state["wandb_run_id"] = loggers[-1].run_id
            trainers.append(trainer)
        all_rows = SeedBatch(trainers).fit(resumes)
        summaries = [finish(c, d, rows, lg)
                     for c, d, rows, lg in zip(cfgs, dirs, all_rows, loggers)]
        exit_code = 0
        return summaries
    finally:
        for lg in loggers:
            lg.close(exit_code)


def finish(cfg: Config, run_dir: Path, rows: list[dict], logger: Logger) -> dict:
    """Curves plot, summary (logged and printed) of a finished run."""
    curves = plots.training_curves(rows, run_dir / "plots" / "curves.png",
                                   title=naming.run_name(cfg))
    logger.log_figure("plots/curves", curves)
    summary = summarize(rows)
    logger.summary(summary)
    print(summary_line(summary, run_dir), flush=True)
    return summary


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


def open_logger(cfg: Config, run_dir: Path, split: Split, run_id: str | None) -> Logger:
    lc = cfg.logger
    config = {**config_dict(cfg), "derived": {"mirror_leak": split.mirror_leak,
                                              "n_train": len(split.train_idx),
                                              "n_test": len(split.test_idx)}}
    return build_logger(lc.backend, run_dir, project=lc.project, entity=lc.entity, mode=lc.mode,
                        config=config, group=naming.group(cfg), name=naming.run_name(cfg),
                        tags=[cfg.task.op, cfg.split.name, cfg.model.name, *lc.tags],
                        run_id=run_id)


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
    if run_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log"
                                for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)


@hydra.main(version_base="1.3", config_path="pkg://grok.conf", config_name="config")
def main(dcfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        cfg = to_config(dcfg)
        if not ckpt.resume_path(run_dir).exists():
            _hydra_record(run_dir, keep=True)
        run(cfg, run_dir)
        _hydra_record(run_dir, keep=True)
    except GrokError as exc:
        if isinstance(exc, ResumeMismatch):
            _hydra_record(run_dir, keep=False)
        _remove_if_unused(run_dir)
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
