"""`hydra/launcher=joblib`: Hydra's joblib launcher, made stoppable by SIGTERM and Ctrl-C (the
launcher class is hydra_plugins.grok_joblib_launcher.joblib_launcher.JoblibLauncher: Hydra takes
plugins only from the hydra_plugins package).

The plugin runs each job in a loky worker process and leaves signals alone. Its parent process
then died at once on SIGTERM (the default action) while the workers, which save their run on the
signal (GracefulStop), stayed behind with nobody to collect them: loky shuts idle workers down
only after 300 s, and their W&B services and loky's resource trackers stayed with them. On Ctrl-C
the parent's KeyboardInterrupt made joblib SIGKILL every worker within a second, whether or not
its job had saved yet. And joblib reacts to the first job that raises (as a stopped job does,
SystemExit(143)) by SIGKILLing every other worker, possibly in the middle of its save.

Here the parent catches SIGTERM and SIGINT, sent to the whole process group (Ctrl-C at a
terminal, `kill -TERM -<pgid>`) or to the parent alone (a scheduler, `kill <pid>`), passes a
SIGTERM on to every worker and waits: each running job saves its resume state and returns
(instead of raising); a job that had not started does not start. Then the parent prints one line
and exits with 128 + the signal, its exit handler (loky's) shuts the idle workers down, their W&B
services end with them, and the same sweep command resumes. A second Ctrl-C at a terminal reaches
the jobs themselves and stops them at once, as it stops a single run (GracefulStop); the parent
still collects them and exits the same way. A repeated signal to the parent alone changes nothing:
the parent cannot tell it from a Ctrl-C that also reached the jobs, and passing on a SIGINT would
then interrupt them a second time, in the middle of closing their runs.

A job that fails (its error printed by main()) stops the sweep the same way: the other running
jobs save and stop, the queued ones do not start, and the sweep exits with 1 naming the failed
job, as a sequential sweep ends at a failed job.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra_plugins.hydra_joblib_launcher import _core
from joblib import Parallel, delayed
from joblib.externals.loky.backend.process import LokyProcess
from joblib.externals.loky.process_executor import TerminatedWorkerError

from grok import commands
from grok.train import preemption

if TYPE_CHECKING:
    from hydra_plugins.grok_joblib_launcher.joblib_launcher import JoblibLauncher

STOP_CODES = {128 + int(s): s for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)}


@dataclass
class _Stopped:
    """What a worker returns instead of raising for a job stopped by a signal (or not started
    after one): joblib would answer a raised SystemExit by killing every other worker. at_once:
    a second Ctrl-C stopped the job without saving; it continues from its last resume state."""
    signum: int
    started: bool
    at_once: bool = False


@dataclass
class _Failed:
    """What a worker returns for a job that exited with an error (main() printed it), for the
    same reason: the other running jobs are then stopped with their state saved, as a sequential
    sweep ends at a failed job."""
    code: int


def _execute_job(idx: int, *args: Any) -> tuple[int, JobReturn | _Stopped | _Failed]:
    """(idx, the plugin's execute_job(*args)), in a worker; the job is not started once a stop
    signal reached this worker, one stopped by a signal (main() saved it and raised
    SystemExit(128 + signal), or StoppedAtOnce after a second Ctrl-C) returns _Stopped, one that
    exited otherwise _Failed."""
    if preemption.noted_signal() is not None:
        return idx, _Stopped(preemption.noted_signal(), started=False)
    try:
        return idx, _core.execute_job(*args)
    except SystemExit as exc:
        signum = STOP_CODES.get(exc.code) if isinstance(exc.code, int) else None
        if signum is None:
            return idx, _Failed(exc.code if isinstance(exc.code, int) else 1)
        preemption.note_stop_signals(received=signum)  # later jobs here do not start
        return idx, _Stopped(signum, started=True,
                             at_once=isinstance(exc, preemption.StoppedAtOnce))


def launch(launcher: JoblibLauncher, job_overrides: Sequence[Sequence[str]],
           initial_job_idx: int) -> Sequence[JobReturn]:
    """hydra_joblib_launcher._core.launch, with _execute_job in the workers and _SweepStop."""
    setup_globals()
    assert launcher.config is not None and launcher.task_function is not None
    assert launcher.hydra_context is not None
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    joblib_cfg = launcher.joblib
    joblib_cfg["backend"] = "loky"  # as the plugin: threads are incompatible with Hydra
    _core.process_joblib_cfg(joblib_cfg)
    _core.log.info("Joblib.Parallel({}) is launching {} jobs".format(
        ",".join(f"{k}={v}" for k, v in joblib_cfg.items()), len(job_overrides)))
    _core.log.info(f"Launching jobs, sweep output dir : {sweep_dir}")
    for idx, overrides in enumerate(job_overrides):
        _core.log.info("\t#{} : {}".format(idx, " ".join(filter_overrides(overrides))))
    singleton_state = Singleton.get_state()

    stop = _SweepStop()
    results: dict[int, JobReturn | _Stopped | _Failed] = {}
    # initializer: a worker notes SIGTERM and SIGINT between jobs (by default it dies of them,
    # and loky answers a dead worker by killing all the others). Unordered results: a job stopped
    # by a signal to its worker alone stops the others at once, not after the jobs before it.
    stop.install()
    try:
        outputs = Parallel(**joblib_cfg, return_as="generator_unordered",
                           initializer=preemption.note_stop_signals)(
            delayed(_execute_job)(idx, initial_job_idx + idx, overrides, launcher.hydra_context,
                                  launcher.config, launcher.task_function, singleton_state)
            for idx, overrides in enumerate(job_overrides))
        try:
            for idx, result in outputs:
                results[idx] = result
                if isinstance(result, _Stopped):
                    stop.stop_workers(result.signum)
                elif isinstance(result, _Failed):
                    stop.signal_workers()
        except TerminatedWorkerError:
            # a worker that had not yet installed its handler (it was starting) died of the
            # SIGTERM passed on to it, and loky ended the others: a stop all the same
            if stop.signum is None and not any(isinstance(r, _Failed) for r in results.values()):
                raise
    finally:
        if stop.signum is None:
            stop.uninstall()
        # else the handlers stay: a repeated SIGTERM or Ctrl-C must not end this process before
        # loky's exit handler has shut the (now idle) workers down, or they would be orphaned
    if len(results) == len(job_overrides) and all(isinstance(r, JobReturn)
                                                  for r in results.values()):
        return [results[i] for i in range(len(job_overrides))]  # type: ignore[misc]
    stopped = [r for r in results.values() if isinstance(r, _Stopped)]
    failed = [initial_job_idx + i for i, r in sorted(results.items()) if isinstance(r, _Failed)]
    saved = sum(r.started and not r.at_once for r in stopped)
    at_once = sum(r.at_once for r in stopped)
    finished = sum(isinstance(r, JobReturn) for r in results.values())
    counts = f"{saved} running job(s) saved their resume state, "
    if at_once:
        counts += f"{at_once} stopped at once (they continue from their last resume state), "
    counts += (f"{finished} finished, "
               f"{len(job_overrides) - finished - saved - at_once - len(failed)} not started")
    again = f"run the same sweep again with {commands.override('hydra.sweep.dir', sweep_dir)}"
    if failed:
        print(f"sweep stopped: job(s) {', '.join(f'#{n}' for n in failed)} failed (the error is "
              f"above); {counts}. Fix it, then {again}", file=sys.stderr, flush=True)
        raise SystemExit(1)
    signum = stop.signum or stopped[0].signum
    print(f"sweep stopped by {signal.Signals(signum).name}: {counts}. To continue: {again}",
          file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


class _SweepStop:
    """In the sweep's parent: SIGTERM and SIGINT are passed on to every worker as SIGTERM (where
    GracefulStop saves the running job and _execute_job skips the queued ones) instead of ending
    this process (SIGINT, as KeyboardInterrupt, made joblib SIGKILL every worker)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is None:
            print(f"{signal.Signals(signum).name} received: the running jobs save their resume "
                  "state and stop, the others do not start (Ctrl-C again to stop them at once)",
                  file=sys.stderr, flush=True)
        self.stop_workers(signum)

    def stop_workers(self, signum: int) -> None:
        """Send SIGTERM to every worker, whatever the signal: after a signal to the whole group,
        again (a worker takes a repeated SIGTERM as one, see GracefulStop, where a second SIGINT
        would stop its job at once, which only a second Ctrl-C at the terminal should do)."""
        if self.signum is None:
            self.signum = signum
        self.signal_workers()

    @staticmethod
    def signal_workers() -> None:
        """SIGTERM to every worker: running jobs save and stop, queued ones do not start."""
        for proc in multiprocessing.active_children():
            if isinstance(proc, LokyProcess) and proc.pid is not None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
