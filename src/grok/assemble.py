"""Build the parts of one training run, or of a seed batch's runs, from its checked config (used
by grok.main).

build_run does, in this order, everything a run needs before its first step: check_run checks
the resume state against the command before anything is written or logged, makes the split (or
loads it on resume) and estimates the disk the checkpoints will take, which is printed and
checked; then open_run saves a new split, opens the logger (reopening the saved W&B run on
resume) and wires the trainer. So a split that cannot be made or a disk that is too small stops
the run before it writes anything. A seed batch checks every seed, and the disk of the whole
batch, before any seed's open_run (check_batch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from grok import commands, naming
from grok.config import Config, config_dict
from grok.data.splits import Split, SplitError, load_split, make_split, save_split
from grok.data.tasks import Task, build_task
from grok.errors import GrokError
from grok.files import hydra_wrote
from grok.model import build_model
from grok.tracking import Logger, build_logger
from grok.train import checkpoint as ckpt
from grok.train.trainer import (
    ResumeMismatch,
    Trainer,
    TrainSettings,
    build_settings,
    check_history,
    check_identity,
)


@dataclass
class RunParts:
    trainer: Trainer
    logger: Logger
    resume: dict | None  # the contents of last.pt when resuming


@dataclass
class CheckedRun:
    """A run that passed every check made before anything is written (check_run), with what
    those checks built: open_run writes its split and wires its trainer."""

    cfg: Config
    run_dir: Path
    settings: TrainSettings
    task: Task
    model: torch.nn.Module
    split: Split
    resume: dict | None  # the contents of last.pt when resuming
    disk: ckpt.DiskEstimate
    torch_rng: torch.Tensor  # the global RNG state the model's initialisation left
    label: str = ""  # what its printed lines begin with: "seed_<s>: " in a seed batch


def build_run(cfg: Config, run_dir: Path, device: torch.device,
              logger: Logger | None = None, sweep_dir: Path | None = None) -> RunParts:
    """The parts of the run in run_dir (a job of the sweep in sweep_dir, if given, which only
    changes what a refusal suggests)."""
    run = check_run(cfg, run_dir, device, sweep_dir=sweep_dir)
    report_disk(run)
    return open_run(run, device, logger)


def check_batch(cfgs: list[Config], batch_dir: Path, device: torch.device,
                sweep_dir: Path | None = None) -> list[CheckedRun]:
    """Check each seed's run batch_dir/seed_<s> of a seed batch (one config per seed), and the
    disk the whole batch needs, before any seed writes (open_run): a seed refused after the
    seeds before it had saved their split and opened their W&B run would leave them behind."""
    runs = [check_run(c, Path(batch_dir) / f"seed_{c.seed}", device, batch_dir, sweep_dir)
            for c in cfgs]
    report_batch_disk(runs, Path(batch_dir))
    return runs


def check_run(cfg: Config, run_dir: Path, device: torch.device, batch_dir: Path | None = None,
              sweep_dir: Path | None = None) -> CheckedRun:
    """Everything the run in run_dir needs before it writes: the resume state is checked against
    the command, the model is initialised, the split made (or loaded on resume) and the disk
    its checkpoints need estimated; run_dir is not made here (a seed of the batch in batch_dir,
    if given; a job of the sweep in sweep_dir, if given, which only changes what a refusal
    suggests)."""
    run_dir = Path(run_dir)
    label = f"{run_dir.name}: " if batch_dir is not None else ""
    settings = build_settings(cfg, naming.identity(cfg), device)  # may refuse train.compile=true
    if settings.compile and cfg.train.compile == "auto":
        print(f"train.compile=auto: compiling the training step for this {cfg.steps}-step run "
              "(20-60 s at the first step; train.compile=false trains eagerly)", flush=True)
    task = build_task(cfg.task.op, cfg.task.p)
    resume = ckpt.load_resume_state(run_dir, map_location=device)
    if resume is not None:
        # a batch that differs starts fresh beside the batch, not inside it
        check_identity(resume.get("identity", {}), settings.identity, run_dir, batch_dir,
                       sweep_dir)
        if resume["step"] > cfg.steps:
            raise ResumeMismatch(
                f"{run_dir} is already at step {resume['step']}, past steps={cfg.steps}: rerun "
                f"with steps={resume['step']} or more to finish or extend it "
                f"({commands.analyze(run_dir)} analyses it as it is)")
        check_history(run_dir, resume)  # before the logger opens a W&B fragment
        warn_if_threads_differ(resume.get("torch_threads"), label)
    torch.manual_seed(cfg.seed)  # the model's initial weights are the only global-RNG draw
    model = build_model(model_config(cfg, task)).to(device)
    torch_rng = torch.get_rng_state()
    split = load_or_make_split(cfg, task, run_dir / "split.pt")
    disk = ckpt.estimate_disk(run_dir, model, model.config_dict(), {"op": task.op, "p": task.p},
                              settings.checkpoint_steps,
                              trained_to=None if resume is None else resume["step"])
    return CheckedRun(cfg, run_dir, settings, task, model, split, resume, disk, torch_rng, label)


def open_run(run: CheckedRun, device: torch.device, logger: Logger | None = None) -> RunParts:
    """Write the checked run's new split, open its logger (reopening the saved W&B run on
    resume) and wire its trainer."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    split_path = run.run_dir / "split.pt"
    if not split_path.exists():
        save_split(run.split, split_path)
    report_start(run.cfg, run.settings, len(run.split.train_idx), run.resume, run.label)
    logger = logger or open_logger(run.cfg, run.run_dir, run.split, run.resume or {})
    trainer = Trainer(run.model, run.task, run.split, run.settings, logger, run.run_dir, device)
    trainer.extra_state["wandb_run_id"] = logger.run_id
    trainer.extra_state["torch_threads"] = torch.get_num_threads()
    if hasattr(logger, "history_step"):  # W&B: where a resumed fragment's rows continue
        trainer.extra_state["wandb_step"] = lambda: logger.history_step
    return RunParts(trainer, logger, run.resume)


def holds_run(run_dir: Path) -> bool:
    """Whether run_dir holds a run (its split, or a resume state: it has begun)."""
    return ckpt.has_resume_state(run_dir) or (Path(run_dir) / "split.pt").exists()


def batch_runs(run_dir: Path) -> list[str]:
    """The seed_<s> folders of run_dir that hold a run (a seed batch's)."""
    return sorted(d.name for d in Path(run_dir).glob("seed_*") if holds_run(d))


def started(run_dir: Path) -> bool:
    """Whether run_dir holds a run, or a seed batch, that has begun."""
    return holds_run(run_dir) or bool(batch_runs(run_dir))


def check_output_folder(run_dir: Path, key: str) -> None:
    """Refuse to train into an existing folder that holds files but no run (a project folder
    given as hydra.run.dir, say): the run would scatter its files among them, and a metrics.jsonl
    or checkpoints/ left without its split.pt would be overwritten. `key` is the setting that
    chose the folder, which the message names."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or started(run_dir):
        return
    others = sorted(p.name for p in run_dir.iterdir() if not _left_before_a_start(p))
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise NotARunDir(f"{run_dir} holds files but no grok run ({shown}): choose a new or empty "
                         f"folder for {key}")


def _left_before_a_start(path: Path) -> bool:
    """Whether path is what a command that stopped before the split was saved may have left in
    a run directory (Hydra's record and log, the lock, an atomic write's temporary file), or a
    folder of nothing else (an empty folder included)."""
    if hydra_wrote(path) or path.name == ckpt.LOCK_FILE:
        return True
    if path.name.startswith(".") and path.name.endswith(".tmp"):
        return True
    return path.is_dir() and all(_left_before_a_start(p) for p in path.iterdir())


class NotARunDir(GrokError):
    """The output folder exists and holds files, but no grok run."""


def check_run_or_batch(run_dir: Path, seeds: list[int]) -> None:
    """A directory holds one run or one seed batch (its seed_<s> runs), never both: a batch
    started in a single run's directory would bury it and rewrite its Hydra record."""
    run_dir = Path(run_dir)
    single, batch = holds_run(run_dir), batch_runs(run_dir)
    if seeds and single:
        raise ResumeMismatch(
            f"{run_dir} holds a single run, not a seed batch: train seeds={list(seeds)} in "
            "another directory (hydra.run.dir=...)")
    if not seeds and batch:
        alone = commands.override("hydra.run.dir", run_dir / batch[0])
        raise ResumeMismatch(
            f"{run_dir} holds a seed batch ({', '.join(batch)}): continue it with seeds=[...], "
            f"one of its seeds alone with {alone}, or start this run in another directory")


def report_start(cfg: Config, settings: TrainSettings, n_train: int, resume: dict | None,
                 label: str = "") -> None:
    """Say where a resumed run picks up, and when a minibatch size means full-batch training;
    each line begins with label (a seed batch's "seed_<s>: ", so its seeds' lines tell apart)."""
    if resume is not None:
        done = resume["step"]
        print(label + (f"resuming at step {done} of {cfg.steps}" if done < cfg.steps else
                       f"already trained to step {done}: redoing its summary and analysis"),
              flush=True)
    if settings.batch_size is not None and settings.batch_size >= n_train:
        print(f"{label}train.batch_size={settings.batch_size} covers all {n_train} training "
              "pairs: every step is full-batch", flush=True)


def warn_if_threads_differ(saved: int | None, label: str = "") -> None:
    """CPU float sums depend on the thread count: say so when a resume changes it."""
    if saved is not None and saved != torch.get_num_threads():
        logging.getLogger(__name__).warning(
            "%sthis run was saved with %d torch threads and resumes with %d: the continuation is "
            "valid but not bit-identical to an uninterrupted run (set OMP_NUM_THREADS=%d to keep "
            "it exact)", label, saved, torch.get_num_threads(), saved)


def report_disk(run: CheckedRun) -> None:
    """Print what the run's checkpoints will take; refuse to start if the disk cannot hold it."""
    print(run.disk.line(), flush=True)
    if run.disk.remaining_bytes > run.disk.free_bytes:
        raise ckpt.InsufficientDisk(
            f"the checkpoints of this run need {run.disk.remaining_bytes / 1e6:.1f} MB more but "
            f"only {run.disk.free_bytes / 1e6:.1f} MB are free where {run.run_dir} is; free some "
            "space or lower train.checkpoints")


def report_batch_disk(runs: list[CheckedRun], batch_dir: Path) -> None:
    """Print each seed's disk line, named by its seed; refuse the batch if the disk cannot hold
    what its seeds still write together. Each seed's check counts the bytes of the seeds before
    it: one seed's bytes against the free space let a batch of 16 start with room for one, and
    fill the disk mid-run."""
    ahead = 0
    for run in runs:
        print(f"{run.run_dir.name}: {run.disk.line(ahead)}", flush=True)
        ahead += run.disk.remaining_bytes
        if ahead > run.disk.free_bytes:
            need = sum(r.disk.remaining_bytes for r in runs)
            raise ckpt.InsufficientDisk(
                f"the checkpoints of this seed batch ({len(runs)} seeds) need {need / 1e6:.1f} MB "
                f"more but only {run.disk.free_bytes / 1e6:.1f} MB are free where {batch_dir} "
                "is; free some space, train fewer seeds or lower train.checkpoints")


def load_or_make_split(cfg: Config, task: Task, path: Path) -> Split:
    """The run's split: loaded (checksum-verified) on resume, else made (the caller saves it)."""
    if path.exists():
        split = load_split(path, task)
        wanted = (cfg.split.name, cfg.split_seed)
        if (split.name, split.seed) != wanted or split.params["train_frac"] != cfg.split.train_frac:
            raise SplitError(f"{path} holds a {split.name} split (seed {split.seed}, "
                             f"{split.params}) that does not match this config; "
                             "use another run directory")
        return split
    return make_split(task, cfg.split.name, cfg.split.train_frac, cfg.split_seed,
                      cfg.split.pattern)


def model_config(cfg: Config, task: Task) -> dict:
    """The model's plain config: the chosen architecture with sizes derived from the task."""
    m = cfg.model
    if m.arch == "bilinear":
        return {"arch": "bilinear", "d_vocab": task.vocab_size, "n_classes": task.n_classes,
                "d_embed": m.d_model, "d_hidden": m.d_mlp}
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
