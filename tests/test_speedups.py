"""Each optional speed-up trains the same function: exactly where the maths is identical (thread
count), within rounding where only the order of floating-point operations changes (fused AdamW,
torch.compile), within bf16 rounding for train.precision=bf16."""

import pytest
import torch

from grok.device import AUTO_COMPILE_STEPS, use_compile
from grok.errors import GrokError
from grok.naming import identity
from grok.train import checkpoint as ckpt
from grok.train.trainer import build_settings, make_optimizer
from tests.conftest import compose_config, requires_cpp_compiler, tiny_config
from tests.test_trainer import make_trainer, without_time

SMALL = ("task.p=13", "model.d_model=32", "model.d_mlp=64", "train.batch_size=32", "steps=30")


def fit(tmp_path, name, *overrides, n_threads=None):
    before = torch.get_num_threads()
    if n_threads:
        torch.set_num_threads(n_threads)
    try:
        return without_time(make_trainer(tiny_config(*SMALL, *overrides), tmp_path / name).fit())
    finally:
        torch.set_num_threads(before)


def assert_rows_close(a, b, rtol, atol, acc_atol=0.0):
    """Rows agree within tolerance; accuracies (fractions of a 34-pair test set) may differ by
    acc_atol where rounding can flip a near-tie."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ra:
            tol = max(atol, acc_atol) if key.endswith("/acc") else atol
            assert ra[key] == pytest.approx(rb[key], rel=rtol, abs=tol), (ra["step"], key)


def test_thread_count_does_not_change_the_run(tmp_path):
    assert fit(tmp_path, "one", n_threads=1) == fit(tmp_path, "two", n_threads=2)


def test_fused_adamw_steps_equal_foreach_within_rounding():
    settings = make_trainer(tiny_config(), "unused").s
    torch.manual_seed(0)
    start = [torch.randn(64, 33), torch.randn(7)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(20)]
    results = []
    for fused in (True, False):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        settings.fused_optimizer = fused
        opt = make_optimizer(params, settings, torch.device("cpu"))
        assert opt.defaults["fused"] is (True if fused else None)
        for g in grads:
            for p, gp in zip(params, g):
                p.grad = gp.clone()
            opt.step()
        results.append(params)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_fused_and_foreach_runs_agree(tmp_path):
    assert_rows_close(fit(tmp_path, "fused"), fit(tmp_path, "foreach",
                                                  "train.fused_optimizer=false"),
                      rtol=1e-3, atol=1e-4)


def test_bf16_run_follows_the_fp32_run(tmp_path):
    fp32, bf16 = fit(tmp_path, "fp32"), fit(tmp_path, "bf16", "train.precision=bf16")
    assert fp32 != bf16
    assert_rows_close(fp32, bf16, rtol=0.05, atol=0.02, acc_atol=0.07)  # two test pairs


def test_bf16_is_part_of_the_run_identity_and_fp32_identity_is_unchanged():
    assert "train.precision" not in identity(tiny_config())
    assert identity(tiny_config("train.precision=bf16"))["train.precision"] == "bf16"


@pytest.mark.slow
@requires_cpp_compiler
def test_compiled_run_matches_eager(tmp_path):
    assert_rows_close(fit(tmp_path, "eager"), fit(tmp_path, "compiled", "train.compile=true"),
                      rtol=1e-3, atol=1e-4)


@pytest.mark.slow
@requires_cpp_compiler
def test_compiled_run_resumes_exactly(tmp_path):
    cfg = tiny_config(*SMALL, "train.compile=true", "train.resume_every=10")
    straight = without_time(make_trainer(cfg, tmp_path / "a").fit())
    make_trainer(cfg, tmp_path / "b").fit(until=15)
    resumed = make_trainer(cfg, tmp_path / "b")
    assert without_time(resumed.fit(ckpt.load_resume_state(tmp_path / "b"))) == straight


def test_compile_without_a_cpp_compiler_fails_before_writing_anything(tmp_path, no_cpp_compiler):
    from grok.main import run

    with pytest.raises(GrokError, match="needs a C.. compiler .* train.compile=false"):
        run(tiny_config("train.compile=true"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_compile_auto_compiles_long_cpu_runs_only(cpp_compiler):
    cpu = torch.device("cpu")
    assert use_compile("auto", cpu, AUTO_COMPILE_STEPS) is True
    assert use_compile("auto", cpu, AUTO_COMPILE_STEPS - 1) is False
    assert use_compile("auto", torch.device("cuda"), 10 * AUTO_COMPILE_STEPS) is False
    assert use_compile(True, cpu, 10) is True and use_compile(False, cpu, 10**6) is False


def test_compile_auto_trains_eagerly_without_a_cpp_compiler(no_cpp_compiler, caplog):
    assert use_compile("auto", torch.device("cpu"), 10**6) is False
    assert "no C++ compiler found, so this run trains eagerly" in caplog.text
    with pytest.raises(GrokError, match="needs a C.. compiler"):
        use_compile(True, torch.device("cpu"), 10)


def test_the_headline_long_run_compiles_and_the_default_run_does_not(cpp_compiler):
    cpu = torch.device("cpu")
    long_run = compose_config("split=structured", "steps=400000")
    assert build_settings(long_run, identity(long_run), cpu).compile is True
    assert build_settings(compose_config(), {}, cpu).compile is False
