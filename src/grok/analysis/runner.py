"""The analysis runner: load a run directory, run the chosen suite, let the suites save and log.

A suite is a sequence of named steps. Each step gets the loaded run, the settings and, as the
keyword t_grok, the forced value or the t_grok an earlier step of the suite returned, and
returns a dict that the runner hands back under the step's name. `full` is the grokking step
followed by the trajectory step, which then marks the t_grok that the grokking step found.

Training runs call run_analysis at the end (grok.main); `python -m grok.analyze` calls it on a
finished run. The runner never trains and never recomputes the split: split.pt is loaded with its
checksum verified and checked against the checkpoints and the run's recorded config. Every
checkpoint's checksum is verified before anything is analysed: a damaged one stops the analysis
rather than being left out, because leaving it out would silently move the checkpoints chosen
around t_grok (or the final one that the trajectory compares against) to other steps.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf

from grok import commands, naming
from grok.analysis.grokking import REPORT_FILE, grokking_suite
from grok.analysis.grokking import summary_line as grokking_line
from grok.analysis.settings import AnalysisError, AnalysisSettings
from grok.analysis.tgrok import detect_t_grok
from grok.analysis.trajectory import SUMMARY_FILE as TRAJECTORY_SUMMARY
from grok.analysis.trajectory import run_trajectory_suite
from grok.analysis.trajectory import summary_line as trajectory_line
from grok.config import Config
from grok.data.splits import Split, SplitError, load_split
from grok.data.tasks import Task, build_task
from grok.tracking.base import Logger
from grok.train import checkpoint as ckpt
from grok.train.trainer import METRICS_FILE, read_metrics

__all__ = ["AnalysisError", "AnalysisSettings", "LoadedRun", "SUITES", "analyse_loaded",
           "analysis_lines", "load_run", "recorded_config", "recorded_config_dict", "run_analysis",
           "settings_from_config"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedRun:
    """Everything an analysis needs from a run directory, loaded once."""

    run_dir: Path
    task: Task
    split: Split
    checkpoints: list[tuple[int, Path]]  # (step, path), ascending
    metrics: list[dict]  # the rows of metrics.jsonl ([] when the file is missing)
    config: Config | None = None  # the recorded training config, if it can be read

    @property
    def name(self) -> str:
        """What the run's figures are titled with: its W&B run name (add97-random0.8-power_2l-s0),
        or its folder's name when it has no readable config record."""
        return naming.run_name(self.config) if self.config is not None else self.run_dir.name

    def as_args(self) -> tuple[Path, Task, Split, list[tuple[int, Path]], list[dict]]:
        return self.run_dir, self.task, self.split, self.checkpoints, self.metrics


# (run, settings, *, t_grok, device, logger, progress) -> results of the step
SuiteStep = Callable[..., dict[str, Any]]

def trajectory_step(run: LoadedRun, settings: AnalysisSettings, *, t_grok: int | None,
                    **kwargs: Any) -> dict[str, Any]:
    """The trajectory suite on a loaded run. Run alone, it marks t_grok detected from the run's
    metrics with the grokking suite's settings (or the forced one)."""
    if t_grok is None and run.metrics:
        t_grok = detect_t_grok([r["step"] for r in run.metrics],
                               [r["test/acc"] for r in run.metrics], settings.window,
                               settings.threshold, monotone=settings.monotone).t_grok
    return run_trajectory_suite(*run.as_args(), t_grok=t_grok, block_size=settings.block_size,
                                title=run.name, **kwargs)


SUITES: dict[str, tuple[tuple[str, SuiteStep], ...]] = {
    "none": (),
    "grokking": (("grokking", grokking_suite),),
    "trajectory": (("trajectory", trajectory_step),),
}
SUITES["full"] = SUITES["grokking"] + SUITES["trajectory"]

# One printed line per step that has one: (results, run_dir) -> str
SUMMARY_LINES: dict[str, Callable[[dict, Path], str]] = {"grokking": grokking_line,
                                                          "trajectory": trajectory_line}


def analysis_lines(results: dict[str, dict], run_dir: Path) -> list[str]:
    """What to print after an analysis: one line per step of the suite that has one."""
    return [SUMMARY_LINES[name](res, run_dir) for name, res in results.items()
            if name in SUMMARY_LINES]


def run_analysis(run_dir: Path, suite: str, settings: AnalysisSettings, device: torch.device,
                 logger: Logger, progress: bool = True) -> dict:
    """Run `suite` on the run in run_dir; {step name: its results} ({} for suite "none")."""
    if suite not in SUITES:
        raise AnalysisError(f"analysis={suite!r} is not a suite; choose one of "
                            + ", ".join(SUITES))
    if not SUITES[suite]:
        return {}
    return analyse_loaded(load_run(run_dir), suite, settings, device, logger, progress)


def analyse_loaded(run: LoadedRun, suite: str, settings: AnalysisSettings, device: torch.device,
                   logger: Logger, progress: bool = True) -> dict:
    """run_analysis on an already loaded run (the post-hoc entry point checks it first)."""
    steps = SUITES[suite]
    results: dict[str, Any] = {}
    t_grok = settings.t_grok
    for name, step in steps:
        results[name] = step(run, settings, t_grok=t_grok, device=torch.device(device),
                             logger=logger, progress=progress)
        t_grok = results[name].get("t_grok", t_grok)
    warn_about_earlier_outputs(run, set(results))
    return results


# What each suite step writes, with the checkpoint steps it covered ("checkpoint_steps")
SUMMARY_FILES = {"grokking": REPORT_FILE, "trajectory": TRAJECTORY_SUMMARY}


def warn_about_earlier_outputs(run: LoadedRun, done: set[str]) -> None:
    """Results of a suite not run this time that stop short of the run's last checkpoint (the run
    was resumed and trained on since) sit next to fresh ones: say which and how to update them."""
    last = run.checkpoints[-1][0]
    for name, path in SUMMARY_FILES.items():
        summary = run.run_dir / path
        if name in done or not summary.is_file():
            continue
        try:
            covered = json.loads(summary.read_text())["checkpoint_steps"][-1]
        except (ValueError, KeyError, IndexError, TypeError):
            continue  # not ours to judge
        if covered < last:
            log.warning("%s covers checkpoints up to step %d only, from an earlier analysis; the "
                        "run has checkpoints to step %d now (%s updates it)", summary, covered,
                        last, commands.analyze(run.run_dir, f"analysis={name}"))


def load_run(run_dir: Path) -> LoadedRun:
    """Task, split, checkpoint list and metrics of a run directory, with clear errors."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file, not a folder" if run_dir.exists() else "not found"
        raise AnalysisError(f"run directory {run_dir} {what}; pass the folder of a training "
                            "run, e.g. run_dir=outputs/runs/<date>/<time>")
    if not (run_dir / "split.pt").exists() and not (run_dir / "checkpoints").is_dir():
        inside = runs_under(run_dir)
        if inside:
            kind = "a seed batch" if inside[0].name.startswith("seed_") else "a sweep"
            raise AnalysisError(f"{run_dir} is {kind}, not one run: analyse one of its runs, "
                                f"e.g. {commands.override('run_dir', inside[0])} (grok.compare "
                                f"{commands.override('sweep', run_dir)} compares them all)")
        raise AnalysisError(f"{run_dir} is not a run directory (no split.pt, no checkpoints/); "
                            "pass the folder of a training run, e.g. "
                            "run_dir=outputs/runs/<date>/<time>")
    checkpoints = ckpt.list_checkpoints(run_dir)
    if not checkpoints:
        raise AnalysisError(f"no checkpoints in {run_dir / 'checkpoints'} (step_*.pt); the run "
                            "saved none, so there is nothing to analyse (train with "
                            "train.checkpoints > 0)")
    split = load_split(run_dir / "split.pt")  # SplitError: missing, unreadable or bad checksum
    task = build_task(split.task["op"], split.task["p"])
    trained_on = _verify_checkpoints(run_dir, checkpoints)
    _check_split_belongs(run_dir, split, trained_on)
    metrics_path = run_dir / METRICS_FILE
    # a run killed mid-write (kill -9) can leave its last row cut short: analyse the others
    metrics = read_metrics(metrics_path, torn_tail_ok=True) if metrics_path.is_file() else []
    return LoadedRun(run_dir, task, split, checkpoints, metrics, recorded_config(run_dir))


def _job_order(d: Path) -> tuple:
    """Hydra's job number where the job recorded it (preset sweeps name their job folders after
    the overrides, which sort otherwise: seed=0,split=conflict before seed=0,split=random),
    then numbered folders by number, then names."""
    num = _recorded_job_number(d)
    return (num is None, num or 0, not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0,
            d.name)


def _recorded_job_number(job: Path) -> int | None:
    try:
        num = (recorded_hydra_file(job, "hydra.yaml") or {})["hydra"]["job"]["num"]
    except (yaml.YAMLError, KeyError, TypeError):
        return None
    return num if isinstance(num, int) else None


def _is_run(d: Path) -> bool:
    return d.is_dir() and (d / "checkpoints").is_dir()


def runs_under(folder: Path) -> list[Path]:
    """The run directories inside a sweep (or seed batch) folder, in job order: each job folder
    that is a run, or, for a job that trained a seed batch, its seed_<s> folders."""
    runs = []
    for job in sorted((d for d in folder.iterdir() if d.is_dir()), key=_job_order):
        if _is_run(job):
            runs.append(job)
        else:
            runs += sorted((d for d in job.glob("seed_*") if _is_run(d)),
                           key=lambda d: _job_order(Path(d.name.removeprefix("seed_"))))
    return runs


def _verify_checkpoints(run_dir: Path, checkpoints: list[tuple[int, Path]]) -> dict | None:
    """Read every checkpoint with its checksum verified, so that a damaged one stops the analysis
    before a logger opens or a result is overwritten. Returns the task the first one records."""
    task = None
    for step, path in checkpoints:
        try:
            data = ckpt.load_checkpoint(path)
        except ckpt.DamagedCheckpoint as exc:
            raise AnalysisError(f"{exc}: {_how_to_replace(run_dir, step)}") from None
        if task is None and "task" in data:
            task = dict(data["task"])
    return task


def _how_to_replace(run_dir: Path, step: int) -> str:
    """What to do about the damaged checkpoint of `step`. Rerunning the training command writes
    it again when the run resumes at or before its step (always the case for the final checkpoint
    of a finished run); an earlier one is lost, and the analysis can only go without it."""
    without = f"delete it and run the analysis again, which then leaves out step {step}"
    resumes_at = ckpt.resume_step(run_dir)
    if resumes_at is None or step < resumes_at:
        return without
    return ("rerun the command that trained the run (same overrides, same run directory) to "
            f"write it again from the resume state, or {without}")


def _check_split_belongs(run_dir: Path, split: Split, ckpt_task: dict | None) -> None:
    """split.pt must be this run's: same task as the checkpoints (`ckpt_task`, None if they record
    none), same split as the config."""
    if ckpt_task is not None and ckpt_task != split.task:
        raise SplitError(f"{run_dir / 'split.pt'} belongs to {split.task['op']} mod "
                         f"{split.task['p']}, but the checkpoints were trained on "
                         f"{ckpt_task['op']} mod {ckpt_task['p']}; restore the run's own "
                         "split.pt")
    recorded = recorded_config_dict(run_dir)
    if recorded is None:
        return
    cfg_split, seed = recorded.get("split", {}), recorded.get("seed")
    expected = {
        "task": {"op": recorded.get("task", {}).get("op"), "p": recorded.get("task", {}).get("p")},
        "name": cfg_split.get("name"),
        "seed": cfg_split.get("seed") if cfg_split.get("seed") is not None else seed,
        "train_frac": cfg_split.get("train_frac"),
    }
    found = {"task": split.task, "name": split.name, "seed": split.seed,
             "train_frac": split.params.get("train_frac")}
    if split.name == "structured":
        expected["pattern"], found["pattern"] = cfg_split.get("pattern"), split.params.get(
            "pattern")
    for key, value in expected.items():
        if value is not None and found[key] != value:
            raise SplitError(f"{run_dir / 'split.pt'} does not match the run's config: it has "
                             f"{key}={found[key]!r} where the config has {key}={value!r}; "
                             "restore the run's own split.pt")


def recorded_hydra_file(run_dir: Path, name: str) -> dict | None:
    """A file of the run's accepted Hydra record (main.py keeps it in .hydra/accepted/; else the
    one Hydra wrote last), parsed; None if there is none. Raises yaml.YAMLError."""
    for path in (run_dir / ".hydra" / "accepted" / name, run_dir / ".hydra" / name):
        if path.is_file():
            data = yaml.safe_load(path.read_text())
            return data if isinstance(data, dict) else None
    return None


def recorded_config_dict(run_dir: Path) -> dict | None:
    """The run's accepted Hydra config record."""
    try:
        return recorded_hydra_file(run_dir, "config.yaml")
    except yaml.YAMLError:
        log.warning("cannot parse the config record in %s; the split is checked by its checksum "
                    "only", run_dir / ".hydra")
        return None


def recorded_config(run_dir: Path) -> Config | None:
    """The run's training config from its accepted Hydra record, if it can be read."""
    data = recorded_config_dict(run_dir)
    if data is None:
        return None
    data.pop("hydra", None)
    try:
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), data))
    except Exception:  # an old or hand-edited record: fall back to generic names
        return None
    return obj if isinstance(obj, Config) else None


def settings_from_config(analysis_cfg: Any, t_grok: int | None = None) -> AnalysisSettings:
    """AnalysisSettings from a checked grok.config.AnalysisConfig (same field names) and a forced
    t_grok."""
    names = [f.name for f in fields(AnalysisSettings) if f.name != "t_grok"]
    return AnalysisSettings(t_grok=t_grok, **{n: getattr(analysis_cfg, n) for n in names})
