"""Analysis checkpoints (step_*.pt) carry a checksum: a damaged one is refused with one line that
names the file and what to do, and a rerun of a finished run writes its final one again."""

import json
import logging
import shutil

import pytest
import torch

from grok.analysis.base import load_model
from grok.analysis.runner import AnalysisError, AnalysisSettings, run_analysis
from grok.main import run
from grok.tracking import NullLogger
from grok.train import checkpoint as ckpt
from tests.conftest import run_cli, tiny_config
from tests.faults import flip_byte_in_tensor_data

CPU = torch.device("cpu")
TRAINED_WITH = ("analysis=grokking", "train.checkpoints=8")  # the tiny_runs fixture's command


@pytest.fixture
def copy(tiny_runs, tmp_path):
    """A fresh copy of a finished tiny run (trained to step 40) that a test may damage."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_runs["random"][0], dst)
    return dst


def weights(path):
    return ckpt.load_checkpoint(path)["model_state"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def report_of(run_dir):
    return json.loads((run_dir / "analysis" / "post_analysis.json").read_text())


def test_torch_load_misses_flipped_bytes_in_a_checkpoint_but_its_checksum_does_not(copy):
    _, path = ckpt.list_checkpoints(copy)[2]
    before = weights(path)
    flip_byte_in_tensor_data(path)
    after = torch.load(path, weights_only=True)["model_state"]  # no error from torch
    assert not same_weights(before, after)
    with pytest.raises(ckpt.DamagedCheckpoint) as err:
        ckpt.load_checkpoint(path)
    assert str(err.value) == f"{path} is damaged (checksum mismatch)"
    with pytest.raises(ckpt.DamagedCheckpoint):
        load_model(path)  # what the analyses and grok.bench load checkpoints with


def test_a_truncated_checkpoint_is_refused_with_a_one_line_message(copy):
    _, path = ckpt.list_checkpoints(copy)[2]
    truncate(path)
    with pytest.raises(ckpt.DamagedCheckpoint) as err:
        ckpt.load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path} is damaged (unreadable (") and "\n" not in message


def test_checkpoints_written_before_checksums_still_load_and_analyse(copy):
    checkpoints = ckpt.list_checkpoints(copy)
    saved = torch.load(checkpoints[-1][1], weights_only=True)
    assert saved["checksum"] == ckpt.state_digest({k: v for k, v in saved.items()
                                                   if k != "checksum"})
    for _, path in checkpoints:  # as the runs trained before this change wrote them
        data = torch.load(path, weights_only=True)
        del data["checksum"]
        ckpt.atomic_save(data, path)
    step, path = checkpoints[-1]
    assert ckpt.load_checkpoint(path).keys() == {"step", "model_state", "model_config", "task"}
    assert load_model(path)[0] == step
    run_analysis(copy, "grokking", AnalysisSettings(), CPU, NullLogger(), progress=False)
    assert report_of(copy)["checkpoint_steps"] == [s for s, _ in checkpoints]


def test_grok_analyze_refuses_a_damaged_checkpoint_in_one_line_before_writing(copy, tmp_path):
    """A damaged checkpoint stops the analysis rather than being left out: leaving it out would
    quietly move the checkpoints selected around t_grok to other steps."""
    steps = [s for s, _ in ckpt.list_checkpoints(copy)]
    path = ckpt.checkpoint_path(copy, steps[2])
    flip_byte_in_tensor_data(path)
    report = (copy / "analysis" / "post_analysis.json").read_bytes()
    result = run_cli(f"run_dir={copy}", "logger=csv", "device=cpu", cwd=tmp_path,
                     module="grok.analyze")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {path} is damaged (checksum mismatch): delete it and run the analysis again, "
        f"which then leaves out step {steps[2]}"]
    assert (copy / "analysis" / "post_analysis.json").read_bytes() == report
    assert not (copy / "logs").exists()  # refused before the logger opened

    path.unlink()  # as the message says
    run_analysis(copy, "grokking", AnalysisSettings(), CPU, NullLogger(), progress=False)
    assert report_of(copy)["checkpoint_steps"] == steps[:2] + steps[3:]


def test_the_analysis_at_the_end_of_training_refuses_a_damaged_checkpoint(copy):
    """The training command of a finished run redoes its analysis, which refuses the damaged
    checkpoint as grok.analyze does (that step is behind the resume state: it is lost)."""
    step, path = ckpt.list_checkpoints(copy)[2]
    flip_byte_in_tensor_data(path)
    with pytest.raises(AnalysisError) as err:
        run(tiny_config(*TRAINED_WITH), copy, logger=NullLogger())
    assert str(err.value) == (f"{path} is damaged (checksum mismatch): delete it and run the "
                              f"analysis again, which then leaves out step {step}")


@pytest.mark.parametrize("damage", [flip_byte_in_tensor_data, truncate, lambda p: p.unlink()],
                         ids=["flipped", "truncated", "missing"])
def test_rerunning_a_finished_run_writes_its_final_checkpoint_again(copy, caplog, capsys,
                                                                     damage):
    """last.pt holds the weights at the final step, so the training command, rerun, rewrites
    the final checkpoint exactly; the analysis's message says so."""
    final, path = ckpt.list_checkpoints(copy)[-1]
    want = weights(path)
    damage(path)
    missing = not path.exists()
    if not missing:
        with pytest.raises(AnalysisError, match="rerun the command that trained the run "
                                                r"\(same overrides, same run directory\) to write "
                                                "it again from the resume state, or delete it"):
            run_analysis(copy, "grokking", AnalysisSettings(), CPU, NullLogger(), progress=False)
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="grok.train.trainer"):
        run(tiny_config(*TRAINED_WITH), copy, logger=NullLogger())
    disk = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("disk:"))
    assert ("0 B still to write" in disk) != missing  # a missing file is counted as to write
    assert same_weights(weights(path), want)
    assert f"{path} was " in caplog.text
    assert f"wrote it again from the resume state at step {final}" in caplog.text
    assert report_of(copy)["checkpoint_steps"][-1] == final


def test_an_empty_checkpoint_is_refused_with_one_line_naming_what_torch_said(copy):
    _, path = ckpt.list_checkpoints(copy)[2]
    path.write_bytes(b"")
    with pytest.raises(ckpt.DamagedCheckpoint) as err:
        ckpt.load_checkpoint(path)
    assert err.value.reason == "unreadable (EOFError: empty file)"  # torch's EOFError says nothing
