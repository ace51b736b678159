"""The sweeper of `python -m grok.main` (conf/config.yaml selects it: hydra/sweeper=grok).

Hydra's basic sweeper composes each batch of jobs before launching it, but grok's value checks
(grok.config.to_config) ran only inside each job, so a bad value stopped a sweep after the jobs
before it had trained. This sweeper computes the same jobs in the same order
(BasicSweeper.split_arguments), composes each job's config as its launcher will and runs it
through to_config, all before the first job starts: a bad job refuses the whole sweep, one line
per bad job, before any folder is written. A job whose folder exists and holds files but no run
(grok.assemble.check_output_folder) is a bad job too, and so is one whose device this machine
lacks, or that asks for train.compile=true without a C++ compiler: `device=cpu,cuda` trained its
first job before the second one failed.
"""

# No `from __future__ import annotations`: Hydra imports plugin modules without entering them in
# sys.modules first, and @dataclass then fails on string annotations.
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import filter_overrides
from hydra.errors import HydraException
from omegaconf import open_dict, read_write
from omegaconf.errors import OmegaConfBaseException


@dataclass
class GrokSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.grok_sweeper.grok_sweeper.GrokSweeper"


class GrokSweeper(BasicSweeper):
    """BasicSweeper (same jobs, numbering, batches, launchers) that refuses a sweep with a bad
    job before starting any."""

    def sweep(self, arguments: list[str]) -> Any:
        assert self.hydra_context is not None
        # The jobs as BasicSweeper.sweep computes them: hydra.sweeper.params, then the command line.
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        jobs = [job for batch in self.split_arguments(overrides, self.max_batch_size)
                for job in batch]
        try:
            errors = [f"error: job #{num} ({' '.join(filter_overrides(job))}): {problem}"
                      for num, job in enumerate(jobs) if (problem := self.job_problem(num, job))]
        except KeyboardInterrupt:  # Ctrl-C while a long sweep is being checked: nothing started
            print("stopped by Ctrl-C while the sweep's jobs were being checked: none started",
                  file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        if errors:
            print("\n".join(errors), file=sys.stderr, flush=True)
            raise SystemExit(1)
        return super().sweep(arguments)

    def job_problem(self, num: int, job: Sequence[str]) -> str | None:
        """What is wrong with the config of job `num` with these overrides (one line), or None."""
        # imported here: Hydra imports every plugin module at startup, in every grok command
        from grok.assemble import check_output_folder
        from grok.config import to_config
        from grok.device import check_compile_support, resolve_device
        from grok.errors import GrokError

        assert self.hydra_context is not None and self.config is not None
        hydra_config = HydraConfig.instance()
        sweep_level = hydra_config.cfg
        try:
            # what the launcher composes (BasicLauncher.launch) and hands to the task (run_job),
            # with the job's own HydraConfig, which ${hydra:job.num} and the like resolve against
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(job))
            with open_dict(cfg):
                cfg.hydra.job.id = num
                cfg.hydra.job.num = num
            hydra_config.set_config(cfg)
            job_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
            with read_write(cfg), open_dict(cfg):
                del cfg["hydra"]
            checked = to_config(cfg)
            device = resolve_device(checked.device)
            if checked.train.compile is True and not checked.seeds:  # a seed batch runs eagerly
                check_compile_support(device)
            check_output_folder(job_dir, "hydra.sweep.dir")
        except (GrokError, HydraException, OmegaConfBaseException) as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else None
            return ": ".join(str(e).strip().splitlines()[0] for e in (exc, cause) if e)
        finally:
            hydra_config.cfg = sweep_level
        return None

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """sweep() composed and checked every job already; composing them again would only cost
        time (~0.1 s a job on 2 CPU cores)."""
