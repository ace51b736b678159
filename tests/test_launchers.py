"""Sweeps through real launchers: submitit (local, with jobs preempted and requeued), joblib, and
the seeds x splits preset end to end, interrupted and rerun until complete."""

import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from grok.main import run
from grok.tracking import NullLogger
from grok.train import checkpoint as ckpt
from tests import faults
from tests.conftest import compose_config, no_keyboard_interrupt, run_cli
from tests.wandb_records import offline_runs, read_records, run_record

SMALL = ("task.p=11", "steps=200", "train.eval_every=10", "train.checkpoints=10",
         "train.resume_every=50", "device=cpu")


def job_processes(marker: str) -> list[int]:
    """PIDs of submitit job processes (`python -m submitit.core._submit <folder>`) whose folder
    contains `marker`: only this test's jobs, never another process on the machine."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [c.decode(errors="replace") for c in cmd]
        if "submitit.core._submit" in args and any(marker in a for a in args):
            pids.append(int(entry.name))
    return pids


def wandb_run(job_dir):
    """(run ids of all fragments, run group, number of fragments) of a job's offline W&B run."""
    metas = [run_record(read_records(f)) for f in offline_runs(job_dir)]
    return {m["run_id"] for m in metas}, {m["run_group"] for m in metas}, len(metas)


@pytest.mark.slow
def test_submitit_local_sweep_survives_preemption_of_every_job(tmp_path):
    """Two jobs under real submitit controllers. Each job process gets SIGUSR2 (what SLURM sends
    before a time limit or on preemption) mid-training: it saves, submitit requeues it, the new
    process resumes in the same run directory and the same W&B run, and the sweep completes
    with results identical to uninterrupted runs."""
    sweep = tmp_path / "sweep"
    proc = faults.start("-m", "hydra/launcher=submitit_local", "seed=0,1", *SMALL,
                        f"hydra.sweep.dir={sweep}", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    jobs = [sweep / "0", sweep / "1"]
    assert faults.wait_until(lambda: all(max(faults.metrics_steps(j), default=0) >= 30
                                         for j in jobs), proc, timeout=600)
    pids = job_processes(str(sweep))
    assert len(pids) == 2, pids
    for pid in pids:
        os.kill(pid, signal.SIGUSR2)
    assert proc.wait(timeout=900) == 0, faults.output(proc)

    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    requeued = [line for line in logs.splitlines() if line.startswith("submitit INFO")
                and "Requeued job" in line]  # submitit logs each message twice; count one form
    assert len(requeued) == 2, logs
    assert logs.count("stopped by SIGUSR2 after step") == 2
    assert "submitit takes over: it requeues the job" in logs
    run_ids = set()
    threads = torch.get_num_threads()
    for seed, job in enumerate(jobs):
        reference = tmp_path / f"reference{seed}"
        torch.set_num_threads(1)  # as the jobs (OMP_NUM_THREADS=1): float sums depend on it
        try:
            run(compose_config(*SMALL, f"seed={seed}", "logger=none"), reference,
                logger=NullLogger())
        finally:
            torch.set_num_threads(threads)
        faults.assert_same_training(job, reference)
        assert (job / "plots" / "curves.png").is_file()
        ids, groups, n_fragments = wandb_run(job)
        assert n_fragments == 2 and len(ids) == 1, (ids, n_fragments)  # one run, resumed once
        run_ids |= ids
    assert len(run_ids) == 2


@pytest.mark.slow
def test_joblib_sweep_runs_jobs_in_parallel_with_one_thread_each(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1",
                     *SMALL, f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    for seed in (0, 1):
        job = sweep / str(seed)
        assert faults.read_rows(job)[-1]["step"] == 200
        [fragment] = offline_runs(job)
        meta = run_record(read_records(fragment))
        derived = meta["config"]["update"]["derived"]
        assert meta["config"]["update"]["seed"] == seed
        # joblib gives each of the 2 workers cores // 2 threads
        assert derived["torch_threads"] == max(1, (os.cpu_count() or 1) // 2)


def processes_of(pgid: int) -> set[int]:
    """PIDs in process group `pgid` and their children (a W&B service starts its own session)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = (int(fields[1]), int(fields[2]))  # ppid, pgid
    group = {pid for pid, (_, g) in parents.items() if g == pgid}
    return group | {pid for pid, (ppid, _) in parents.items() if ppid in group}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_joblib_sweeps_parent_passes_ctrl_c_on_instead_of_raising(monkeypatch):
    """grok.launcher: in the parent, SIGINT (once or again) is passed on to the workers (as
    SIGTERM) and raises no KeyboardInterrupt, at which joblib would SIGKILL every worker."""
    from grok import launcher

    passed_on = []
    monkeypatch.setattr(launcher._SweepStop, "signal_workers",
                        staticmethod(lambda: passed_on.append(True)))
    stop = launcher._SweepStop()
    stop.install()
    try:
        with no_keyboard_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.uninstall()
    assert stop.signum == signal.SIGINT and len(passed_on) == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_joblib_job_stopped_at_once_is_returned_and_its_worker_starts_no_other(monkeypatch):
    """A second Ctrl-C stops a job at once (main() raises StoppedAtOnce): its worker returns
    that instead of raising it (joblib would SIGKILL the other workers), starts no further job,
    and notes a later Ctrl-C between jobs instead of raising it."""
    from grok import launcher
    from grok.train import preemption

    def interrupted_job(*args):
        raise preemption.StoppedAtOnce()

    monkeypatch.setattr(launcher._core, "execute_job", interrupted_job)
    monkeypatch.setattr(preemption, "_noted", None)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with no_keyboard_interrupt():
            assert launcher._execute_job(0) == (
                0, launcher._Stopped(signal.SIGINT, started=True, at_once=True))
            assert launcher._execute_job(1) == (
                1, launcher._Stopped(signal.SIGINT, started=False))
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def stop_sweep(proc, training, send) -> int:
    """Once training() holds, send(proc) the stop signal(s); return the sweep's exit code, once
    every process it had (workers, their W&B services, loky's trackers) is gone. A failed test
    leaves nothing behind either."""
    started: set[int] = set()
    try:
        assert faults.wait_until(training, proc, timeout=600)
        started = processes_of(proc.pid)
        assert len(started) >= 5, started  # parent, 2 workers, 2 W&B services (+ trackers)
        send(proc)
        code = proc.wait(timeout=120)
        deadline = time.monotonic() + 10
        while (survivors := {p for p in started | processes_of(proc.pid) if alive(p)}) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not survivors, faults.output(proc)
        return code
    finally:
        for pid in started | processes_of(proc.pid):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.parametrize("to_group", [True, False], ids=["group", "parent"])
def test_a_stop_signal_stops_a_joblib_sweep_and_leaves_no_process(tmp_path, sig, to_group):
    """SIGTERM or SIGINT to the process group (Ctrl-C at a terminal, `kill -TERM -<pgid>`) or to
    the parent alone (a scheduler, `kill <pid>`): the running jobs save their resume state, the
    queued one does not start, the parent exits with 128 + the signal and one line, no worker
    (nor its W&B service) is left behind, and the same command finishes the sweep."""
    sweep = tmp_path / "sweep"
    command = ("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2",
               "task.p=11", "steps=600", "train.eval_every=10", "train.checkpoints=10",
               "train.resume_every=500", "device=cpu", f"hydra.sweep.dir={sweep}")
    proc = faults.start(*command, cwd=tmp_path)
    jobs = [sweep / "0", sweep / "1"]
    send = (lambda p: os.killpg(p.pid, sig)) if to_group else (lambda p: p.send_signal(sig))
    assert stop_sweep(proc, lambda: all(max(faults.metrics_steps(j), default=0) >= 20
                                        for j in jobs), send) == 128 + sig, faults.output(proc)
    out = faults.output(proc)
    assert "Traceback" not in out, out
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(rf"sweep stopped by {sig.name}: 2 running job\(s\) saved their resume "
                        r"state, 0 finished, 1 not started\. To continue: run the same sweep "
                        rf"again with hydra.sweep.dir={re.escape(str(sweep))}", last), out
    # a job takes the signal that reached it first: the parent passes on SIGTERM
    assert out.count(f"stopped by {(sig if to_group else signal.SIGTERM).name} after step") == 2
    steps = [ckpt.load_resume_state(j)["step"] for j in jobs]
    assert all(20 <= s < 600 for s in steps), steps  # resume_every=500: saved by the stop
    assert not (sweep / "2").exists()  # the queued job did not start

    out = faults.finish(faults.start(*command, cwd=tmp_path), timeout=600)
    assert sorted(re.findall(r"resuming at step (\d+)", out)) == sorted(str(s) for s in steps)
    assert out.count("done: train acc") == 3
    for seed in range(3):
        assert faults.read_rows(sweep / str(seed))[-1]["step"] == 600


@pytest.mark.slow
def test_a_second_ctrl_c_stops_the_jobs_of_a_joblib_sweep_at_once(tmp_path):
    """Ctrl-C twice at a terminal (SIGINT to the process group, again once every job took the
    first): as in a single run, the jobs stop at once without saving, here with neither a
    traceback nor a process left behind; the sweep exits with 130 and the same command goes on
    from each job's last periodic resume state. The model is large enough that the step and the
    save after the first Ctrl-C take a while, and the jobs are past their periodic save at step
    20, so that the second Ctrl-C comes before they are done."""
    sweep = tmp_path / "sweep"
    command = ("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2",
               "task.p=11", "steps=60", "model.d_model=512", "model.d_mlp=2048",
               "train.eval_every=5", "train.checkpoints=2", "train.resume_every=20",
               "analysis=none", "device=cpu", f"hydra.sweep.dir={sweep}")
    proc = faults.start(*command, cwd=tmp_path)
    jobs = [sweep / "0", sweep / "1"]

    def ctrl_c_twice(p):
        os.killpg(p.pid, signal.SIGINT)
        # both jobs took the first one (two SIGINTs still pending in a process make one)
        assert faults.wait_until(lambda: faults.output(p).count(
            "SIGINT received: saving the resume state") == 2, p, timeout=60)
        os.killpg(p.pid, signal.SIGINT)

    assert stop_sweep(proc, lambda: all(max(faults.metrics_steps(j), default=0) >= 25
                                        for j in jobs), ctrl_c_twice) == 130, faults.output(proc)
    out = faults.output(proc)
    assert "Traceback" not in out and "stopped by SIGINT after step" not in out, out
    assert re.fullmatch(r"sweep stopped by SIGINT: 0 running job\(s\) saved their resume state, "
                        r"2 stopped at once \(they continue from their last resume state\), 0 "
                        r"finished, 1 not started\. To continue: run the same sweep again with "
                        rf"hydra.sweep.dir={re.escape(str(sweep))}",
                        out.strip().splitlines()[-1]), out
    steps = [ckpt.load_resume_state(j)["step"] for j in jobs]
    assert all(s % 20 == 0 for s in steps), steps  # periodic states only

    out = faults.finish(faults.start(*command, cwd=tmp_path), timeout=600)
    assert sorted(re.findall(r"resuming at step (\d+)", out)) == sorted(str(s) for s in steps)
    assert out.count("done: train acc") == 3


@pytest.mark.slow
def test_a_failed_job_stops_a_joblib_sweep_with_the_running_jobs_saved(tmp_path):
    """A job refused mid-sweep (its folder holds another seed's run): joblib would SIGKILL the
    other running jobs; they save and stop instead, the queued one does not start, exit 1."""
    sweep = tmp_path / "sweep"
    tiny = ("task.p=11", "train.eval_every=10", "train.resume_every=500", "device=cpu",
            "logger=none", "analysis=none")
    assert faults.finish(faults.start("seed=5", "steps=10", *tiny,
                                      f"hydra.run.dir={sweep / '1'}", cwd=tmp_path))
    proc = faults.start("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2",
                        "steps=3000", *tiny, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    try:
        assert proc.wait(timeout=300) == 1, faults.output(proc)
    finally:
        faults.kill_group(proc)
    out = faults.output(proc)
    assert "holds a run with seed=5" in out and "Traceback" not in out, out
    assert re.fullmatch(r"sweep stopped: job\(s\) #1 failed \(the error is above\); 1 running "
                        r"job\(s\) saved their resume state, 0 finished, 1 not started\. Fix it, "
                        r"then run the same sweep again with hydra\.sweep\.dir=.*",
                        out.strip().splitlines()[-1]), out
    assert ckpt.load_resume_state(sweep / "0")["step"] < 3000
    assert not (sweep / "2").exists()


@pytest.mark.slow
def test_preset_sweep_end_to_end_comes_back_complete_after_an_interruption(tmp_path):
    """experiment=sweep_seeds_splits (3 seeds x 3 splits, no -m needed), stopped by SIGTERM in
    the middle, then the same command again: every job finishes, each in the directory named
    after its overrides, with its own W&B run, seeds of one split grouped together."""
    sweep = tmp_path / "sweep"
    command = ("experiment=sweep_seeds_splits", "task.p=11", "steps=60", "train.eval_every=10",
               "train.checkpoints=6", "train.resume_every=20", f"hydra.sweep.dir={sweep}")
    proc = faults.start(*command, cwd=tmp_path)

    def fourth_job_training():
        started = list(sweep.glob("seed=*"))
        return len(started) >= 4 and any(0 < max(faults.metrics_steps(d), default=0) < 60
                                         for d in started)

    assert faults.wait_until(fourth_job_training, proc, timeout=900)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 143, faults.output(proc)
    assert "run the same sweep again with hydra.sweep.dir=" in faults.output(proc)
    unfinished = [d for d in sweep.glob("seed=*")
                  if not faults.metrics_steps(d) or max(faults.metrics_steps(d)) < 60]
    assert unfinished

    out = faults.finish(faults.start(*command, cwd=tmp_path), timeout=900)
    assert out.count("done: train acc") == 9
    jobs = sorted(d.name for d in sweep.iterdir() if d.is_dir())
    # named after what is trained: the cadence overrides (train.*) stay out of the names
    assert jobs == sorted(f"seed={s},split={p},task.p=11" for s in range(3)
                          for p in ("conflict", "random", "structured"))
    groups = {}
    for name in jobs:
        job = sweep / name
        rows = faults.read_rows(job)
        assert rows[-1]["step"] == 60 and [r["step"] for r in rows] == sorted(
            {r["step"] for r in rows})
        ids, [group], _ = wandb_run(job)
        assert len(ids) == 1
        split = name.split("split=")[1].split(",")[0]
        groups.setdefault(split, set()).add(group)
    assert all(len(g) == 1 for g in groups.values()) and len(set().union(*groups.values())) == 3
