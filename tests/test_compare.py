"""Comparison of runs: tables against hand-computed values, and grok.compare on two tiny runs."""

import csv
import json
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from grok import compare as compare_module
from grok.analysis.aggregate import band
from grok.analysis.comparison import RunEntry, compare, format_table
from grok.analysis.runner import AnalysisSettings, run_analysis, runs_under
from grok.compare import (
    CompareConfig,
    compare_runs,
    default_baseline,
    default_labels,
    run_dirs,
    to_compare_config,
)
from grok.config import ConfigError
from grok.tracking import InMemoryLogger, NullLogger
from tests.conftest import ctrl_c, no_keyboard_interrupt, run_cli, tiny_config


def fake_report(t_grok, acc_before=0.1, acc_after=0.9):
    points = None if t_grok is None else {
        "ratio": 2.0,
        "before": {"step": t_grok // 2, "test_accuracy": acc_before, "final_layer_rank": 20.0,
                   "avg_entropy": 0.9},
        "after": {"step": t_grok * 2, "test_accuracy": acc_after, "final_layer_rank": 10.0,
                  "avg_entropy": 0.5}}
    return {"t_grok": t_grok, "t_grok_method": "sharpest_rise", "step_test_acc_0.95": None,
            "step_test_acc_0.99": None, "test_accuracy": [0.1, acc_after],
            "before_after": points}


def test_delay_factors_and_seed_aggregates_by_hand(tmp_path):
    entries = [RunEntry(tmp_path / "a0", "base", 0, fake_report(100, acc_after=0.8)),
               RunEntry(tmp_path / "a1", "base", 1, fake_report(200, acc_after=1.0)),
               RunEntry(tmp_path / "b0", "struct", 0, fake_report(300)),
               RunEntry(tmp_path / "b1", "struct", 1, fake_report(None))]
    result = compare(entries, "base")
    assert result["baseline_t_grok"] == 150
    assert [r["delay_factor"] for r in result["runs"]] == pytest.approx([2 / 3, 4 / 3, 2.0, None])
    base, struct = result["variants"]
    assert (base["n_runs"], base["n_grokked"], struct["n_grokked"]) == (2, 2, 1)
    assert base["t_grok_mean"] == 150 and base["t_grok_std"] == pytest.approx(np.std([100, 200],
                                                                                      ddof=1))
    assert base["test_accuracy_after_mean"] == pytest.approx(0.9)
    assert struct["t_grok_mean"] == 300 and struct["delay_factor_mean"] == 2.0
    assert struct["t_grok_std"] is None  # one grokked seed: a sample std is undefined
    assert struct["final_layer_rank_before_mean"] == 20.0
    text = format_table(result)
    assert "base" in text and "struct" in text and "baseline: base" in text
    with pytest.raises(Exception, match="not one of the labels"):
        compare(entries, "nope")


def test_printed_table_says_when_a_mean_covers_only_some_seeds(tmp_path):
    """Seed 1 never reaches 99% test accuracy: the printed 480 is seed 0's alone, and a reader
    must not take it for the variant's."""
    reached, never = fake_report(300), fake_report(300)
    reached["step_test_acc_0.99"] = 480
    entries = [RunEntry(tmp_path / "r0", "random", 0, reached),
               RunEntry(tmp_path / "r1", "random", 1, never)]
    lines = format_table(compare(entries, "random")).splitlines()
    header, row = lines[0], lines[1]
    column = header.index("acc>=.99")
    assert row[column:].startswith("480 (1/2)")
    assert row[header.index("t_grok"):].startswith("300 ")  # both seeds have one: no count
    assert lines[-1].startswith("(k/n): mean over the k")


def test_runs_csv_lists_its_columns_in_the_documented_order(tmp_path):
    from grok.analysis.comparison import RUN_COLUMNS, write_tables

    entries = [RunEntry(tmp_path / "r0", "random", 0, fake_report(300))]
    paths = write_tables(compare(entries, "random"), tmp_path / "out")
    header = paths["runs"].read_text().splitlines()[0].split(",")
    assert header == RUN_COLUMNS and header[-1] == "run_dir"


def test_band_interpolates_seeds_onto_a_common_grid():
    b = band([([0, 10, 20], [0.0, 1.0, 2.0]), ([0, 20], [2.0, 4.0])])
    np.testing.assert_allclose(b["step"], [0, 10, 20])
    np.testing.assert_allclose(b["mean"], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(b["std"], np.std([[0, 1, 2], [2, 3, 4]], axis=0, ddof=1))
    short = band([([0, 10], [1.0, 1.0]), ([0, 10, 20], [3.0, 3.0, 3.0])])
    np.testing.assert_allclose(short["mean"], [2.0, 2.0, 3.0])  # no extrapolation past 10
    assert np.isnan(short["std"][2]) and list(short["count"]) == [2, 2, 1]


def test_accuracy_band_stays_inside_0_and_1(tmp_path, monkeypatch):
    """Two seeds at test accuracy 0 and 0.9: mean 0.45 +- std 0.64 would reach below 0 and
    above 1; the drawn band is clipped to the values an accuracy can take."""
    from grok import plots

    bands = []
    real = plots.plt.Axes.fill_between

    def recording(ax, x, low, high, **kwargs):
        bands.append((low, high))
        return real(ax, x, low, high, **kwargs)

    monkeypatch.setattr(plots.plt.Axes, "fill_between", recording)

    def seed(acc):
        return {"t_grok": None, "checkpoint_steps": [1, 10], "test_accuracy": [acc, acc],
                "final_layer_rank": [5.0, 5.0], "avg_entropy": [0.5, 0.5], "full_analyses": [],
                "training_metrics": {"step": [1, 10], "test/acc": [acc, acc]},
                "model": {"d_model": 8, "n_ctx": 3}}

    plots.compare_figures({"v": [seed(0.0), seed(0.9)]}, tmp_path)
    accuracy = bands[0]  # the first figure is compare_accuracy.png
    np.testing.assert_allclose(accuracy[0], [0.0, 0.0])
    np.testing.assert_allclose(accuracy[1], [1.0, 1.0])
    assert (tmp_path / "compare_accuracy.png").exists()


def test_a_mean_curve_stops_where_the_shortest_seed_ends(tmp_path, monkeypatch, caplog):
    """Seeds at accuracy 0.2 (to step 10) and 0.8 (to step 40): past step 10 the mean would
    jump to the longer seed's 0.8, which no mean over both seeds ever was."""
    from grok import compare as compare_module
    from grok import plots

    lines = []
    real = plots.plt.Axes.plot

    def recording(ax, x, y, *args, **kwargs):
        lines.append((list(x), list(y)))
        return real(ax, x, y, *args, **kwargs)

    monkeypatch.setattr(plots.plt.Axes, "plot", recording)

    def seed(acc, steps):
        return {"t_grok": None, "checkpoint_steps": steps, "test_accuracy": [acc] * len(steps),
                "final_layer_rank": [5.0] * len(steps), "avg_entropy": [0.5] * len(steps),
                "full_analyses": [], "model": {"d_model": 8, "n_ctx": 3}}

    groups = {"v": [seed(0.2, [1, 10]), seed(0.8, [1, 10, 40])]}
    with caplog.at_level("WARNING", logger="grok.compare"):
        compare_module.warn_about_lengths(groups)
    assert caplog.messages == ["the runs labelled v end at different steps (10, 40): its mean "
                               "curves stop at step 10, where the shortest ends"]
    plots.compare_figures(groups, tmp_path)
    steps, mean = lines[0]  # compare_accuracy.png's mean curve
    assert steps == [1, 10, 40]
    np.testing.assert_allclose(mean[:2], [0.5, 0.5])
    assert np.isnan(mean[2])


def test_default_labels_keep_different_configurations_apart():
    a, b = tiny_config(), tiny_config("seed=1")
    c, d = tiny_config("split=structured"), tiny_config("optim.lr=0.01")
    labels = default_labels([a, b, c], [None] * 3)
    assert labels[0] == labels[1] == "add7-random0.8-power_2l"
    assert labels[2] == "add7-structured-block0.8-power_2l"
    assert default_baseline(labels, [a, b, c]) == labels[0]
    assert default_baseline(labels[2:], [c]) == labels[2]  # no random split: the first
    both = default_labels([a, d], [None] * 2)  # same variant, other lr: the W&B groups
    assert both[0] != both[1] and both[0].startswith("add7-random0.8-power_2l-")


@pytest.fixture
def two_runs(tiny_runs, tmp_path):
    """Copies of the two tiny runs, without their analyses."""
    dirs = []
    for name, (run_dir, _) in tiny_runs.items():
        shutil.copytree(run_dir, tmp_path / name, ignore=shutil.ignore_patterns("analysis"))
        dirs.append(tmp_path / name)
    return dirs


def test_the_same_seed_twice_in_one_variant_is_warned_about(caplog):
    report = {"checkpoint_steps": [0, 10]}
    entries = [RunEntry(Path("sweep/0"), "v", 0, report), RunEntry(Path("batch/seed_0"), "v", 0,
                                                                  report),
               RunEntry(Path("sweep/1"), "v", 1, report), RunEntry(Path("other/0"), "w", 0,
                                                                   report)]
    with caplog.at_level("WARNING", logger="grok.compare"):
        compare_module.warn_about_repeated_seeds(entries)
    assert caplog.messages == ["the runs labelled v include seed 0 twice (sweep/0 and "
                               "batch/seed_0): each counts as a seed in its mean and std"]


def test_compare_two_tiny_runs(two_runs, tmp_path):
    cpu = torch.device("cpu")
    # force t_grok (tiny runs do not grok) so that the delay factor has a known value
    run_analysis(two_runs[0], "grokking", AnalysisSettings(t_grok=20), cpu, NullLogger(), False)
    run_analysis(two_runs[1], "grokking", AnalysisSettings(t_grok=40), cpu, NullLogger(), False)
    logger = InMemoryLogger()
    cfg = CompareConfig(runs=[str(d) for d in two_runs], labels=["baseline", "structured"],
                        xscale="linear", progress=False)
    result = compare_runs(cfg, tmp_path / "out", logger=logger)
    assert [r["delay_factor"] for r in result["runs"]] == [1.0, 2.0]
    rows = list(csv.DictReader((tmp_path / "out" / "runs.csv").open()))
    assert [(r["label"], r["t_grok"], r["delay_factor"]) for r in rows] == [
        ("baseline", "20", "1.0"), ("structured", "40", "2.0")]
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["baseline"] == "baseline" and len(saved["variants"]) == 2
    for name in ("compare", "compare_accuracy", "compare_rank", "compare_entropy"):
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 0
    assert set(logger.tables) == {"compare/runs", "compare/variants"}
    columns, table = logger.tables["compare/runs"]
    assert table[1][columns.index("delay_factor")] == 2.0
    assert logger.summary_values["compare/structured/delay_factor_mean"] == 2.0
    assert {f for f, _, _ in logger.figures} >= {"plots/compare", "plots/compare_rank"}
    assert logger.closed


def compose_compare(*overrides: str) -> CompareConfig:
    with initialize_config_module(config_module="grok.conf", version_base="1.3"):
        return to_compare_config(compose(config_name="compare", overrides=list(overrides)))


def test_compare_a_sweep_analyses_missing_runs(two_runs, tmp_path, capsys):
    cfg = compose_compare(f"sweep={two_runs[0].parent}", "logger=none", "device=cpu")
    compare_runs(cfg, tmp_path / "out")
    out = capsys.readouterr().out
    assert out.count("analysing") == 2
    # labels from the recorded configs; the random split is the default baseline
    assert "baseline: add7-random0.8-power_2l" in out
    assert "add7-structured-block0.8-power_2l" in out
    assert (two_runs[1] / "analysis" / "post_analysis.json").is_file()
    assert (tmp_path / "out" / "variants.csv").is_file()
    assert (tmp_path / "out" / "compare.png").is_file()
    listed = compose_compare(f"runs=[{two_runs[1]},{two_runs[0]}]", "labels=[a,b]")
    assert listed.runs == [str(two_runs[1]), str(two_runs[0])] and listed.labels == ["a", "b"]
    with pytest.raises(ConfigError, match="nothing to compare"):
        compare_runs(compose_compare(), tmp_path / "none")
    with pytest.raises(ConfigError, match="labels has 1 entries for 2 runs"):
        compare_runs(compose_compare(f"sweep={two_runs[0].parent}", "labels=[x]"), tmp_path)
    with pytest.raises(ConfigError, match="xscale='symlog' is invalid"):
        compose_compare("xscale=symlog")


@pytest.mark.parametrize("override,line", [
    ("device=tpu", "error: device='tpu' is invalid: choose auto, cpu, cuda, cuda:N or mps"),
    ("logger.mode=sometimes", "error: logger.mode='sometimes' is invalid: choose one of online, "
                              "offline, disabled"),
])
def test_a_bad_device_or_logger_mode_is_one_line_and_leaves_no_output_folder(
        two_runs, tmp_path, override, line):
    """torch (device) and wandb (mode) raised tracebacks, wandb's after the tables and figures
    were written into the output folder."""
    out = tmp_path / "out"
    result = run_cli(f"runs=[{two_runs[0]},{two_runs[1]}]", override, f"hydra.run.dir={out}",
                     cwd=tmp_path, module="grok.compare")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [line]
    assert not out.exists()


def test_a_refused_comparison_leaves_no_outputs_folder(tmp_path):
    """Hydra creates outputs/compare/<date>/ with the output folder, which alone was removed."""
    result = run_cli("runs=[nowhere]", "logger=none", cwd=tmp_path, module="grok.compare")
    assert result.stderr.strip().splitlines() == ["error: run directory nowhere not found"]
    assert result.returncode == 1 and list(tmp_path.iterdir()) == []


def test_a_sweep_of_seed_batches_lists_every_seed_in_job_order(tmp_path):
    """-m 'seeds=[0,2,10]' a=x,y: jobs 0 and 1 hold seed_<s> run directories; a plain job holds
    checkpoints/ itself; folders that are neither (Hydra's .submitit, logs) are passed over."""
    layout = ["0/seed_0", "0/seed_10", "0/seed_2", "1/seed_0", "2", "10", "notes"]
    for d in layout:
        (tmp_path / d / ("" if d == "notes" else "checkpoints")).mkdir(parents=True)
    assert [d.relative_to(tmp_path).as_posix() for d in runs_under(tmp_path)] == [
        "0/seed_0", "0/seed_2", "0/seed_10", "1/seed_0", "2", "10"]
    with pytest.raises(ConfigError, match="run directory .*2 is given twice; each run counts"):
        run_dirs(CompareConfig(runs=[str(tmp_path / "2")], sweep=str(tmp_path)))


def test_a_preset_sweep_lists_its_jobs_in_hydra_job_order_not_by_name(tmp_path):
    """Preset sweeps name job folders after their overrides; labels=[...] follow the order in
    which Hydra launched them (its job number), which sorting the names would not give."""
    jobs = {"seed=0,split=random": 0, "seed=0,split=structured": 1, "seed=0,split=conflict": 2,
            "seed=1,split=random": 3}
    for name, num in jobs.items():
        for sub in ("checkpoints", ".hydra"):
            (tmp_path / name / sub).mkdir(parents=True)
        (tmp_path / name / ".hydra" / "hydra.yaml").write_text(
            f"hydra:\n  job:\n    name: main\n    num: {num}\n")
    assert [d.name for d in runs_under(tmp_path)] == list(jobs)


@pytest.mark.usefixtures("cli_logging")
@pytest.mark.parametrize("during", ["run_analysis", "plots"])
def test_ctrl_c_stops_a_comparison_with_one_line_and_the_command_that_redoes_it(
        two_runs, tmp_path, monkeypatch, capsys, during):
    """Ctrl-C while a run without analysis is analysed, or while the figures are drawn (the
    tables are written): exit 130 and one line, no traceback; an output folder with nothing
    of the comparison in it is removed, one with part of it is named."""
    if during == "plots":
        for run_dir in two_runs:
            run_analysis(run_dir, "grokking", AnalysisSettings(), torch.device("cpu"),
                         NullLogger(), False)
        monkeypatch.setattr(compare_module.plots, "compare_figures", ctrl_c)
    else:
        monkeypatch.setattr(compare_module, "run_analysis", ctrl_c)
    out = tmp_path / "out"
    args = [f"sweep={two_runs[0].parent}", "logger=none", "progress=false", "device=cpu",
            f"hydra.run.dir={out}"]
    monkeypatch.setattr(sys, "argv", ["grok.compare", *args])
    with no_keyboard_interrupt(), pytest.raises(SystemExit) as stopped:
        compare_module.main()
    assert stopped.value.code == 130
    err = capsys.readouterr().err
    left = f" ({out} holds an unfinished comparison)" if during == "plots" else ""
    assert "Traceback" not in err and err.splitlines()[-1:] == [
        f"stopped by Ctrl-C before the comparison finished{left}; the analyses it ran on runs "
        "that had none are kept. To redo it: python -m grok.compare " + shlex.join(args)]
    assert out.exists() == (during == "plots")


def test_compare_opens_a_wandb_run_of_job_type_compare(tiny_runs, tmp_path, monkeypatch):
    opened = {}

    def fake_build_logger(backend, run_dir, **kwargs):
        opened.update(backend=backend, run_dir=run_dir, **kwargs)
        return InMemoryLogger()

    monkeypatch.setattr(compare_module, "build_logger", fake_build_logger)
    cfg = CompareConfig(runs=[str(d) for d, _ in tiny_runs.values()], progress=False)
    compare_runs(cfg, tmp_path / "out")
    assert opened["backend"] == "wandb" and opened["job_type"] == "compare"
    assert opened["group"] == "compare" and opened["run_dir"] == tmp_path / "out"
    assert opened["config"]["baseline"] == "add7-random0.8-power_2l"
