"""`python -m grok.analyze run_dir=PATH [analysis=grokking] [t_grok=STEP] [device=cpu]`.

Rebuilds the analyses of a run from its directory alone: task and split from split.pt (checksum
verified, never recomputed), models from the checkpoints, t_grok from metrics.jsonl. It never
trains. Results overwrite the run's analysis/ and plots/ files and go to a logger run of job type
"analysis", logged as the training run logged unless logger.* says otherwise (posthoc_logger).
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from grok import commands, naming
from grok.analysis.runner import (
    LoadedRun,
    analyse_loaded,
    analysis_lines,
    load_run,
    settings_from_config,
)
from grok.config import (
    AnalysisConfig,
    Config,
    ConfigError,
    LoggerConfig,
    check_analysis,
    check_device,
    check_logger,
    config_dict,
    refuse_unknown_override_keys,
    register_configs,
    reject_unknown_keys,
)
from grok.device import resolve_device
from grok.errors import GrokError
from grok.files import check_writable
from grok.tracking import Logger, build_logger


@dataclass
class PosthocLoggerConfig:
    """LoggerConfig's settings, each None unless given on the command line: None takes the
    training run's own (posthoc_logger)."""

    backend: str | None = None
    project: str | None = None
    entity: str | None = None
    mode: str | None = None
    tags: list[str] | None = None


@dataclass
class AnalyzeConfig:
    run_dir: str = MISSING
    t_grok: int | None = None
    device: str = "auto"
    progress: bool = True
    analysis: AnalysisConfig = field(default_factory=lambda: AnalysisConfig(name="grokking"))
    logger: PosthocLoggerConfig = field(default_factory=PosthocLoggerConfig)


def register() -> None:
    register_configs()
    ConfigStore.instance().store(name="analyze_schema", node=AnalyzeConfig)


register()


def to_analyze_config(dcfg: DictConfig) -> AnalyzeConfig:
    reject_unknown_keys(dcfg, AnalyzeConfig, "grok.analyze")
    try:
        obj = OmegaConf.to_object(dcfg)
    except MissingMandatoryValue:
        raise ConfigError("run_dir is required: python -m grok.analyze run_dir=PATH "
                          "[analysis=grokking] [t_grok=STEP] [device=cpu]") from None
    assert isinstance(obj, AnalyzeConfig)
    check_analysis(obj.analysis)
    check_device(obj.device)
    check_logger(obj.logger)
    if obj.t_grok is not None and obj.t_grok < 0:
        raise ConfigError(f"t_grok={obj.t_grok} is invalid: must be a step >= 0")
    if obj.logger.tags is not None:
        obj.logger.tags = list(obj.logger.tags)
    return obj


def posthoc_logger(given: PosthocLoggerConfig, trained: Config | None) -> LoggerConfig:
    """The logger settings of a post-hoc analysis: each one given on the command line, else the
    training run's recorded one, else grok.main's default. So the analysis run lands where its
    training run logged (the same W&B project and entity beside it, or the run's CSV log)
    without repeating the run's logger.* overrides, which the printed grok.analyze commands do
    not carry."""
    recorded = trained.logger if trained is not None else LoggerConfig()
    return LoggerConfig(**{f.name: value if (value := getattr(given, f.name)) is not None
                           else getattr(recorded, f.name)
                           for f in dataclasses.fields(LoggerConfig)})


def analyze(cfg: AnalyzeConfig, logger: Logger | None = None) -> dict:
    """Run cfg.analysis on cfg.run_dir and return {suite step: results}."""
    run_dir = Path(cfg.run_dir)
    device = resolve_device(cfg.device)
    if cfg.analysis.name == "none":
        print("analysis=none: nothing to analyse; choose analysis=grokking", flush=True)
        return {}
    run = load_run(run_dir)  # every check on the run directory before a logger writes into it
    check_writable([run_dir, *(run_dir / d for d in ("analysis", "plots", "wandb", "logs"))],
                   f"the analysis writes into the run directory: copy it somewhere writable "
                   f"(cp -r {shlex.quote(str(run_dir))} COPY) and analyse the copy")
    warn_if_incomplete(run)
    last = run.checkpoints[-1][0]
    if cfg.t_grok is not None and cfg.t_grok > last:
        raise ConfigError(f"t_grok={cfg.t_grok} is invalid: the run's last checkpoint is at "
                          f"step {last}")
    logger = logger or open_logger(cfg, run)
    exit_code = 1
    try:
        results = analyse_loaded(run, cfg.analysis.name,
                                 settings_from_config(cfg.analysis, t_grok=cfg.t_grok), device,
                                 logger, progress=cfg.progress)
        for line in analysis_lines(results, run_dir):
            print(line, flush=True)
        exit_code = 0
        return results
    finally:
        logger.close(exit_code)


def warn_if_incomplete(run: LoadedRun) -> None:
    """An analysis of a run that stopped early is valid but covers part of it: say so (when the
    run's recorded config says how long it was to train)."""
    trained = run.config
    if trained is None or not run.metrics:
        return
    # the last evaluation, not where training stopped (a stop between evaluations is later)
    reached = run.metrics[-1]["step"]
    if reached < trained.steps:
        logging.getLogger("grok.analyze").warning(
            "the run stopped early: its metrics end at step %d of %d; this analyses the part it "
            "trained (resume it with python -m grok.main %s and its overrides to finish it)",
            reached, trained.steps, commands.override("hydra.run.dir", run.run_dir))


def open_logger(cfg: AnalyzeConfig, run: LoadedRun) -> Logger:
    """A logger run of job type "analysis", grouped and named like the training run (its
    recorded config; generic names when there is none)."""
    trained = run.config
    lc = posthoc_logger(cfg.logger, trained)
    info: dict[str, Any] = {"run_dir": str(run.run_dir.resolve()), "t_grok": cfg.t_grok,
                            "split_checksum": run.split.checksum}
    if trained is not None:
        config = {**config_dict(trained), "analysis": dataclasses.asdict(cfg.analysis),
                  "posthoc": info}
        group = naming.group(trained)
        tags = [trained.task.op, trained.split.name, trained.model.name]
    else:
        config = {"analysis": dataclasses.asdict(cfg.analysis), "posthoc": info}
        task = run.split.task
        group = f"{task['op']}{task['p']}-{run.split.name}"
        tags = [task["op"], run.split.name]
    return build_logger(lc.backend, run.run_dir, project=lc.project, entity=lc.entity,
                        mode=lc.mode, config=config, group=group, name=f"{run.name}-analysis",
                        tags=[*tags, "analysis", *lc.tags], job_type="analysis")


def configure_logging() -> None:
    """Warnings of the analyses as plain `warning: ...` lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    root = logging.getLogger("grok")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    root.propagate = False


@hydra.main(version_base="1.3", config_path="pkg://grok.conf", config_name="analyze")
def _main(dcfg: DictConfig) -> None:
    configure_logging()
    try:
        analyze(to_analyze_config(dcfg))
    except GrokError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        # every analysis file is renamed into place whole, so only its completeness is in doubt
        print("stopped by Ctrl-C before the analysis finished: its files on disk are whole, but "
              "some may be those of an earlier analysis. To redo it: "
              + commands.typed("grok.analyze", HydraConfig.get().overrides.task),
              file=sys.stderr, flush=True)
        raise SystemExit(130) from None


def main() -> None:
    """`python -m grok.analyze`: a mistyped key is refused in one line before Hydra composes."""
    refuse_unknown_override_keys(AnalyzeConfig, "grok.analyze")
    _main()


if __name__ == "__main__":
    main()
