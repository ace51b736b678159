"""Sweeps check every job's config before the first job starts (hydra/sweeper=grok)."""

import sys

import pytest
import yaml

from grok.main import main
from hydra_plugins.grok_sweeper.grok_sweeper import GrokSweeper
from tests.conftest import ctrl_c, no_keyboard_interrupt, run_cli

TINY = ("task.p=7", "steps=5", "train.eval_every=5", "logger=none", "analysis=none")


@pytest.mark.parametrize("sweep,problem", [
    (("split.train_frac=0.5,1.5", "steps=5"),
     "split.train_frac=1.5 is invalid: must be strictly between 0 and 1"),
    (("split.train_frac=0.5", "steps=5,abc"),  # the schema's type check: Hydra's error, one line
     "Error merging override steps=abc: Value 'abc' of type 'str' could not be converted to "
     "Integer"),
])
def test_a_sweep_with_a_bad_job_is_refused_before_any_job_starts(tmp_path, sweep, problem):
    sweep_dir = tmp_path / "sweep"
    rest = ("task.p=7", "train.eval_every=5", "logger=none", "analysis=none")
    result = run_cli("-m", "seed=0,1", *sweep, *rest, f"hydra.sweep.dir={sweep_dir}",
                     cwd=tmp_path)
    assert result.returncode == 1
    bad = "split.train_frac=1.5 steps=5" if "1.5" in sweep[0] else "split.train_frac=0.5 steps=abc"
    assert result.stderr.strip().splitlines() == [
        f"error: job #{num} (seed={seed} {bad} {' '.join(rest)}): {problem}"
        for num, seed in ((1, 0), (3, 1))]
    assert "Launching" not in result.stdout + result.stderr
    assert not sweep_dir.exists()


@pytest.mark.usefixtures("cli_logging", "no_cpp_compiler")
@pytest.mark.parametrize("sweep,second,problem", [
    ("device=cpu,cuda", "device=cuda",
     "device=cuda but CUDA is not available here; use device=auto or cpu"),
    ("train.compile=false,true", "train.compile=True",
     "train.compile=true needs a C++ compiler on the CPU and none was found (InvalidCxxCompiler); "
     "install g++ (or set CXX), or run eagerly with train.compile=false"),
])
def test_a_job_this_machine_cannot_run_refuses_the_sweep_before_any_job_starts(
        tmp_path, monkeypatch, capsys, sweep, second, problem):
    """The first job trained, and only then did the second stop at its device or compiler."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    sweep_dir = tmp_path / "sweep"
    monkeypatch.setattr(sys, "argv", ["grok.main", "-m", sweep, *TINY,
                                      f"hydra.sweep.dir={sweep_dir}"])
    with pytest.raises(SystemExit) as refused:
        main()
    assert refused.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: job #1 ({second} {' '.join(TINY)}): {problem}"]
    assert not sweep_dir.exists()


@pytest.mark.usefixtures("cli_logging")
def test_ctrl_c_while_the_jobs_are_checked_stops_the_sweep_with_one_line(tmp_path, monkeypatch,
                                                                         capsys):
    """Exit 130 as before, now with a line saying why and that no job started."""
    monkeypatch.setattr(GrokSweeper, "job_problem", ctrl_c)
    sweep_dir = tmp_path / "sweep"
    monkeypatch.setattr(sys, "argv", ["grok.main", "-m", "seed=0,1", *TINY,
                                      f"hydra.sweep.dir={sweep_dir}"])
    with no_keyboard_interrupt(), pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 130
    assert capsys.readouterr().err.splitlines() == [
        "stopped by Ctrl-C while the sweep's jobs were being checked: none started"]
    assert not sweep_dir.exists()


def test_a_valid_sweep_runs_every_job_with_the_usual_numbering(tmp_path):
    sweep_dir = tmp_path / "sweep"
    # in batches of 3: the job of the second batch is still number 3
    result = run_cli("-m", "seed=0,1", "split=random,structured", "hydra.sweeper.max_batch_size=3",
                     *TINY, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = [("0", "random"), ("0", "structured"), ("1", "random"), ("1", "structured")]
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["0", "1", "2", "3", "multirun.yaml"]
    for num, (seed, split) in enumerate(jobs):
        job = sweep_dir / str(num)
        assert (job / "metrics.jsonl").is_file()
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert overrides[:2] == [f"seed={seed}", f"split={split}"]
        assert f"#{num} : seed={seed} split={split} task.p=7" in result.stderr + result.stdout


def test_the_jobs_of_a_preset_sweep_are_checked_too(tmp_path):
    """experiment=sweep_seeds_splits sweeps seed and split through hydra.sweeper.params; with
    task=div only its conflict jobs are invalid, and nothing starts."""
    sweep_dir = tmp_path / "sweep"
    result = run_cli("experiment=sweep_seeds_splits", "task=div", *TINY,
                     f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert [line.split(": split.name=")[0] for line in lines] == [
        f"error: job #{num} (seed={seed} split=conflict experiment=sweep_seeds_splits task=div "
        f"{' '.join(TINY)})" for num, seed in ((2, 0), (5, 1), (8, 2))]
    assert all("the conflict split is not defined for div" in line for line in lines)
    assert not sweep_dir.exists()


def test_a_bad_value_for_every_job_of_a_preset_sweep_names_each_job(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli("experiment=sweep_seeds_splits", "split.train_frac=1.5", *TINY,
                     f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 9 and all(" split.train_frac=1.5 is invalid: " in line for line in lines)
    assert [line.split(" (")[0] for line in lines] == [f"error: job #{n}" for n in range(9)]
    assert not sweep_dir.exists()


def test_a_job_resolves_hydra_interpolations_against_its_own_job(tmp_path):
    """${hydra:job.num} is a legal value in a sweep: the check must resolve it as the job
    will, not refuse it for want of a HydraConfig."""
    sweep_dir = tmp_path / "sweep"
    result = run_cli("-m", "seed=${hydra:job.num}", "task.p=7,11", "steps=5", "logger=none",
                     "analysis=none", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert all((sweep_dir / job / "metrics.jsonl").is_file() for job in ("0", "1"))
