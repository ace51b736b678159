"""`python -m grok.analyze`: post-hoc analysis of a CLI-trained run, and its error messages."""

import json
import shlex
import shutil
import sys

import pytest
import yaml
from hydra import compose, initialize_config_module

from grok.analysis import runner
from grok.analyze import PosthocLoggerConfig, analyze, posthoc_logger, to_analyze_config
from grok.analyze import main as analyze_main
from grok.config import ConfigError, LoggerConfig
from tests.conftest import compose_config, ctrl_c, no_keyboard_interrupt, run_cli
from tests.wandb_records import history, offline_runs, read_records, run_record


def compose_analyze(*overrides: str):
    with initialize_config_module(config_module="grok.conf", version_base="1.3"):
        return compose(config_name="analyze", overrides=list(overrides))


@pytest.fixture
def cli_run(tiny_runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_runs["random"][0], run_dir)
    return run_dir


def log_like(run_dir, **logger) -> None:
    """Make run_dir's config record say that it was trained with these logger.* settings."""
    record = run_dir / ".hydra" / "accepted" / "config.yaml"
    cfg = yaml.safe_load(record.read_text())
    cfg["logger"].update(logger)
    record.write_text(yaml.safe_dump(cfg))


def test_each_logger_setting_not_given_is_the_training_runs():
    """grok.analyze used grok.main's defaults: a run trained with logger.project=X had its
    analysis run in project grok, away from it, and a CSV-logged run got a W&B run."""
    trained = compose_config("logger.project=mine", "logger.entity=lab", "logger.tags=[a]")
    assert posthoc_logger(to_analyze_config(compose_analyze("run_dir=x")).logger,
                          trained) == LoggerConfig("wandb", "mine", "lab", None, ["a"])
    given = to_analyze_config(compose_analyze("run_dir=x", "logger.project=other")).logger
    assert posthoc_logger(given, trained) == LoggerConfig("wandb", "other", "lab", None, ["a"])
    csv = to_analyze_config(compose_analyze("run_dir=x", "logger=csv")).logger
    assert posthoc_logger(csv, trained).backend == "csv"
    assert posthoc_logger(given, None) == LoggerConfig(project="other")  # no record: defaults
    assert posthoc_logger(PosthocLoggerConfig(), None) == LoggerConfig()


def test_a_csv_logged_run_is_analysed_into_its_csv_log_not_a_wandb_run(cli_run, tmp_path):
    log_like(cli_run, backend="csv")
    result = run_cli(f"run_dir={cli_run}", "t_grok=20", cwd=tmp_path, module="grok.analyze")
    assert result.returncode == 0, result.stderr
    assert not (cli_run / "wandb").exists()
    summary = json.loads((cli_run / "logs" / "summary.json").read_text())
    assert summary["analysis/t_grok"] == 20


def test_cli_post_hoc_analysis_with_forced_t_grok_logs_an_analysis_wandb_run(cli_run, tmp_path):
    """Into the training run's W&B project, with its tags, without a logger.* override."""
    log_like(cli_run, backend="wandb", project="my-grokking", tags=["mine"])
    record = (cli_run / ".hydra" / "accepted" / "config.yaml").read_text()
    result = run_cli(f"run_dir={cli_run}", "t_grok=20", "device=cpu", cwd=tmp_path,
                     module="grok.analyze")
    assert result.returncode == 0, result.stderr
    assert "grokking: t_grok 20 (forced)" in result.stdout
    report = json.loads((cli_run / "analysis" / "post_analysis.json").read_text())
    assert report["t_grok"] == 20 and report["t_grok_method"] == "forced"
    assert (cli_run / ".hydra" / "accepted" / "config.yaml").read_text() == record
    assert not (cli_run / ".hydra" / "config.yaml").exists()  # Hydra wrote nothing
    assert not (tmp_path / "outputs").exists() and not (tmp_path / ".hydra").exists()
    [wb] = offline_runs(cli_run)
    records = read_records(wb)
    meta = run_record(records)
    assert meta["job_type"] == "analysis"
    summary = {}
    for r in records:
        if r["type"] == "summary":
            summary.update(r["summary"]["update"])
    assert summary["analysis/t_grok"] == 20 and summary["analysis/t_grok_method"] == "forced"
    logged = [h for h in history(records) if "rank/final" in h]
    assert [h["step"] for h in logged] == report["checkpoint_steps"]
    assert [h["rank/final"] for h in logged] == pytest.approx(report["final_layer_rank"])
    assert meta["run_group"].startswith("add7-random0.8-power_2l-")
    assert meta["display_name"] == "add7-random0.8-power_2l-s0-analysis"
    assert meta["project"] == "my-grokking" and "mine" in meta["tags"]

    missing = run_cli(f"run_dir={tmp_path / 'nope'}", cwd=tmp_path, module="grok.analyze")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines() == [
        f"error: run directory {tmp_path / 'nope'} not found; pass the folder of a training "
        "run, e.g. run_dir=outputs/runs/<date>/<time>"]
    assert not (tmp_path / "nope").exists()


@pytest.mark.usefixtures("cli_logging")
def test_ctrl_c_stops_an_analysis_with_one_line_and_the_command_that_redoes_it(
        cli_run, tmp_path, monkeypatch, capsys):
    """Ctrl-C during the trajectory step of analysis=full: exit 130 and one line, no traceback;
    the grokking step's files, written before it, are whole."""
    monkeypatch.setattr(runner, "run_trajectory_suite", ctrl_c)
    monkeypatch.chdir(tmp_path)
    shutil.rmtree(cli_run / "analysis")
    run_dir = tmp_path / "a run"
    cli_run.rename(run_dir)
    monkeypatch.setattr(sys, "argv", ["grok.analyze", f"run_dir='{run_dir}'", "analysis=full",
                                      "logger=none", "progress=false", "device=cpu"])
    with no_keyboard_interrupt(), pytest.raises(SystemExit) as stopped:
        analyze_main()
    assert stopped.value.code == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1:] == [
        "stopped by Ctrl-C before the analysis finished: its files on disk are whole, but some "
        "may be those of an earlier analysis. To redo it: python -m grok.analyze "
        + shlex.quote(f"run_dir='{run_dir}'") + " analysis=full logger=none progress=false "
        "device=cpu"]
    report = json.loads((run_dir / "analysis" / "post_analysis.json").read_text())
    assert report["checkpoint_steps"][-1] == 40
    assert not (run_dir / "analysis" / "trajectory").exists()


def test_config_errors(cli_run, capsys):
    with pytest.raises(ConfigError, match="run_dir is required"):
        to_analyze_config(compose_analyze())
    with pytest.raises(ConfigError, match="t_grok=-1 is invalid"):
        to_analyze_config(compose_analyze("run_dir=x", "t_grok=-1"))
    with pytest.raises(ConfigError, match="analysis.window=1 is invalid"):
        to_analyze_config(compose_analyze("run_dir=x", "analysis.window=1"))
    cfg = to_analyze_config(compose_analyze(f"run_dir={cli_run}", "t_grok=999", "logger=none"))
    assert cfg.analysis.name == "grokking"  # the default suite of grok.analyze
    with pytest.raises(ConfigError, match="the run's last checkpoint is at step 40"):
        analyze(cfg)
    none = to_analyze_config(compose_analyze(f"run_dir={cli_run}", "analysis=none"))
    assert analyze(none) == {} and "nothing to analyse" in capsys.readouterr().out


@pytest.mark.parametrize("override,line", [
    ("device=tpu", "error: device='tpu' is invalid: choose auto, cpu, cuda, cuda:N or mps"),
    ("logger.mode=sometimes", "error: logger.mode='sometimes' is invalid: choose one of online, "
                              "offline, disabled"),
])
def test_a_bad_device_or_logger_mode_is_one_line_before_anything_is_written(cli_run, tmp_path,
                                                                             override, line):
    """torch (device) and wandb (mode) raised tracebacks; the W&B run was opened first."""
    before = sorted((p, p.stat().st_mtime_ns) for p in cli_run.rglob("*"))
    result = run_cli(f"run_dir={cli_run}", override, cwd=tmp_path, module="grok.analyze")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [line]
    assert sorted((p, p.stat().st_mtime_ns) for p in cli_run.rglob("*")) == before


def test_a_run_that_stopped_early_is_analysed_with_a_warning(cli_run, caplog):
    cfg = to_analyze_config(compose_analyze(f"run_dir={cli_run}", "logger=none",
                                            "progress=false"))
    with caplog.at_level("WARNING", logger="grok.analyze"):
        analyze(cfg)
    mine = [r for r in caplog.records if r.name == "grok.analyze"]
    assert not mine  # the tiny run trained all its 40 steps
    record = cli_run / ".hydra" / "accepted" / "config.yaml"
    record.write_text(record.read_text().replace("steps: 40", "steps: 100"))
    with caplog.at_level("WARNING", logger="grok.analyze"):
        analyze(cfg)
    assert [r.getMessage() for r in caplog.records if r.name == "grok.analyze"] == [
        f"the run stopped early: its metrics end at step 40 of 100; this analyses the part it "
        f"trained (resume it with python -m grok.main hydra.run.dir={cli_run} and its overrides "
        "to finish it)"]


@pytest.mark.parametrize("override,key", [
    ("analysis.window=1", "analysis.window"),
    ("analysis.threshold=0", "analysis.threshold"),
    ("analysis.threshold=1.5", "analysis.threshold"),
    ("analysis.before=-1", "analysis.before"),
    ("analysis.before_after_ratio=0.5", "analysis.before_after_ratio"),
    ("analysis.batch_size=0", "analysis.batch_size"),
    ("analysis=bogus_suite", "analysis"),
])
def test_training_config_checks_the_analysis_keys(override, key):
    from hydra.errors import HydraException

    with pytest.raises((ConfigError, HydraException)) as err:
        compose_config("analysis=grokking", override)
    assert key in str(err.value)
