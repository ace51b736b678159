"""`python -m grok.bench --quick`: every section runs and reports its figures (not timed)."""

import json
import logging

import pytest
import torch

from grok import bench
from grok.bench import PlainStep, build_trainer, main
from grok.config import compose
from tests.conftest import ctrl_c, no_keyboard_interrupt


def test_quick_bench_reports_every_section(tmp_path, capsys):
    warned = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warned.append
    logging.getLogger("grok.analysis").addHandler(handler)
    try:
        assert main(["--quick", "--json", str(tmp_path / "bench.json")]) == 0
    finally:
        logging.getLogger("grok.analysis").removeHandler(handler)
    # the analysed toy run does not grok: the suites' warnings about it are not the figures'
    assert [r.getMessage() for r in warned] == []
    result = json.loads((tmp_path / "bench.json").read_text())
    out = capsys.readouterr().out
    assert "power_2l step" in out and json.loads(out[out.index("\n{") + 1:]) == result
    assert {"mode", "machine", "peak", "step", "eval", "default", "long", "seeds",
            "analysis"} <= set(result)
    assert result["peak"]["fp32_gflops"] > 0
    for name in ("power_2l", "nanda_1l"):
        step = result["step"][name]
        for key in ("steps_per_s", "gflop_per_step", "gflops", "fraction_of_peak", "peak_gflops",
                    "plain_steps_per_s", "speedup_vs_plain", "bf16_steps_per_s"):
            assert step[key] > 0, (name, key)
        # the fast step skips work the plain step does
        assert step["gflop_per_step"] < step["plain_gflop_per_step"]
    assert result["eval"]["eval_s"] > 0 and result["eval"]["default_evals"] > 1
    assert result["default"]["steps"] == 200 and result["default"]["process_wall_s"] > 0
    assert result["long"]["steps"] == 400_000 and result["long"]["projected_h"] > 0
    assert set(result["seeds"]) == {"single_trainer_steps_per_s", "K=1", "K=2"}
    # every configured suite, end to end on a run of the default experiment's 3 checkpoints
    assert set(result["analysis"]) == {"forward", "grokking", "trajectory", "full"}
    for name, suite in result["analysis"].items():
        assert suite["checkpoints"] == 3 and suite["checkpoints_per_s"] > 0, name


def test_bench_plain_step_trains_the_same_function(tmp_path):
    """The baseline the speed-up is measured against computes the model's own logits."""
    trainer = build_trainer(compose("task.p=11", "model.d_model=32", "model.d_mlp=64"),
                            tmp_path, torch.device("cpu"))
    plain = PlainStep(trainer)
    torch.testing.assert_close(plain.logits(trainer.train_x), trainer.model(trainer.train_x).logits,
                               rtol=1e-5, atol=1e-5)
    loss = plain()
    assert loss > 0 and plain.step == 1


@pytest.mark.parametrize("args,message", [
    (["--device", "tpu"], "error: device='tpu' is invalid: choose auto, cpu, cuda, cuda:N or mps"),
    (["--json", "{file}/bench.json"], "cannot write a file there"),
    (["--sections", ","], "--sections names no section; choose from peak,"),
])
def test_bad_flags_stop_with_a_usage_error_before_measuring(tmp_path, capsys, args, message):
    """They raised a traceback: the device at the first section, the --json path after every
    section had been measured."""
    (tmp_path / "file").write_text("not a folder")
    args = [a.format(file=tmp_path / "file") for a in args]
    with pytest.raises(SystemExit) as exit_:
        main(["--quick", "--sections", "peak", *args])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert message in err and out == ""  # nothing was measured


def test_ctrl_c_keeps_the_figures_of_the_sections_already_measured(tmp_path, monkeypatch, capsys):
    """Ctrl-C in a later section: the table, the JSON (also --json) of the earlier ones, a line
    saying so, exit status 130; before, a traceback and nothing printed."""
    monkeypatch.setattr(bench, "bench_default", ctrl_c)
    saved = tmp_path / "bench.json"
    with no_keyboard_interrupt():
        status = main(["--quick", "--sections", "peak,default", "--json", str(saved)])
    assert status == 130
    out, err = capsys.readouterr()
    assert "matmul peak" in out and "default run" not in out
    result = json.loads(saved.read_text())
    assert result["peak"]["fp32_gflops"] > 0 and "default" not in result
    assert result["stopped_by"] == "SIGINT"
    assert err.splitlines()[-1] == ("stopped by Ctrl-C: the figures above are those of the "
                                    "sections measured before it")
