"""K seeds trained as one batched model must leave exactly what K separate runs leave."""

import json
import sys

import pytest
import torch
import yaml

from grok.config import ConfigError
from grok.main import main, run, run_seeds
from grok.tracking import InMemoryLogger
from grok.train import checkpoint as ckpt
from grok.train.multiseed import SeedBatch
from grok.train.trainer import ResumeMismatch
from tests.conftest import TINY, run_cli, tiny_config
from tests.test_trainer import make_trainer, without_time
from tests.wandb_records import offline_runs, read_records, run_record

SEEDS = (0, 2)


def rows(run_dir):
    return without_time([json.loads(line) for line in (run_dir / "metrics.jsonl").open()])


def assert_same_run_directory(a, b):
    """Same metrics (but wall time), same checkpoints, same resume state, bit for bit."""
    assert rows(a) == rows(b)
    steps = [s for s, _ in ckpt.list_checkpoints(a)]
    assert steps == [s for s, _ in ckpt.list_checkpoints(b)] and steps
    for step in steps:
        wa = ckpt.load_checkpoint(ckpt.checkpoint_path(a, step))["model_state"]
        wb = ckpt.load_checkpoint(ckpt.checkpoint_path(b, step))["model_state"]
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), step
    ra, rb = ckpt.load_resume_state(a), ckpt.load_resume_state(b)
    assert ra["step"] == rb["step"] and ra["scheduler"] == rb["scheduler"]
    assert torch.equal(ra["torch_rng"], rb["torch_rng"])
    assert all(torch.equal(ra["model"][k], rb["model"][k]) for k in rb["model"])
    sa, sb = ra["optimizer"]["state"], rb["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[i][key], sb[i][key]) for i in sb for key in sb[i])
    # and no more: a seed's file once held every seed's AdamW moments (views of the stacked ones)
    for path in (ckpt.resume_path, ckpt.previous_path):
        assert abs(path(a).stat().st_size - path(b).stat().st_size) < 4096


@pytest.mark.parametrize("batch", ["8", "full"])
def test_seed_batch_equals_separate_runs(tmp_path, batch):
    over = ("task.p=11", f"train.batch_size={batch}")
    summaries = run_seeds(tiny_config(*over, "seeds=[0,2]"), tmp_path / "batch",
                          [InMemoryLogger() for _ in SEEDS])
    for seed, summary in zip(SEEDS, summaries):
        alone = run(tiny_config(*over, f"seed={seed}"), tmp_path / f"alone_{seed}",
                    InMemoryLogger())
        assert_same_run_directory(tmp_path / "batch" / f"seed_{seed}", tmp_path / f"alone_{seed}")
        for key, value in alone.items():
            if not key.startswith("time/"):
                assert summary[key] == value, key
    saved = yaml.safe_load((tmp_path / "batch" / "seed_2" / ".hydra" / "config.yaml").read_text())
    assert saved["seed"] == 2 and saved["seeds"] == [] and saved["task"]["p"] == 11


def test_seed_batch_resumes_exactly(tmp_path):
    cfgs = [tiny_config("task.p=11", "train.batch_size=8", f"seed={s}") for s in SEEDS]
    SeedBatch([make_trainer(c, tmp_path / "a" / str(i)) for i, c in enumerate(cfgs)]).fit(
        [None] * len(cfgs))
    SeedBatch([make_trainer(c, tmp_path / "b" / str(i)) for i, c in enumerate(cfgs)]).fit(
        [None] * len(cfgs), until=20)
    trainers = [make_trainer(c, tmp_path / "b" / str(i)) for i, c in enumerate(cfgs)]
    SeedBatch(trainers).fit([ckpt.load_resume_state(t.run_dir) for t in trainers])
    for i in range(len(cfgs)):
        assert_same_run_directory(tmp_path / "a" / str(i), tmp_path / "b" / str(i))


def test_a_seed_of_a_batch_continues_alone(tmp_path):
    run_seeds(tiny_config("steps=20", "seeds=[3,4]"), tmp_path / "batch",
              [InMemoryLogger(), InMemoryLogger()])
    run(tiny_config("steps=40", "seed=4"), tmp_path / "batch" / "seed_4", InMemoryLogger())
    run(tiny_config("steps=20", "seed=4"), tmp_path / "alone", InMemoryLogger())  # the same
    run(tiny_config("steps=40", "seed=4"), tmp_path / "alone", InMemoryLogger())  # extension
    assert_same_run_directory(tmp_path / "batch" / "seed_4", tmp_path / "alone")


def test_a_seed_batchs_start_lines_name_their_seed(tmp_path, capsys):
    """An extended (or full-batch) seed batch says where each seed picks up, named by its seed:
    the same unnamed line K times told nothing about which seed it was."""
    over = ("task.p=5", "train.batch_size=100", "seeds=[3,4]")
    run_seeds(tiny_config(*over, "steps=20"), tmp_path / "batch",
              [InMemoryLogger(), InMemoryLogger()])
    capsys.readouterr()
    run_seeds(tiny_config(*over, "steps=30"), tmp_path / "batch",
              [InMemoryLogger(), InMemoryLogger()])
    lines = capsys.readouterr().out.splitlines()
    for seed in (3, 4):
        assert f"seed_{seed}: resuming at step 20 of 30" in lines
        assert f"seed_{seed}: train.batch_size=100 covers all 20 training pairs: every step is " \
               "full-batch" in lines
    assert not any(line.startswith(("resuming", "train.batch_size")) for line in lines)


def test_resuming_a_batch_needs_every_seed(tmp_path):
    cfgs = [tiny_config(f"seed={s}", "steps=20") for s in SEEDS[:2]]
    SeedBatch([make_trainer(c, tmp_path / str(i)) for i, c in enumerate(cfgs)]).fit([None, None])
    trainers = [make_trainer(c, tmp_path / str(i)) for i, c in enumerate(cfgs)]
    with pytest.raises(Exception, match="no resume state"):
        SeedBatch(trainers).fit([ckpt.load_resume_state(tmp_path / "0"), None])


def test_a_batch_whose_seeds_were_saved_at_different_steps_is_refused_untouched(tmp_path):
    """Each seed's _resume ran before the check and cut the other seeds' metrics.jsonl back to
    their own step: the refused command dropped the history of the seed with a lost last.pt."""
    cfgs = [tiny_config(f"seed={s}", "steps=20", "train.resume_every=10") for s in SEEDS[:2]]
    SeedBatch([make_trainer(c, tmp_path / str(i)) for i, c in enumerate(cfgs)]).fit([None, None])
    (tmp_path / "1" / "checkpoints" / "last.pt").unlink()  # seed 1 falls back to previous.pt
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    trainers = [make_trainer(c, tmp_path / str(i)) for i, c in enumerate(cfgs)]
    states = [ckpt.load_resume_state(tmp_path / str(i)) for i in range(2)]
    with pytest.raises(Exception, match=r"saved at different steps \[10, 20\]"):
        SeedBatch(trainers).fit(states)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("seeds", ["seeds=[1,1]", "seeds=[-1,2]"])
def test_bad_seed_lists_are_refused(seeds):
    with pytest.raises(ConfigError, match="seeds"):
        tiny_config(seeds)


def test_cli_seed_batch_gives_each_seed_a_run_directory_and_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("task.p=7", "steps=20", "train.eval_every=10", "seeds=[0,5]",
                     f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("done: train acc") == 2
    metas = []
    for seed in (0, 5):
        seed_dir = run_dir / f"seed_{seed}"
        assert (seed_dir / "plots" / "curves.png").is_file()
        assert json.loads((seed_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 20
        [wb] = offline_runs(seed_dir)
        metas.append(run_record(read_records(wb)))
        assert metas[-1]["config"]["update"]["seed"] == seed
    assert metas[0]["run_id"] != metas[1]["run_id"]
    assert metas[0]["run_group"] == metas[1]["run_group"]
    assert metas[1]["display_name"].endswith("-s5")


def test_models_without_features_train_whole_under_vmap(tmp_path):
    """The fallback for models without features() (e.g. no unembedding matrix): logits from the
    vmapped forward pass; equal to separate runs up to rounding."""
    cfgs = [tiny_config("task.p=11", "train.batch_size=8", f"seed={s}") for s in SEEDS]
    batch = SeedBatch([make_trainer(c, tmp_path / str(i)) for i, c in enumerate(cfgs)])
    batch.unembed_per_seed = False
    batched_rows = batch.fit([None] * len(cfgs))
    for i, c in enumerate(cfgs):
        alone = make_trainer(c, tmp_path / f"alone{i}").fit()
        for a, b in zip(without_time(batched_rows[i]), without_time(alone)):
            assert a == pytest.approx(b, rel=1e-4, abs=1e-5)


def test_a_seed_batch_trains_eagerly_whatever_train_compile_says(tmp_path, no_cpp_compiler):
    """SeedBatch has its own (eager) step: train.compile=true must not demand a C++ compiler,
    and each seed's saved config keeps what the command asked for."""
    run_seeds(tiny_config("task.p=11", "steps=4", "train.compile=true", "seeds=[0,1]"),
              tmp_path / "batch", [InMemoryLogger() for _ in range(2)])
    for seed in (0, 1):
        seed_dir = tmp_path / "batch" / f"seed_{seed}"
        assert rows(seed_dir)[-1]["step"] == 4
        saved = yaml.safe_load((seed_dir / ".hydra" / "config.yaml").read_text())
        assert saved["train"]["compile"] is True


def test_a_seed_batch_and_a_single_run_never_share_a_directory(tmp_path):
    """A preset puts a batch in outputs/NAME/seeds_<a>_<b>, not in the single run s<seed>; a
    batch pointed at a single run's directory (or a single run at a batch's) is refused and
    leaves the run and its Hydra record as they were."""
    common = ("experiment=v1_baseline", "task.p=7", "steps=10", "logger=none", "analysis=none")
    assert run_cli(*common, cwd=tmp_path).returncode == 0
    single = tmp_path / "outputs" / "v1_baseline" / "s0"
    record = (single / ".hydra" / "overrides.yaml").read_text()
    batch = run_cli(*common, "seeds=[0,1]", cwd=tmp_path)
    assert batch.returncode == 0, batch.stderr
    assert (tmp_path / "outputs" / "v1_baseline" / "seeds_0_1" / "seed_1" / "split.pt").is_file()
    assert not list(single.glob("seed_*"))

    refused = run_cli(*common, "seeds=[0,1]", f"hydra.run.dir={single}", cwd=tmp_path)
    assert refused.returncode == 1 and "holds a single run, not a seed batch" in refused.stderr
    assert not list(single.glob("seed_*"))
    assert (single / ".hydra" / "overrides.yaml").read_text() == record
    assert (single / ".hydra" / "accepted" / "overrides.yaml").read_text() == record
    batch_dir = tmp_path / "outputs" / "v1_baseline" / "seeds_0_1"
    with pytest.raises(ResumeMismatch, match=r"holds a seed batch \(seed_0, seed_1\)"):
        run(tiny_config(), batch_dir, InMemoryLogger())
    # refused commands there leave the batch's own record as it was
    batch_record = (batch_dir / ".hydra" / "accepted" / "overrides.yaml").read_text()
    for other in (("seeds=[0,1]", "optim.lr=0.003"), ("seed=0", f"hydra.run.dir={batch_dir}")):
        refused = run_cli(*common, *other, cwd=tmp_path)
        assert refused.returncode == 1
        if "optim.lr=0.003" in other:  # a fresh start beside the batch, not inside it
            assert f"start fresh elsewhere with hydra.run.dir={batch_dir}-" in refused.stderr
        for record in (batch_dir / ".hydra", batch_dir / ".hydra" / "accepted"):
            assert (record / "overrides.yaml").read_text() == batch_record


def test_a_command_refused_in_a_seeds_directory_leaves_its_record(tmp_path):
    """A batch seed's directory keeps an accepted config record like any run, so a refused
    command there (another train_frac) puts it back and the seed still analyses."""
    common = ("task.p=7", "steps=10", "logger=none", "analysis=none")
    assert run_cli(*common, "seeds=[0,1]", f"hydra.run.dir={tmp_path / 'b'}",
                   cwd=tmp_path).returncode == 0
    seed_dir = tmp_path / "b" / "seed_0"
    before = {p.name: p.read_text() for p in (seed_dir / ".hydra").glob("*.yaml")}
    assert set(before) == {"config.yaml"}
    refused = run_cli(*common, "split.train_frac=0.5", f"hydra.run.dir={seed_dir}", cwd=tmp_path)
    assert refused.returncode == 1 and "split.train_frac" in refused.stderr
    assert {p.name: p.read_text() for p in (seed_dir / ".hydra").glob("*.yaml")} == before
    analysed = run_cli(f"run_dir={seed_dir}", "logger=none", cwd=tmp_path, module="grok.analyze")
    assert analysed.returncode == 0, analysed.stderr


def free_space_for_one_and_a_half_seeds(tmp_path, monkeypatch) -> int:
    """Report 1.5 times the checkpoint bytes a run of tiny_config() writes as free: one seed of
    a batch fits, two do not. Returns those bytes."""
    run(tiny_config(), tmp_path / "one", InMemoryLogger())
    one = sum(p.stat().st_size for p in (tmp_path / "one" / "checkpoints").iterdir())
    free = int(1.5 * one)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda _: type("U", (), {"free": free})())
    return free


def test_a_seed_batch_is_refused_when_its_seeds_together_do_not_fit(tmp_path, monkeypatch,
                                                                    capsys):
    """Each seed's check compared its own bytes with the free space, so a batch with room for
    one seed started and filled the disk mid-run; each seed's disk line now names its seed."""
    free_space_for_one_and_a_half_seeds(tmp_path, monkeypatch)
    capsys.readouterr()
    loggers = [InMemoryLogger(), InMemoryLogger()]
    with pytest.raises(ckpt.InsufficientDisk, match=r"this seed batch \(2 seeds\) need .* "
                       r"free some space, train fewer seeds or lower train.checkpoints"):
        run_seeds(tiny_config("seeds=[3,4]"), tmp_path / "batch", loggers)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("seed_3: disk: checkpoints need ")
    assert lines[1].startswith("seed_4: disk: checkpoints need ")
    assert "with the seeds before it" in lines[1] and "with the seeds before it" not in lines[0]
    assert not any(logger.rows for logger in loggers)
    assert not (tmp_path / "batch").exists()  # no seed saved its split, nor made its folder


def test_a_refused_seed_batch_leaves_no_folder_behind(tmp_path, monkeypatch, capsys,
                                                      cli_logging):
    """As a refused single run does: seed_0 had written its split and W&B run by the time the
    second seed could be checked (and an empty seed_0/ kept even a batch refused at its first
    seed from being removed)."""
    free = free_space_for_one_and_a_half_seeds(tmp_path / "probe", monkeypatch)
    monkeypatch.chdir(tmp_path)
    args = [a for a in TINY if not a.startswith("logger=")]
    monkeypatch.setattr(sys, "argv", ["grok.main", *args, "logger=csv", "analysis=none",
                                      "seeds=[0,1]", f"hydra.run.dir={tmp_path / 'batch'}"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    [error] = capsys.readouterr().err.splitlines()
    assert error.startswith("error: the checkpoints of this seed batch (2 seeds) need ")
    assert error.endswith(f"MB more but only {free / 1e6:.1f} MB are free where "
                          f"{tmp_path / 'batch'} is; free some space, train fewer seeds or "
                          "lower train.checkpoints")
    assert sorted(tmp_path.iterdir()) == [tmp_path / "probe"]
