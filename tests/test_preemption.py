"""SIGTERM, SIGINT and SIGUSR2 stop training at a step boundary with the state saved."""

import os
import signal

import pytest
import torch

from grok.tracking import InMemoryLogger
from grok.train import checkpoint as ckpt
from grok.train.preemption import GracefulStop
from grok.train.trainer import TrainingStopped
from tests.conftest import tiny_config
from tests.test_trainer import make_trainer, without_time


class SignalAt(InMemoryLogger):
    """Sends `sig` to this very process while logging the row of `step`, i.e. in the middle of
    a step boundary, as a real signal would arrive at any moment."""

    def __init__(self, sig, step):
        super().__init__()
        self.sig, self.at = sig, step

    def log(self, metrics, step):
        super().log(metrics, step)
        if step == self.at:
            os.kill(os.getpid(), self.sig)


CFG = ("steps=40", "train.resume_every=100", "train.eval_every=5")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run: (metric rows, final weights)."""
    trainer = make_trainer(tiny_config(*CFG), tmp_path_factory.mktemp("straight"))
    return trainer.fit(), trainer.model.state_dict()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR2],
                         ids=lambda s: s.name)
def test_signal_stops_at_the_step_boundary_and_the_run_continues_exactly(tmp_path, sig, straight):
    cfg = tiny_config(*CFG)
    rows_straight, weights = straight
    before = signal.getsignal(sig)
    trainer = make_trainer(cfg, tmp_path / "b", SignalAt(sig, 15))
    with GracefulStop() as stop:
        trainer.should_stop = stop
        with pytest.raises(TrainingStopped) as err:
            trainer.fit()
    assert stop.signum == sig and err.value.step == 15
    assert signal.getsignal(sig) is before  # handlers restored on exit
    # resume_every=100: this state exists only because of the signal
    assert ckpt.load_resume_state(tmp_path / "b")["step"] == 15

    resumed = make_trainer(cfg, tmp_path / "b")
    rows = resumed.fit(ckpt.load_resume_state(tmp_path / "b"))
    assert without_time(rows) == without_time(rows_straight)
    for name, q in resumed.model.state_dict().items():
        assert torch.equal(weights[name], q), name


def test_hand_over_runs_the_previous_python_handler_only():
    seen = []
    old = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        with GracefulStop() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.requested and seen == []  # ours caught it, the old one did not run
        assert stop.hands_over
        stop.hand_over()  # e.g. submitit's checkpoint-and-requeue handler
        assert seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, old)

    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
    assert not stop.hands_over
    stop.hand_over()  # Python's default SIGINT handler would raise KeyboardInterrupt: not run
    assert stop.signal_name == "SIGINT"


def test_second_ctrl_c_interrupts_at_once():
    with pytest.raises(KeyboardInterrupt), GracefulStop():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_during_the_analysis_interrupts_at_once(tmp_path, monkeypatch, sig):
    """Training is saved by then and an analysis has no step boundary: the signal must not be
    acknowledged and then ignored until the analysis ends."""
    from grok import main as main_module
    from grok.main import run
    from grok.train.preemption import StoppedAfterTraining

    analysed = []

    def signalled_analysis(*args, **kwargs):
        os.kill(os.getpid(), sig)
        analysed.append("went on")  # must not be reached
        return {}

    monkeypatch.setattr(main_module, "run_analysis", signalled_analysis)
    logger = InMemoryLogger()
    with pytest.raises(StoppedAfterTraining) as stopped, GracefulStop() as stop:
        run(tiny_config(*CFG), tmp_path, logger=logger, stop=stop)
    assert stopped.value.signum == sig and not analysed
    assert ckpt.load_resume_state(tmp_path)["step"] == 40  # training finished and was saved
    assert logger.closed


def test_a_signal_during_the_last_step_stops_before_the_analysis(tmp_path, monkeypatch):
    """No step boundary follows the last step: the signal must not be acknowledged there and
    then ignored through the whole analysis (exit 0 under a scheduler's stop)."""
    from grok import main as main_module
    from grok.main import run
    from grok.train.preemption import StoppedAfterTraining

    analysed = []
    monkeypatch.setattr(main_module, "run_analysis", lambda *a, **k: analysed.append(1) or {})
    with pytest.raises(StoppedAfterTraining) as stopped, GracefulStop() as stop:
        run(tiny_config(*CFG), tmp_path, logger=SignalAt(signal.SIGTERM, 40), stop=stop)
    assert stopped.value.signum == signal.SIGTERM and not analysed
    assert ckpt.load_resume_state(tmp_path)["step"] == 40


def test_a_repeated_sigterm_after_the_analysis_stopped_is_ignored():
    """A joblib sweep's parent passes on a SIGTERM that may have reached the whole process group:
    the repeat must not interrupt the cleanup of a run the first one stopped. Ctrl-C still does."""
    from grok.train.preemption import StoppedAfterTraining

    with GracefulStop() as stop:
        stop.finish_training()
        with pytest.raises(StoppedAfterTraining):
            os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # ignored
        with pytest.raises(StoppedAfterTraining):
            os.kill(os.getpid(), signal.SIGINT)


def test_a_worker_notes_sigterm_between_runs_and_its_next_run_stops_at_once(monkeypatch):
    """grok.launcher: in a joblib worker, a SIGTERM outside a run is noted instead of killing
    the process, and a run that was starting takes it over (it stops at its first step)."""
    from grok.train import preemption

    monkeypatch.setattr(preemption, "_noted", None)
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        preemption.note_stop_signals()
        assert preemption.noted_signal() is None
        with GracefulStop() as stop:
            assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)  # between runs: noted, and we are still here
        assert preemption.noted_signal() == signal.SIGTERM
        with GracefulStop() as stop:
            assert stop.requested and stop.signal_name == "SIGTERM"
    finally:  # both handlers: a noted SIGINT would leave pytest deaf to Ctrl-C
        for sig, handler in old.items():
            signal.signal(sig, handler)
