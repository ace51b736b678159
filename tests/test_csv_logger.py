"""logger=csv: the run directory's logs/ stay one row per (step, key) and one merged summary,
whatever jobs log into them (training, a resumed fragment, grok.analyze run again)."""

import csv
import json

from grok.analyze import analyze, to_analyze_config
from grok.main import run
from grok.tracking import CsvLogger
from tests.conftest import tiny_config
from tests.test_analyze_cli import compose_analyze


def rows(run_dir):
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        return list(csv.reader(f))


def test_a_value_logged_again_replaces_the_earlier_one_and_summaries_merge(tmp_path):
    first = CsvLogger(tmp_path)
    first.log({"train/loss": 2.0, "test/acc": 0.1}, step=10)
    first.log({"train/loss": 1.0}, step=20)
    first.summary({"final/step": 20, "final/test_acc": 0.1})
    first.close()
    # the second job redoes step 20 (as after a crash), adds step 30 and another summary key
    second = CsvLogger(tmp_path)
    second.log({"train/loss": 0.5}, step=20)
    second.log({"train/loss": 0.25}, step=30)
    second.summary({"analysis/t_grok": 20, "final/test_acc": 0.9})
    second.close()
    assert rows(tmp_path) == [["step", "key", "value"], ["10", "train/loss", "2.0"],
                              ["10", "test/acc", "0.1"], ["20", "train/loss", "0.5"],
                              ["30", "train/loss", "0.25"]]
    summary = json.loads((tmp_path / "logs" / "summary.json").read_text())
    assert summary == {"final/step": 20, "final/test_acc": 0.9, "analysis/t_grok": 20}


def test_a_row_torn_by_a_crash_is_dropped_when_the_next_job_opens_the_file(tmp_path):
    logger = CsvLogger(tmp_path)
    logger.log({"train/loss": 2.0}, step=10)
    logger.close()
    with open(tmp_path / "logs" / "metrics.csv", "a") as f:
        f.write("20,train/lo")  # killed mid-row: no value, no newline
    CsvLogger(tmp_path).close()
    assert rows(tmp_path) == [["step", "key", "value"], ["10", "train/loss", "2.0"]]


def test_a_damaged_summary_is_replaced_with_a_warning(tmp_path, caplog):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "summary.json").write_text('{"final/step": 2')
    logger = CsvLogger(tmp_path)
    logger.summary({"final/step": 40})
    logger.close()
    assert json.loads((tmp_path / "logs" / "summary.json").read_text()) == {"final/step": 40}
    assert "summary.json is damaged" in caplog.text


def test_analysing_a_csv_run_twice_keeps_the_training_summary_and_adds_no_rows(tmp_path):
    run(tiny_config("logger=csv", "analysis=none"), tmp_path, logger=CsvLogger(tmp_path))
    trained = json.loads((tmp_path / "logs" / "summary.json").read_text())
    assert trained["final/step"] == 40 and "time/wall_s" in trained
    cfg = to_analyze_config(compose_analyze(f"run_dir={tmp_path}", "logger=csv", "device=cpu",
                                            "progress=false"))
    analyze(cfg)
    once = rows(tmp_path)
    analyze(cfg)
    assert rows(tmp_path) == once
    keys = [key for _, key, _ in once[1:]]
    assert "train/loss" in keys and "rank/final" in keys
    summary = json.loads((tmp_path / "logs" / "summary.json").read_text())
    assert {k: summary[k] for k in trained} == trained
    assert "analysis/t_grok_method" in summary
