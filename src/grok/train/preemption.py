"""Graceful stop on SIGTERM, SIGINT and SIGUSR2: finish the current step, save, exit.

While a GracefulStop is entered, those signals only set a flag; the trainer checks it at every
step boundary (Trainer.should_stop), saves its resume state and raises TrainingStopped. The entry
point then calls hand_over(): if someone handled the signal before us (under submitit, its handler
for SIGUSR2 checkpoints the job and requeues it), that handler runs now, after the state is safe.
A second SIGINT (Ctrl-C twice) interrupts at once, and so does any stop signal once training is
over (finish_training(): the analyses have no step boundary to wait for).

SLURM sends SIGUSR2 `signal_delay_s` seconds before a submitit job's time limit (and on preemption
when the cluster enables preempt_send_user_signal), SIGTERM when it cancels or preempts a job; a
terminal sends SIGINT on Ctrl-C. Signal handlers can only be installed from the main thread;
elsewhere (a threaded launcher) GracefulStop is inactive and says so.

A joblib sweep's worker runs one job after another (grok.launcher): note_stop_signals() makes it
note a SIGTERM (passed on by the sweep's parent) or a SIGINT (Ctrl-C reaches every process of the
terminal's foreground group) that arrives between its runs instead of dying of it; the runs it
would start after one do not start, and one that is starting stops at its first step boundary.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)

log = logging.getLogger(__name__)

_noted: int | None = None  # a stop signal this process received outside a GracefulStop


def note_stop_signals(received: int | None = None) -> None:
    """From now on, SIGTERM and SIGINT outside a GracefulStop are noted (noted_signal()) instead
    of ending this process; note `received` too. For a joblib worker (grok.launcher): loky answers
    a worker that dies of one (or exits on the KeyboardInterrupt that SIGINT raises while it waits
    for a job) by ending all the other workers."""
    global _noted
    if _noted is None:
        _noted = received
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _note)


def _note(signum: int, frame: FrameType | None) -> None:
    global _noted
    if _noted is None:
        _noted = signum


def noted_signal() -> int | None:
    return _noted


class StoppedAtOnce(SystemExit):
    """The exit of a run that a second Ctrl-C stopped at once, without saving (status 130): a
    joblib sweep's worker tells it from a run that saved its resume state before exiting."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGINT)


class StoppedAfterTraining(BaseException):
    """A stop signal after training finished (during the analyses): there is no step to finish,
    so it interrupts at once. A BaseException, like KeyboardInterrupt, so that no `except
    Exception` on the way (e.g. around reading a checkpoint) mistakes it for a failure."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class GracefulStop:
    """Context manager turning the stop signals into a flag; call the instance to read it."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.signals = signals
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}
        self.active = False
        self.training_done = False

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "none"

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: SIGTERM/SIGINT/SIGUSR2 will not stop this run "
                        "gracefully")
            return self
        for sig in self.signals:
            self.previous[sig] = signal.signal(sig, self._handle)
        self.active = True
        if _noted is not None and self.signum is None:
            self.signum = _noted  # it came while the run was starting: stop at the first step
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)
            self.active = False

    def finish_training(self) -> None:
        """Training is over and saved: from now on a stop signal interrupts at once, and one
        that came during the last step (or while a finished run was reopened), which no step
        boundary will act on any more, stops here."""
        self.training_done = True
        if self.signum is not None:
            raise StoppedAfterTraining(self.signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.training_done:
            if self.signum is not None and signum != signal.SIGINT:
                # already stopping: a repeat (a joblib sweep's parent passes on a SIGTERM that
                # may have reached the whole process group) must not interrupt the cleanup
                return
            self.signum = signum
            raise StoppedAfterTraining(signum)
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: the user does not want to wait
        if self.signum is None:
            self.signum = signum
            print(f"{signal.Signals(signum).name} received: saving the resume state at the end of "
                  "this step, then stopping (Ctrl-C again to stop at once)", file=sys.stderr,
                  flush=True)

    def _previous_handler(self) -> Any:
        handler = self.previous.get(self.signum) if self.signum is not None else None
        if callable(handler) and handler is not signal.default_int_handler:
            return handler
        return None

    @property
    def hands_over(self) -> bool:
        """Whether hand_over() will run someone else's handler (e.g. submitit's requeue)."""
        return self._previous_handler() is not None

    def hand_over(self) -> None:
        """Run the handler the received signal had before ours, if it was a Python function
        (submitit's requeue handler, which exits the process). Python's own SIGINT handler
        (KeyboardInterrupt) and the default and ignore actions are not run: the caller exits."""
        handler = self._previous_handler()
        if handler is not None:
            handler(self.signum, None)
