import json

import pytest
import torch
import yaml

from grok.main import run
from grok.tracking import InMemoryLogger
from grok.train import checkpoint as ckpt
from grok.train.summary import summarize, summary_line
from tests.conftest import run_cli, tiny_config
from tests.wandb_records import history, offline_runs, read_records, run_record


@pytest.mark.parametrize("split", ["split=random", "split=structured",
                                   "split=structured split.pattern=stripe", "split=conflict"])
def test_run_writes_a_complete_run_directory(tmp_path, split):
    logger = InMemoryLogger()
    summary = run(tiny_config(*split.split()), tmp_path, logger=logger)
    assert (tmp_path / "split.pt").is_file() and (tmp_path / "plots" / "curves.png").is_file()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 40 == summary["final/step"]
    assert summary["final/test_acc"] == rows[-1]["test/acc"]
    assert ckpt.list_checkpoints(tmp_path)[-1][0] == 40
    assert logger.closed and logger.figures[0][0] == "plots/curves"
    assert {step for _, _, step in logger.figures} == {40}  # every figure at the last step
    assert logger.summary_values["time/wall_s"] > 0


def test_same_seed_same_metrics_on_cpu(tmp_path):
    a = run(tiny_config(), tmp_path / "a", logger=InMemoryLogger())
    b = run(tiny_config(), tmp_path / "b", logger=InMemoryLogger())
    c = run(tiny_config("seed=1"), tmp_path / "c", logger=InMemoryLogger())
    drop = lambda s: {k: v for k, v in s.items() if not k.startswith("time/")}  # noqa: E731
    assert drop(a) == drop(b) and drop(a) != drop(c)


def test_cli_run_logs_an_offline_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("task.p=11", "steps=30", "train.eval_every=10", "seed=3",
                     f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "done: train acc" in result.stdout and "test acc >= 0.99 " in result.stdout
    [wb] = offline_runs(run_dir)
    records = read_records(wb)
    meta = run_record(records)
    assert meta["display_name"].endswith("-s3") and meta["run_group"].startswith("add11-random0.8")
    assert "add" in meta["tags"]
    config = meta["config"]["update"]
    assert config["task"]["p"] == 11 and config["seed"] == 3
    logged = [h for h in history(records) if "test/acc" in h]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in logged] == [m["step"] for m in metrics]
    assert [h["test/acc"] for h in logged] == [m["test/acc"] for m in metrics]


def test_multirun_gives_each_job_its_own_run_directory_and_wandb_run(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "seed=0,1", "task.p=13", "steps=200", f"hydra.sweep.dir={sweep}",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_ids, groups = set(), set()
    for job in ("0", "1"):
        job_dir = sweep / job
        rows = (job_dir / "metrics.jsonl").read_text().splitlines()
        assert json.loads(rows[-1])["step"] == 200
        assert (job_dir / "plots" / "curves.png").is_file()
        [wb] = offline_runs(job_dir)
        meta = run_record(read_records(wb))
        assert meta["config"]["update"]["seed"] == int(job)
        run_ids.add(meta["run_id"])
        groups.add(meta["run_group"])
    assert len(run_ids) == 2 and len(groups) == 1  # two runs, grouped as seeds of one variant


def test_cli_resumes_in_the_same_directory_and_refuses_another_config(tmp_path):
    run_dir = tmp_path / "run"
    common = ["task.p=7", "logger=csv", "train.eval_every=10", f"hydra.run.dir={run_dir}"]
    first = run_cli(*common, "steps=20", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "resuming" not in first.stdout
    longer = run_cli(*common, "steps=40", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    assert "resuming at step 20 of 40\n" in longer.stdout
    # p = 7 at 80%: 39 training pairs, fewer than the default batch of 512
    assert "train.batch_size=512 covers all 39 training pairs: every step is full-batch" in (
        longer.stdout)
    again = run_cli(*common, "steps=40", cwd=tmp_path)
    assert "already trained to step 40: redoing its summary and analysis" in again.stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][:3] == [0, 1, 2] and rows[-1]["step"] == 40
    assert torch.load(ckpt.resume_path(run_dir), weights_only=True)["step"] == 40

    refused = run_cli(*common, "steps=40", "optim.lr=0.01", cwd=tmp_path)
    assert refused.returncode == 1
    assert "optim" in refused.stderr and "Traceback" not in refused.stderr
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 0.001  # the run's own record is left as it was

    # fewer steps than the run already has: refused (it reported a stale evaluation as done)
    metrics = (run_dir / "metrics.jsonl").read_text()
    shorter = run_cli(*common, "steps=20", cwd=tmp_path)
    assert shorter.returncode == 1
    assert shorter.stderr.strip().splitlines() == [
        f"error: {run_dir} is already at step 40, past steps=20: rerun with steps=40 or more to "
        f"finish or extend it (python -m grok.analyze run_dir={run_dir} analyses it as it is)"]
    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["steps"] == 40
    assert (run_dir / "metrics.jsonl").read_text() == metrics


@pytest.mark.slow
def test_default_experiment_groks(tmp_path):
    result = run_cli(f"hydra.run.dir={tmp_path / 'run'}", "logger=none", cwd=tmp_path,
                     timeout=1800)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert max(r["test/acc"] for r in rows) >= 0.99


def test_the_done_line_says_when_test_accuracy_reached_099_or_never():
    rows = [{"step": s, "train/acc": 1.0, "test/acc": a, "train/loss": 0.1, "test/loss": 0.2,
             "time/elapsed_s": 3.0} for s, a in ((0, 0.0), (100, 0.5), (200, 0.995))]
    assert summary_line(summarize(rows), "RUN") == (
        "done: train acc 1.000, test acc 0.995, test acc >= 0.99 at step 200, wall 3.0 s, "
        "run dir RUN")
    assert summary_line(summarize(rows[:2]), "RUN") == (
        "done: train acc 1.000, test acc 0.500, test acc >= 0.99 never, wall 3.0 s, run dir RUN")
