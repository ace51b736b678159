"""Shared fixtures: W&B kept offline in temporary folders, and tiny composed configs."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from grok.config import Config, register_configs, to_config

register_configs()


@pytest.fixture(autouse=True, scope="session")
def _wandb_offline(tmp_path_factory):
    """No test may reach the network or read the user's W&B settings."""
    root = tmp_path_factory.mktemp("wandb")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        env[name] = str(root / name.lower())
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def compose_config(*overrides: str) -> Config:
    """The checked Config that `python -m grok.main <overrides>` would run."""
    with initialize_config_module(config_module="grok.conf", version_base="1.3"):
        return to_config(compose(config_name="config", overrides=list(overrides)))


TINY = ("task.p=7", "steps=40", "train.eval_every=10", "train.checkpoints=6",
        "train.resume_every=10", "model.d_model=32", "model.d_mlp=64", "logger=none",
        "device=cpu")


def tiny_config(*overrides: str) -> Config:
    return compose_config(*TINY, *overrides)


@contextlib.contextmanager
def no_keyboard_interrupt():
    """A KeyboardInterrupt in the block fails the test instead of ending the pytest session."""
    try:
        yield
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt")


@pytest.fixture
def cli_logging():
    """For a test that runs an entry point's main() in this process: main() sets up the "grok"
    logger for a terminal (its own stderr handler, not propagated), and Hydra the root logger
    (a handler on this test's captured stdout); put both back afterwards, so that later tests'
    caplog sees the warnings again and nothing writes to a closed stream."""
    loggers = [logging.getLogger("grok"), logging.getLogger()]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    yield
    for lg, (handlers, level, propagate) in zip(loggers, saved):
        lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate


def ctrl_c(*args, **kwargs):
    """Stands in for a function of the code under test: Ctrl-C arrives while it runs (SIGINT to
    this process, which Python's handler turns into a KeyboardInterrupt)."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(10)  # the KeyboardInterrupt comes first
    raise AssertionError("SIGINT did not interrupt")


def run_cli(*args: str, cwd: Path, module: str = "grok.main", env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m <module> args...` as a user would, with W&B offline and no progress bar."""
    full_env = {**os.environ, "CI": "true", "HYDRA_FULL_ERROR": "", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """Two tiny runs trained with analysis=grokking, {"random": (run_dir, logger), "structured":
    ...}, each with the config record a CLI run keeps. Shared: copy one before changing it."""
    import yaml

    from grok.config import config_dict
    from grok.main import run
    from grok.tracking import InMemoryLogger

    runs = {}
    for name, overrides in (("random", ()), ("structured", ("split=structured", "seed=1"))):
        cfg = tiny_config("analysis=grokking", "train.checkpoints=8", *overrides)
        run_dir = tmp_path_factory.mktemp(name)
        logger = InMemoryLogger()
        run(cfg, run_dir, logger=logger)
        record = run_dir / ".hydra" / "accepted" / "config.yaml"
        record.parent.mkdir(parents=True)
        record.write_text(yaml.safe_dump(config_dict(cfg)))
        runs[name] = (run_dir, logger)
    return runs


@pytest.fixture
def no_cpp_compiler(monkeypatch):
    """torch.compile finds no C++ compiler (as on a machine without g++)."""
    from torch._inductor import cpp_builder, exc

    def no_compiler():
        raise exc.InvalidCxxCompiler

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)


@pytest.fixture
def cpp_compiler(monkeypatch):
    """torch.compile finds a C++ compiler (for tests of the decision only, which compile
    nothing: they then pass on a machine without g++ too)."""
    from torch._inductor import cpp_builder

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", lambda: "g++")


def _has_cpp_compiler() -> bool:
    from grok.device import check_compile_support
    from grok.errors import GrokError

    try:
        check_compile_support(torch.device("cpu"))
    except GrokError:
        return False
    return True


# Tests that really compile: skipped, with the reason, where torch.compile cannot build kernels.
requires_cpp_compiler = pytest.mark.skipif(
    not _has_cpp_compiler(), reason="torch.compile on the CPU needs a C++ compiler (g++ or CXX)")
