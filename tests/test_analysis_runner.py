"""The grokking suite on real (tiny) run directories: in training, post hoc, and the error paths."""

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from grok.analysis import runner as runner_module
from grok.analysis import scan as scan_module
from grok.analysis.base import Probe, forward_pass, load_model
from grok.analysis.grokking import summary_line
from grok.analysis.runner import (
    SUITES,
    AnalysisError,
    AnalysisSettings,
    LoadedRun,
    analysis_lines,
    load_run,
    run_analysis,
    trajectory_step,
)
from grok.analysis.tgrok import detect_t_grok
from grok.config import ANALYSIS_SUITES
from grok.data.splits import SplitError, load_split, make_split, save_split
from grok.data.tasks import build_task
from grok.tracking import NullLogger
from grok.train import checkpoint as ckpt

CPU = torch.device("cpu")
REPORT_FIELDS = {
    "t_grok", "t_grok_method", "thresholds", "checkpoint_steps", "relative_steps",
    "test_accuracy", "final_layer_rank", "avg_rank", "avg_entropy", "selected_checkpoints",
    "full_analyses", "training_metrics", "analysis_metrics", "correlations",
    "step_test_acc_0.95", "step_test_acc_0.99", "alignment", "before_after", "warnings"}


@pytest.fixture
def trained(tiny_runs):
    """A tiny run trained with analysis=grokking, and the logger it used (never modified)."""
    return tiny_runs["random"]


@pytest.fixture
def copy(trained, tmp_path):
    """A fresh copy of the trained run directory that a test may damage."""
    dst = tmp_path / "run"
    shutil.copytree(trained[0], dst)
    return dst


def report_of(run_dir):
    return json.loads((run_dir / "analysis" / "post_analysis.json").read_text())


def test_suites_offered_by_the_config_are_the_runners():
    assert set(ANALYSIS_SUITES) == set(SUITES)


def test_the_full_suite_prints_one_line_per_step(copy):
    results = run_analysis(copy, "full", AnalysisSettings(), CPU, NullLogger(), progress=False)
    lines = analysis_lines(results, copy)
    assert [line.split(":")[0] for line in lines] == ["grokking", "trajectory"]
    assert lines[1].endswith(f"files {copy / 'analysis' / 'trajectory'}")


@pytest.mark.parametrize("record", [True, False])
def test_every_analysis_figure_is_titled_with_the_runs_name(copy, monkeypatch, record):
    """A figure opened outside its run (or beside another run's) says whose it is: its W&B run
    name from the config record, else the run folder's name. The trajectory panels name the
    metric on their y axes (they said "to final" and "consecutive checkpoints")."""
    from grok import plots

    if not record:
        shutil.rmtree(copy / ".hydra")
    titles, ylabels = {}, {}
    save = plots._save

    def recording(fig, path):
        titles[path.name] = fig._suptitle.get_text() if fig._suptitle else fig.axes[0].get_title()
        ylabels[path.name] = [ax.get_ylabel() for ax in fig.axes]
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", recording)
    run_analysis(copy, "full", AnalysisSettings(), CPU, NullLogger(), progress=False)
    name = "add7-random0.8-power_2l-s0" if record else copy.name
    assert len(titles) == 9 and sorted(titles) == sorted(p.name for p in (copy / "plots").glob(
        "[gt]*.png"))
    for figure, title in titles.items():
        assert title.startswith(f"{name}: "), figure
    for metric in ("logit cosine", "linear CKA", "JS divergence"):
        assert f"{metric}\nto the final checkpoint" in ylabels["trajectory_to_final.png"]
        assert f"{metric}\nto the previous checkpoint" in ylabels["trajectory_consecutive.png"]


def test_training_runs_the_suite_and_logs_it(trained):
    run_dir, logger = trained
    report = report_of(run_dir)
    assert REPORT_FIELDS <= set(report)
    steps = [s for s, _ in ckpt.list_checkpoints(run_dir)]
    assert report["checkpoint_steps"] == steps and len(report["full_analyses"]) == len(steps)
    assert "analysis/t_grok" in logger.summary_values
    assert logger.summary_values["time/analysis_s"] > 0
    logged = {step: row for step, row in logger.rows if "rank/final" in row}
    assert sorted(logged) == steps
    assert [logged[s]["rank/final"] for s in steps] == pytest.approx(report["final_layer_rank"])
    assert {"rank/layer_1", "rank/layer_2", "entropy/layer_2_head_4", "entropy/avg"} <= set(
        logged[steps[-1]])
    names = {name for name, _, _ in logger.figures}
    assert {step for _, _, step in logger.figures} == {steps[-1]}
    assert {"plots/grokking", "plots/grokking_accuracy", "plots/grokking_rank",
            "plots/grokking_entropy"} <= names
    for name in ("grokking", "grokking_accuracy", "grokking_rank", "grokking_entropy"):
        assert (run_dir / "plots" / f"{name}.png").stat().st_size > 0
    arrays = np.load(run_dir / "analysis" / "grokking_arrays.npz")
    assert arrays["rank"].shape == (len(steps), 2) and arrays["entropy"].shape == (len(steps), 2, 4)


def test_report_matches_an_independent_recomputation(trained):
    run_dir, _ = trained
    report = report_of(run_dir)
    split = load_split(run_dir / "split.pt")
    task = build_task(split.task["op"], split.task["p"])
    metrics = {json.loads(line)["step"]: json.loads(line)
               for line in (run_dir / "metrics.jsonl").read_text().splitlines()}
    for row in report["full_analyses"]:
        _, model = load_model(ckpt.checkpoint_path(run_dir, row["step"]))
        out = model(task.tokens(), return_cache=True)
        for layer in range(2):
            x = out.residuals[layer].detach().double().numpy()
            s = np.linalg.svd(x - x.mean(0), compute_uv=False)
            q = s / s.sum()
            assert row["rank"][layer] == pytest.approx(math.exp(-(q * np.log(q)).sum()), rel=1e-6)
            a = out.attention[layer].detach().double().numpy()  # (n, heads, 3)
            h = -(a * np.log(a)).sum(-1).mean(0)
            assert row["entropy"][layer] == pytest.approx(h.tolist(), rel=1e-6)
            assert row["entropy_normalized"][layer] == pytest.approx((h / math.log(3)).tolist(),
                                                                     rel=1e-6)
        assert row["test/acc"] == pytest.approx(metrics[row["step"]]["test/acc"], abs=1e-9)
        assert row["train/acc"] == pytest.approx(metrics[row["step"]]["train/acc"], abs=1e-9)
    assert report["final_layer_rank"] == [r["rank"][-1] for r in report["full_analyses"]]
    assert report["avg_entropy"] == pytest.approx(
        [float(np.mean(r["entropy"])) for r in report["full_analyses"]])
    assert report["training_metrics"]["test/acc"] == [m["test/acc"] for m in metrics.values()]


def test_post_hoc_analysis_equals_the_in_training_one(trained, copy):
    before = report_of(copy)
    (copy / "analysis" / "post_analysis.json").unlink()
    results = run_analysis(copy, "grokking", AnalysisSettings(), CPU, NullLogger(),
                           progress=False)
    assert report_of(copy) == before
    assert results["grokking"]["t_grok"] == before["t_grok"]
    assert run_analysis(copy, "none", AnalysisSettings(), CPU, NullLogger()) == {}


def test_forced_t_grok_sets_relative_steps_and_selection(copy):
    steps = [s for s, _ in ckpt.list_checkpoints(copy)]
    t = steps[len(steps) // 2]
    run_analysis(copy, "grokking", AnalysisSettings(t_grok=t, before=2, near=1, after=2), CPU,
                 NullLogger(), progress=False)
    report = report_of(copy)
    assert report["t_grok"] == t and report["t_grok_method"] == "forced"
    assert report["relative_steps"] == [s - t for s in steps]
    sel = report["selected_checkpoints"]
    assert sel["near"] == [t] and sel["before"] == [steps[0], steps[steps.index(t) - 1]]
    assert sel["after"] == [steps[steps.index(t) + 1], steps[-1]]
    assert [d["position"] for d in sel["details"]] == ["before", "before", "near", "after",
                                                       "after"]
    lag = report["alignment"]["final_layer_rank_sharpest_drop"]
    assert lag["lag"] == lag["step"] - t
    line = summary_line(report, copy)
    assert line.startswith(f"grokking: t_grok {t} (forced); ")
    reached = report["step_test_acc_0.99"]
    assert f", >= 0.99 {'never' if reached is None else f'at {reached}'};" in line
    assert f"final_layer_rank drop at {lag['step']} (lag {lag['lag']:+d})" in line
    assert report["before_after"]["after"]["step"] >= t >= report["before_after"]["before"]["step"]


@pytest.mark.parametrize("metrics", [None, "{not json"])
def test_without_metric_rows_t_grok_comes_from_the_checkpoints_with_a_warning(copy, metrics):
    """A missing metrics.jsonl, or one whose only line was cut short: the warning says both."""
    path = copy / "metrics.jsonl"
    if metrics is None:
        path.unlink()
    else:
        path.write_text(metrics)
    run_analysis(copy, "grokking", AnalysisSettings(), CPU, NullLogger(), progress=False)
    assert "metrics.jsonl is missing or holds no whole row: t_grok is detected on the test " \
           "accuracy recomputed at the checkpoints" in report_of(copy)["warnings"]


def test_undetected_t_grok_is_null_with_a_warning(copy, caplog):
    flat = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    for row in flat:
        row["test/acc"] = 0.1
    (copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in flat))
    with caplog.at_level(logging.WARNING, logger="grok"):
        run_analysis(copy, "grokking", AnalysisSettings(), CPU, NullLogger(), progress=False)
    report = report_of(copy)
    assert report["t_grok"] is None and report["relative_steps"] is None
    assert report["selected_checkpoints"]["near"] == [] and report["before_after"] is None
    message = "maximum accuracy increase below threshold (0.0000 < 0.15"
    assert any(message in w for w in report["warnings"])
    assert message in caplog.text
    assert summary_line(report, copy).startswith(
        "grokking: t_grok not detected; test acc >= 0.95 never, >= 0.99 never; ")
    # the recomputed accuracies no longer match the edited metrics: that is flagged too
    assert any("differs from metrics.jsonl" in w for w in report["warnings"])


def test_results_of_an_earlier_analysis_that_stop_short_are_pointed_out(copy, caplog):
    """A run analysed with analysis=full, then resumed and trained on: the end-of-run grokking
    suite rewrites its report, while the trajectory files still cover the shorter run."""
    last = ckpt.list_checkpoints(copy)[-1][0]
    summary = copy / "analysis" / "trajectory" / "summary.json"
    summary.parent.mkdir(parents=True)
    summary.write_text(json.dumps({"checkpoint_steps": [0, last]}))  # up to date: no warning
    with caplog.at_level(logging.WARNING, logger="grok.analysis.runner"):
        run_analysis(copy, "grokking", AnalysisSettings(), CPU, NullLogger(), progress=False)
    assert not [r for r in caplog.records if r.name == "grok.analysis.runner"]
    summary.write_text(json.dumps({"checkpoint_steps": [0, 10]}))
    with caplog.at_level(logging.WARNING, logger="grok.analysis.runner"):
        run_analysis(copy, "grokking", AnalysisSettings(), CPU, NullLogger(), progress=False)
    assert [r.getMessage() for r in caplog.records if r.name == "grok.analysis.runner"] == [
        f"{summary} covers checkpoints up to step 10 only, from an earlier analysis; the run has "
        f"checkpoints to step {last} now (python -m grok.analyze run_dir={copy} "
        "analysis=trajectory updates it)"]


def test_missing_run_directory_and_missing_checkpoints(tmp_path, copy):
    with pytest.raises(AnalysisError, match="run directory .* not found"):
        run_analysis(tmp_path / "nope", "grokking", AnalysisSettings(), CPU, NullLogger())
    (tmp_path / "afile").write_text("")
    with pytest.raises(AnalysisError, match="run directory .*afile is a file, not a folder; pass"):
        run_analysis(tmp_path / "afile", "grokking", AnalysisSettings(), CPU, NullLogger())
    shutil.rmtree(copy / "checkpoints")
    with pytest.raises(AnalysisError, match="no checkpoints"):
        run_analysis(copy, "grokking", AnalysisSettings(), CPU, NullLogger())
    with pytest.raises(AnalysisError, match="not a suite"):
        run_analysis(copy, "bogus", AnalysisSettings(), CPU, NullLogger())


def test_a_seed_batch_a_sweep_or_another_folder_is_not_taken_for_a_run(tmp_path):
    batch, sweep, other = tmp_path / "batch", tmp_path / "sweep", tmp_path / "other"
    for d in ("batch/seed_3/checkpoints", "batch/seed_1/checkpoints", "sweep/0/checkpoints",
              "other/plots"):
        (tmp_path / d).mkdir(parents=True)
    cases = [(batch, f"{batch} is a seed batch, not one run: analyse one of its runs, e.g. "
                     f"run_dir={batch / 'seed_1'} (grok.compare sweep={batch} compares them all)"),
             (sweep, f"{sweep} is a sweep, not one run: analyse one of its runs, e.g. "
                     f"run_dir={sweep / '0'} (grok.compare sweep={sweep} compares them all)"),
             (other, f"{other} is not a run directory (no split.pt, no checkpoints/); pass the "
                     "folder of a training run, e.g. run_dir=outputs/runs/<date>/<time>")]
    for folder, message in cases:
        with pytest.raises(AnalysisError) as refused:
            run_analysis(folder, "grokking", AnalysisSettings(), CPU, NullLogger())
        assert str(refused.value) == message


def test_missing_damaged_and_foreign_splits_are_refused(copy):
    split_path = copy / "split.pt"
    original = split_path.read_bytes()
    split_path.unlink()
    with pytest.raises(SplitError, match="no split file"):
        run_analysis(copy, "grokking", AnalysisSettings(), CPU, NullLogger())
    split_path.write_bytes(original)
    data = torch.load(split_path, weights_only=True)
    data["test_idx"] = data["test_idx"][:-1]
    torch.save(data, split_path)
    with pytest.raises(SplitError, match="checksum"):
        run_analysis(copy, "grokking", AnalysisSettings(), CPU, NullLogger())
    save_split(make_split(build_task("sub", 7), "random", 0.5, seed=0), split_path)
    with pytest.raises(SplitError, match="checkpoints were trained on add mod 7"):
        run_analysis(copy, "grokking", AnalysisSettings(), CPU, NullLogger())
    save_split(make_split(build_task("add", 7), "random", 0.5, seed=5), split_path)
    # with the config record Hydra keeps for CLI runs, the seed mismatch is an error; without
    # it, only the recomputed accuracies give it away (a warning)
    with pytest.raises(SplitError, match="does not match the run's config: it has seed=5"):
        run_analysis(copy, "grokking", AnalysisSettings(), CPU, NullLogger())
    shutil.rmtree(copy / ".hydra")
    run_analysis(copy, "grokking", AnalysisSettings(), CPU, NullLogger(), progress=False)
    assert any("differs from metrics.jsonl" in w for w in report_of(copy)["warnings"])


def foreign_checkpoint(path):
    """A whole checkpoint file whose weights do not fit its model: not damaged (it is written
    without a checksum, as before checksums were added), only foreign. A damaged file is refused
    instead, see test_checkpoint_checksum."""
    data = ckpt.load_checkpoint(path)
    ckpt.atomic_save({**data, "model_state": {}}, path)


def test_a_foreign_checkpoint_is_skipped_with_a_warning(copy, caplog):
    steps = [s for s, _ in ckpt.list_checkpoints(copy)]
    foreign_checkpoint(ckpt.checkpoint_path(copy, steps[1]))
    with caplog.at_level(logging.WARNING, logger="grok"):
        run_analysis(copy, "grokking", AnalysisSettings(), CPU, NullLogger(), progress=False)
    report = report_of(copy)
    assert report["checkpoint_steps"] == steps[:1] + steps[2:]
    assert any("skipping unusable checkpoint" in w and f"{steps[1]:07d}" in w
               for w in report["warnings"])
    assert "skipping unusable checkpoint" in caplog.text
    for _, path in ckpt.list_checkpoints(copy):
        foreign_checkpoint(path)
    with pytest.raises(AnalysisError, match="could be used"):
        run_analysis(copy, "grokking", AnalysisSettings(), CPU, NullLogger(), progress=False)


def test_cuda_out_of_memory_falls_back_to_the_cpu(trained, monkeypatch):
    """Simulated: loading onto 'cuda' raises OutOfMemoryError; the scan continues on the CPU."""
    run_dir, _ = trained
    real_load = scan_module.load_model
    attempts = []

    def load(path, device):
        attempts.append(torch.device(device).type)
        if torch.device(device).type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real_load(path, device)

    monkeypatch.setattr(scan_module, "load_model", load)
    monkeypatch.setattr(scan_module, "_on_device", lambda probe, device: probe)
    split = load_split(run_dir / "split.pt")
    task = build_task(split.task["op"], split.task["p"])
    checkpoints = ckpt.list_checkpoints(run_dir)
    result = scan_module.scan_checkpoints(checkpoints, Probe.full(task, split),
                                          [lambda m, p, f: {"n": len(f.logits)}],
                                          torch.device("cuda"), progress=False)
    assert result.device.type == "cpu" and result.steps == [s for s, _ in checkpoints]
    assert attempts == ["cuda"] + ["cpu"] * len(checkpoints)
    assert len(result.warnings) == 1 and "CUDA out of memory" in result.warnings[0]
    assert all(r["n"] == task.n for r in result.results)


def test_forward_pass_is_shared_by_all_analyzers(copy, monkeypatch):
    """Each checkpoint is loaded once and run forward once, whatever the number of analyzers."""
    calls = {"load": 0, "forward": 0}

    def counting(fn, key):
        def wrapped(*args, **kwargs):
            calls[key] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(scan_module, "load_model", counting(load_model, "load"))
    monkeypatch.setattr(scan_module, "forward_pass", counting(forward_pass, "forward"))
    run_analysis(copy, "grokking", AnalysisSettings(), CPU, NullLogger(), progress=False)
    n = len(ckpt.list_checkpoints(copy))
    assert calls == {"load": n, "forward": n}


@pytest.mark.parametrize("monotone", [True, False])
def test_the_trajectory_suite_alone_detects_t_grok_with_the_grokking_settings(monkeypatch,
                                                                               monotone):
    """Run alone, the trajectory suite marks the t_grok the grokking suite would find: with
    analysis.monotone=false the raw curve's (here the recovery from a late spike)."""
    steps = list(range(0, 1100, 50))
    acc = [0.1 if s < 300 else 1.0 for s in steps]
    acc[15:17] = [0.05, 0.05]  # a collapse at 750-800, recovered at 850
    expected = detect_t_grok(steps, acc, monotone=monotone).t_grok
    assert expected == (300 if monotone else 850)
    run = LoadedRun(Path("run"), build_task("add", 7), None, [],
                    [{"step": s, "test/acc": a} for s, a in zip(steps, acc)])
    monkeypatch.setattr(runner_module, "run_trajectory_suite",
                        lambda *args, t_grok, **kwargs: {"t_grok": t_grok})
    out = trajectory_step(run, AnalysisSettings(monotone=monotone), t_grok=None)
    assert out["t_grok"] == expected


def test_a_run_killed_while_writing_a_metrics_row_is_analysed_without_that_row(copy, caplog):
    path = copy / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:25])
    loaded = load_run(copy)
    assert loaded.metrics == [json.loads(line) for line in lines[:-1]]
    assert "its last line is cut short" in caplog.text
