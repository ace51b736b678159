"""Experiment presets and launcher configs compose, and mean what the README says."""

import dataclasses
import importlib
from pathlib import Path

import grok.conf
import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from grok import naming
from grok.train.schedule import checkpoint_steps
from tests.conftest import compose_config, run_cli

CONF = Path(grok.conf.__file__).parent
PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def compose_full(*overrides):
    """The whole composed config including the hydra node, as `python -m grok.main` sees it."""
    with initialize_config_module(config_module="grok.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def test_the_issue_presets_exist():
    assert {"v1_baseline", "v2_structured", "v2b_conflict", "sweep_seeds_splits"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("form", ["experiment={}", "+experiment={}"])
def test_every_preset_composes_and_checks(preset, form):
    if form.startswith("+"):
        # `experiment` is already in the defaults list (null), so `+experiment=` is
        # refused by Hydra with a message; `experiment=NAME` is the form to use.
        with pytest.raises(Exception, match="experiment"):
            compose_config(form.format(preset))
        return
    cfg = compose_config(form.format(preset))
    assert preset in cfg.logger.tags


def test_a_misspelt_preset_is_refused_with_the_list_of_presets(tmp_path):
    # an `optional` group entry would skip a name it cannot find and train the default experiment
    run_dir = tmp_path / "run"
    result = run_cli("experiment=v1_baselin", f"hydra.run.dir={run_dir}", "logger=none",
                     cwd=tmp_path)
    assert result.returncode == 1
    assert "Could not find 'experiment/v1_baselin'" in result.stderr
    assert "v1_baseline" in result.stderr.split("Available options")[1]
    assert not run_dir.exists()


def test_preset_values():
    v1 = compose_config("experiment=v1_baseline")
    assert (v1.split.name, v1.steps, v1.task.op, v1.task.p, v1.model.name) == (
        "random", 3000, "add", 97, "power_2l")
    assert v1.optim.weight_decay == 1.0 and v1.train.batch_size == 512
    v2 = compose_config("experiment=v2_structured")
    assert (v2.split.name, v2.split.pattern, v2.split.train_frac, v2.steps, v2.train.name) == (
        "structured", "block", 0.5, 400000, "long")
    v2b = compose_config("experiment=v2b_conflict")
    assert (v2b.split.name, v2b.steps, v2b.train.batch_size) == ("conflict", 20000, "full")
    # Command-line overrides still win over a preset.
    assert compose_config("experiment=v2_structured", "steps=1000", "seed=4").steps == 1000


def test_preset_run_directories_are_stable_per_seed():
    for preset in ("v1_baseline", "v2_structured", "v2b_conflict"):
        cfg = compose_full(f"experiment={preset}", "seed=3")
        assert cfg.hydra.run.dir == f"outputs/{preset}/s3"


def test_sweep_preset_is_seeds_times_splits_with_a_directory_per_job():
    cfg = compose_full("experiment=sweep_seeds_splits")
    params = cfg.hydra.sweeper.params
    assert params.seed.split(",") == ["0", "1", "2"]
    assert set(params.split.split(",")) == {"random", "structured", "conflict"}
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"] == (
        "${hydra.job.override_dirname}")
    assert {"experiment", "steps", "train.eval_every"} <= set(
        cfg.hydra.job.config.override_dirname.exclude_keys)
    for split in ("random", "structured", "conflict"):
        assert compose_config("experiment=sweep_seeds_splits", f"split={split}").split.name == split


def test_sweep_job_directories_leave_out_every_key_that_does_not_change_the_trained_function():
    """A sweep job's directory is named after its overrides minus these keys, so that rerunning
    it with another analysis, cadence or length resumes the same directory. Every schema key
    that grok.naming.identity ignores must be listed (a new option must be added there)."""
    excluded = set(compose_full().hydra.job.config.override_dirname.exclude_keys)
    cfg = compose_config()
    identity = {**naming.identity(cfg),  # the precision is named only when it is not fp32
                **naming.identity(compose_config("train.precision=bf16"))}
    for group in ("train", "analysis", "logger"):
        for f in dataclasses.fields(getattr(cfg, group)):
            key = f"{group}.{f.name}"
            if key not in identity and key != "train.name":  # train=<name> may change the batch
                assert key in excluded, key
    assert {"experiment", "steps", "device", "logger", "analysis"} <= excluded
    assert not excluded & {"seed", "split", "task", "model", "optim", "train.batch_size",
                           "train.precision", "seeds"}


def test_v2_structured_checkpoint_policy():
    cfg = compose_config("experiment=v2_structured")
    steps = checkpoint_steps(cfg.steps, cfg.train.checkpoints, cfg.train.checkpoint_spacing)
    # log-spaced early (dense where the curves change fast) plus linear over the whole run
    assert steps[:4] == [0, 1, 2, 3] and steps[-1] == 400000
    gaps = {b - a for a, b in zip(steps, steps[1:]) if a >= 20000}
    assert max(gaps) <= 400000 // 99 + 1


LAUNCHERS = {
    "joblib": "hydra_plugins.hydra_joblib_launcher.config:JobLibLauncherConf",
    "submitit_local": "hydra_plugins.hydra_submitit_launcher.config:LocalQueueConf",
    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher.config:SlurmQueueConf",
}


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_file_has_the_plugin_keys(name):
    """Our files replace the plugins' options of the same name: same keys, none lost."""
    module, cls = LAUNCHERS[name].split(":")
    schema = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}
    ours = yaml.safe_load((CONF / "hydra" / "launcher" / f"{name}.yaml").read_text())
    assert set(ours) == schema
    cfg = compose_full(f"hydra/launcher={name}")
    assert cfg.hydra.launcher._target_ == ours["_target_"]


def test_slurm_launcher_requeues_long_runs():
    cfg = compose_full("hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu")
    launcher = cfg.hydra.launcher
    assert launcher.max_num_timeout >= 10 and launcher.signal_delay_s >= 60
    assert launcher.partition == "gpu"
    assert launcher.setup == ["export OMP_NUM_THREADS=4"]
