"""Real training processes killed (kill -9, also inside a checkpoint write) or signalled, then
restarted with the same command: the finished run must equal an uninterrupted one bit for bit."""

import json
import os
import random
import signal
import subprocess
import time

import pytest

from grok.main import run
from grok.tracking import NullLogger
from grok.train import checkpoint as ckpt
from tests import faults
from tests.conftest import compose_config
from tests.wandb_records import offline_runs, read_records, run_record

# Small but not tiny: the resume state is ~1 MB, so a write takes a few milliseconds.
TRAIN = ("task.p=17", "steps=60", "model.d_model=64", "model.d_mlp=256", "train.eval_every=5",
         "train.checkpoints=12", "train.resume_every=10", "device=cpu")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (in this process: the logger does not change what is trained)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run(compose_config(*TRAIN, "logger=none"), run_dir, logger=NullLogger())
    return run_dir


@pytest.fixture(scope="module")
def baseline_reference(tmp_path_factory):
    """The uninterrupted run of the v1_baseline preset (its own split fraction) with TRAIN."""
    run_dir = tmp_path_factory.mktemp("baseline_reference") / "run"
    run(compose_config("experiment=v1_baseline", *TRAIN, "logger=none"), run_dir,
        logger=NullLogger())
    return run_dir


def test_kill_9_anywhere_then_the_same_command_finishes_the_same_run(tmp_path, reference):
    run_dir = tmp_path / "run"
    command = (*TRAIN, "logger=none", f"hydra.run.dir={run_dir}")

    # 1. killed in the middle of training, after some rows past a saved state
    proc = faults.start(*command, cwd=tmp_path)
    assert faults.wait_until(lambda: max(faults.metrics_steps(run_dir), default=0) >= 15, proc)
    faults.kill_group(proc)
    assert ckpt.load_resume_state(run_dir)["step"] < 60

    # 2. killed inside a write of the resume state (last.pt's temporary file is incomplete)
    proc = faults.start(*command, cwd=tmp_path)
    left = faults.kill_during_write(proc, run_dir / "checkpoints", ".last.pt.")
    assert left is not None and left.exists(), faults.output(proc)

    # 3. a damaged last.pt (a disk error, a bad copy): the run falls back to previous.pt
    path = ckpt.resume_path(run_dir)
    path.write_bytes(path.read_bytes()[:1000])

    out = faults.finish(faults.start(*command, cwd=tmp_path))
    assert "last.pt is damaged" in out and "resuming from previous.pt" in out
    assert "done: train acc" in out
    faults.assert_same_training(run_dir, reference)


def merged_history(run_dir):
    """The W&B history that syncing the offline fragments in order gives: rows keyed by W&B's
    `_step`, a later fragment's row replacing an earlier one with the same `_step`."""
    rows, run_ids = {}, set()
    fragments = []
    for folder in offline_runs(run_dir):
        records = read_records(folder)
        fragments.append((run_record(records)["start_time"], records))
    for _, records in sorted(fragments, key=lambda f: f[0]):
        run_ids.add(run_record(records)["run_id"])
        for r in records:
            if r["type"] == "history":
                item = r["history"]["item"]
                rows[item["_step"]] = item
    return [rows[k] for k in sorted(rows)], run_ids, len(fragments)


def test_sigterm_and_ctrl_c_stop_cleanly_and_resume_into_the_same_wandb_run(tmp_path,
                                                                          baseline_reference):
    """With a preset, rerunning the very same command continues the run: its directory depends
    only on the preset and the seed."""
    run_dir = tmp_path / "outputs" / "v1_baseline" / "s0"
    command = ("experiment=v1_baseline", *TRAIN, "logger=wandb")
    stops = []
    for sig, to_group, exit_code in ((signal.SIGTERM, False, 143), (signal.SIGINT, True, 130)):
        target = max(faults.metrics_steps(run_dir), default=0) + 12
        proc = faults.start(*command, cwd=tmp_path)
        assert faults.wait_until(lambda t=target: max(faults.metrics_steps(run_dir),
                                                      default=0) >= t, proc)
        if to_group:  # Ctrl-C in a terminal signals the whole group, W&B's service included
            faults.kill_group(proc, sig)
        else:
            proc.send_signal(sig)
            proc.wait(timeout=120)
        out = faults.output(proc)
        assert proc.returncode == exit_code, out
        assert f"stopped by {sig.name} after step" in out and "Traceback" not in out
        assert "To continue: python -m grok.main experiment=v1_baseline task.p=17" in out
        step = int(out.split("after step ")[1].split(";")[0])
        # Saved at the step where it stopped, not at the last resume_every multiple.
        assert ckpt.load_resume_state(run_dir)["step"] == step >= target
        stops.append(step)
    faults.finish(faults.start(*command, cwd=tmp_path))
    faults.assert_same_training(run_dir, baseline_reference)

    history, run_ids, n_fragments = merged_history(run_dir)
    assert n_fragments == 3 and len(run_ids) == 1
    assert run_ids == {ckpt.load_resume_state(run_dir)["wandb_run_id"]}
    logged = [(h["step"], h["test/acc"], h["train/loss"]) for h in history if "test/acc" in h]
    rows = faults.read_rows(baseline_reference)
    assert logged == [(r["step"], r["test/acc"], r["train/loss"]) for r in rows]


def test_a_second_ctrl_c_stops_a_run_at_once_with_one_line(tmp_path):
    """Ctrl-C twice: the run stops at once without saving (exit 130), says so in one line with the
    command that continues it (no traceback), keeps its .hydra record, and that command resumes
    from the last periodic resume state. The model is large enough that the save after the first
    Ctrl-C takes a while, so that the second one comes before it is done."""
    run_dir = tmp_path / "run"
    command = ("task.p=11", "steps=60", "model.d_model=512", "model.d_mlp=2048",
               "train.eval_every=5", "train.checkpoints=2", "train.resume_every=20",
               "analysis=none", "logger=none", "device=cpu", f"hydra.run.dir={run_dir}")
    proc = faults.start(*command, cwd=tmp_path)
    assert faults.wait_until(lambda: max(faults.metrics_steps(run_dir), default=0) >= 25, proc)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at a terminal signals the whole group
    assert faults.wait_until(lambda: "SIGINT received: saving" in faults.output(proc), proc)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130, faults.output(proc)
    out = faults.output(proc)
    assert "Traceback" not in out and "stopped by SIGINT after step" not in out, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("stopped at once by Ctrl-C: the steps since the last resume state are "
                           "lost. To continue: python -m grok.main task.p=11"), out
    assert ckpt.load_resume_state(run_dir)["step"] in (20, 40)  # a periodic state: none at the stop
    record = run_dir / ".hydra"
    assert (record / "config.yaml").read_text() == (record / "accepted" / "config.yaml").read_text()

    out = faults.finish(faults.start(*command, cwd=tmp_path))
    assert "resuming at step" in out and "done: train acc" in out


@pytest.mark.slow
def test_kill_9_at_random_moments_many_times(tmp_path, reference):
    """Up to 15 kills: at moments drawn uniformly over the first quarter of an uninterrupted
    process's lifetime (startup, training, evaluation and writes are all hit, and a run needs
    several attempts), or inside the next weights-only or resume-state write; then the same
    command runs to the end and must equal the reference."""
    rng = random.Random(5)
    timed = tmp_path / "timed"
    began = time.monotonic()
    faults.finish(faults.start(*TRAIN, "logger=none", f"hydra.run.dir={timed}", cwd=tmp_path))
    duration = time.monotonic() - began

    run_dir = tmp_path / "run"
    command = (*TRAIN, "logger=none", f"hydra.run.dir={run_dir}")
    outcomes = []
    for _ in range(15):
        proc = faults.start(*command, cwd=tmp_path)
        mode = rng.choice(["random", "random", "weights write", "resume write"])
        left = None
        if mode == "random":
            try:
                proc.wait(timeout=rng.uniform(0, duration / 4))
            except subprocess.TimeoutExpired:
                faults.kill_group(proc)
        else:
            prefix = ".step_" if mode == "weights write" else ".last.pt."
            left = faults.kill_during_write(proc, run_dir / "checkpoints", prefix)
            if left is None:
                proc.wait()
        state = ckpt.load_resume_state(run_dir) if ckpt.has_resume_state(run_dir) else None
        outcomes.append({"mode": mode, "exit": proc.returncode, "left": left and left.name,
                         "resume_step": state and state["step"]})
        if proc.returncode == 0:
            break
    print(json.dumps(outcomes, indent=1))
    killed = [o for o in outcomes if o["exit"] == -signal.SIGKILL]
    assert len(killed) >= 10, outcomes
    assert any(o["left"] and o["left"].startswith(".last.pt.") for o in killed), outcomes
    assert any(o["left"] and o["left"].startswith(".step_") for o in killed), outcomes
    if outcomes[-1]["exit"] != 0:
        faults.finish(faults.start(*command, cwd=tmp_path))
    faults.assert_same_training(run_dir, reference)
    faults.assert_same_training(timed, reference)


@pytest.mark.slow
def test_the_same_command_started_twice_is_refused_while_the_first_trains(tmp_path):
    run_dir = tmp_path / "run"
    command = (*TRAIN, "steps=2000", "logger=none", f"hydra.run.dir={run_dir}")
    first = faults.start(*command, cwd=tmp_path)
    try:
        assert faults.wait_until(lambda: bool(faults.metrics_steps(run_dir)), first)
        second = faults.start(*command, cwd=tmp_path)
        assert second.wait(timeout=300) == 1
        out = faults.output(second)
        assert f"is in use by another training process (pid {first.pid})" in out, out
        assert "Traceback" not in out and first.poll() is None
    finally:
        faults.kill_group(first)
