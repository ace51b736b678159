"""`python -m grok.compare runs=[DIR,...] | sweep=DIR [labels=[...]] [baseline=LABEL]`.

Overlays the runs' accuracy, final-layer rank and attention entropy (one colour per variant,
seeds as mean with a std band, one t_grok line per run), tabulates t_grok, the delay factor
against the baseline variant and the before/after values (printed, runs.csv, variants.csv,
compare.json), and logs all of it as a W&B run of job type "compare".
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from grok import commands, naming, plots
from grok.analysis.comparison import (
    RUN_COLUMNS,
    RunEntry,
    compare,
    format_table,
    load_report,
    write_tables,
)
from grok.analysis.grokking import REPORT_FILE
from grok.analysis.runner import recorded_config, run_analysis, runs_under
from grok.analysis.settings import AnalysisSettings
from grok.analyze import configure_logging
from grok.config import (
    Config,
    ConfigError,
    LoggerConfig,
    check_device,
    check_logger,
    refuse_unknown_override_keys,
    reject_unknown_keys,
)
from grok.device import resolve_device
from grok.errors import GrokError
from grok.files import remove_if_unused
from grok.output_folders import NEW_FOLDERS
from grok.tracking import Logger, NullLogger, build_logger


@dataclass
class CompareConfig:
    runs: list[str] = field(default_factory=list)
    sweep: str | None = None
    labels: list[str] = field(default_factory=list)
    baseline: str | None = None
    analyze_missing: bool = True
    device: str = "auto"
    xscale: str = "log"
    progress: bool = True
    logger: LoggerConfig = field(default_factory=LoggerConfig)


ConfigStore.instance().store(name="compare_schema", node=CompareConfig)


def to_compare_config(dcfg: DictConfig) -> CompareConfig:
    reject_unknown_keys(dcfg, CompareConfig, "grok.compare")
    obj = OmegaConf.to_object(dcfg)
    assert isinstance(obj, CompareConfig)
    obj.runs, obj.labels = list(obj.runs), [str(x) for x in obj.labels]
    obj.logger.tags = list(obj.logger.tags)
    if obj.xscale not in ("log", "linear"):
        raise ConfigError(f"xscale={obj.xscale!r} is invalid: choose log or linear")
    check_device(obj.device)
    check_logger(obj.logger)
    return obj


def run_dirs(cfg: CompareConfig) -> list[Path]:
    """The runs to compare: cfg.runs, then the runs of cfg.sweep in job order."""
    dirs = [Path(r) for r in cfg.runs]
    if cfg.sweep is not None:
        sweep = Path(cfg.sweep)
        if not sweep.is_dir():
            raise ConfigError(f"sweep={sweep} is not a directory")
        jobs = runs_under(sweep)
        if not jobs:
            raise ConfigError(f"sweep={sweep} holds no run directories (job folders with "
                              "checkpoints/, or their seed_<s> folders)")
        dirs += jobs
    if not dirs:
        raise ConfigError("nothing to compare: give run directories (runs=[DIR1,DIR2]) or a "
                          "sweep directory (sweep=DIR)")
    seen: set[Path] = set()
    for d in dirs:
        if not d.is_dir():
            raise ConfigError(f"run directory {d} not found")
        if d.resolve() in seen:
            raise ConfigError(f"run directory {d} is given twice; each run counts once")
        seen.add(d.resolve())
    return dirs


def default_labels(configs: list[Config | None], dirs: list[Path]) -> list[str]:
    """Each run's variant (task, split, model); its W&B group (variant + config hash) where two
    configurations share a variant, so only seeds of one configuration are ever aggregated."""
    variants = [naming.variant(c) if c else d.name for c, d in zip(configs, dirs)]
    groups = [naming.group(c) if c else d.name for c, d in zip(configs, dirs)]
    ambiguous = {v for v in variants
                 if len({g for g, w in zip(groups, variants) if w == v}) > 1}
    return [g if v in ambiguous else v for v, g in zip(variants, groups)]


def default_baseline(labels: list[str], configs: list[Config | None]) -> str:
    """The first variant trained on a random split, else the first variant."""
    for label, c in zip(labels, configs):
        if c is not None and c.split.name == "random":
            return label
    return labels[0]


def load_entries(cfg: CompareConfig, dirs: list[Path], labels: list[str],
                 configs: list[Config | None]) -> list[RunEntry]:
    entries = []
    for d, label, c in zip(dirs, labels, configs):
        if not (d / REPORT_FILE).is_file() and cfg.analyze_missing:
            print(f"analysing {d} (no {REPORT_FILE} yet)", flush=True)
            run_analysis(d, "grokking", AnalysisSettings(), resolve_device(cfg.device),
                         NullLogger(), progress=cfg.progress)
        entries.append(RunEntry(d, label, c.seed if c else None, load_report(d)))
    return entries


def compare_runs(cfg: CompareConfig, out_dir: Path, logger: Logger | None = None) -> dict:
    """Compare the runs of cfg, write tables and figures into out_dir, log, return the tables."""
    dirs = run_dirs(cfg)
    if cfg.labels and len(cfg.labels) != len(dirs):
        raise ConfigError(f"labels has {len(cfg.labels)} entries for {len(dirs)} runs; give one "
                          "label per run (in the order runs, then the sweep's jobs)")
    configs = [recorded_config(d) for d in dirs]
    labels = cfg.labels or default_labels(configs, dirs)
    entries = load_entries(cfg, dirs, labels, configs)
    result = compare(entries, cfg.baseline or default_baseline(labels, configs))
    paths = write_tables(result, out_dir)
    groups: dict[str, list[dict]] = {}
    for e in entries:
        groups.setdefault(e.label, []).append(e.report)
    warn_about_lengths(groups)
    warn_about_repeated_seeds(entries)
    figures = plots.compare_figures(groups, out_dir, cfg.xscale)
    print(format_table(result))
    print(f"wrote {', '.join(str(p) for p in [*paths.values(), *figures.values()])}", flush=True)
    logger = logger or open_logger(cfg, out_dir, dirs, list(groups), result["baseline"])
    exit_code = 1
    try:
        log_comparison(result, figures, logger)
        exit_code = 0
    finally:
        logger.close(exit_code)
    return result


def warn_about_lengths(groups: dict[str, list[dict]]) -> None:
    """Seeds of one label that end at different steps: the plots draw their mean only as far as
    the shortest, and the tables compare runs of different lengths."""
    for label, reports in groups.items():
        ends = sorted({r["checkpoint_steps"][-1] for r in reports})
        if len(ends) > 1:
            logging.getLogger("grok.compare").warning(
                "the runs labelled %s end at different steps (%s): its mean curves stop at step "
                "%d, where the shortest ends", label, ", ".join(map(str, ends)), ends[0])


def warn_about_repeated_seeds(entries: list[RunEntry]) -> None:
    """Runs of one label with the same seed (say a run and its copy, or the same seed in a sweep
    and in a seed batch) are aggregated as separate seeds: they shrink its std."""
    seen: dict[tuple[str, int], Path] = {}
    for e in entries:
        if e.seed is None:
            continue
        first = seen.setdefault((e.label, e.seed), e.run_dir)
        if first != e.run_dir:
            logging.getLogger("grok.compare").warning(
                "the runs labelled %s include seed %d twice (%s and %s): each counts as a seed "
                "in its mean and std", e.label, e.seed, first, e.run_dir)


def log_comparison(result: dict[str, Any], figures: dict[str, Path], logger: Logger) -> None:
    logger.log_table("compare/runs", RUN_COLUMNS, [[r[c] for c in RUN_COLUMNS]
                                                   for r in result["runs"]])
    columns = list(result["variants"][0])
    logger.log_table("compare/variants", columns, [[v[c] for c in columns]
                                                   for v in result["variants"]])
    for name, path in figures.items():
        logger.log_figure(f"plots/{name}", path)
    summary: dict[str, Any] = {"compare/baseline": result["baseline"]}
    for v in result["variants"]:
        for key in ("t_grok_mean", "t_grok_std", "delay_factor_mean", "delay_factor_std",
                    "n_runs", "n_grokked"):
            summary[f"compare/{v['label']}/{key}"] = v[key]
    logger.summary(summary)


def open_logger(cfg: CompareConfig, out_dir: Path, dirs: list[Path], labels: list[str],
                baseline: str) -> Logger:
    lc = cfg.logger
    config = {"runs": [str(d) for d in dirs], "labels": labels, "baseline": baseline,
              "xscale": cfg.xscale}
    return build_logger(lc.backend, out_dir, project=lc.project, entity=lc.entity, mode=lc.mode,
                        config=config, group="compare", name="compare-" + "-vs-".join(labels),
                        tags=["compare", *lc.tags], job_type="compare")


@hydra.main(version_base="1.3", config_path="pkg://grok.conf", config_name="compare")
def _main(dcfg: DictConfig) -> None:
    configure_logging()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        compare_runs(to_compare_config(dcfg), out_dir)
    except GrokError as exc:
        remove_if_unused(out_dir, made=NEW_FOLDERS)
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        remove_if_unused(out_dir, made=NEW_FOLDERS)
        left = f" ({out_dir} holds an unfinished comparison)" if out_dir.exists() else ""
        print(f"stopped by Ctrl-C before the comparison finished{left}; the analyses it ran on "
              f"runs that had none are kept. To redo it: {_typed_command()}", file=sys.stderr,
              flush=True)
        raise SystemExit(130) from None


def _typed_command() -> str:
    """This command as typed, with the output folder it was given (if any)."""
    overrides = HydraConfig.get().overrides
    run_dir = [o for o in overrides.hydra if o.startswith("hydra.run.dir=")]
    return commands.typed("grok.compare", [*overrides.task, *run_dir])


def main() -> None:
    """`python -m grok.compare`: a mistyped key is refused in one line before Hydra composes."""
    refuse_unknown_override_keys(CompareConfig, "grok.compare")
    _main()


if __name__ == "__main__":
    main()
