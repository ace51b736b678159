"""Printed overrides and commands paste back as what they name, whatever the path."""

import shlex
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from grok import commands
from tests.conftest import run_cli

PATHS = ["/tmp/runs/2026-11-22/04-31-00", "/tmp/odd dir/ünï cödé",
         "outputs/sweep/seed=0,split=random", "/tmp/it's (1)",
         "/tmp/back\\slash", "/tmp/x\\'y", "/tmp/end\\"]


@pytest.mark.parametrize("path", PATHS)
def test_an_override_is_one_shell_word_that_hydra_reads_back_as_the_value(path):
    [word] = shlex.split(commands.override("hydra.run.dir", path))
    parsed = OverridesParser.create().parse_override(word)
    assert parsed.key_or_group == "hydra.run.dir" and parsed.value() == path


def test_plain_paths_stay_unquoted():
    assert commands.override("run_dir", "/tmp/a-b_c.d/e") == "run_dir=/tmp/a-b_c.d/e"
    assert commands.analyze("/tmp/odd dir").startswith("python -m grok.analyze 'run_dir=")


def test_outside_a_sweep_a_fresh_start_is_a_run_directory_beside_the_old_one():
    assert commands.elsewhere("/tmp/run", "1a2b3c") == "hydra.run.dir=/tmp/run-1a2b3c"
    assert commands.elsewhere("/tmp/sweep/3", "1a2b3c", sweep_dir=Path("/tmp/sweep")) == \
        "hydra.sweep.dir=/tmp/sweep-1a2b3c (for the whole sweep)"


def test_a_refused_sweep_job_names_another_sweep_folder(tmp_path):
    """In a sweep hydra.run.dir does not apply: a numbered job that now holds another
    configuration (the value lists changed) is pointed at a fresh hydra.sweep.dir."""
    sweep = tmp_path / "odd sweep"
    common = ("-m", "task.p=7", "steps=10", "logger=none", "analysis=none")
    assert run_cli(*common, "seed=0", f"hydra.sweep.dir='{sweep}'", cwd=tmp_path).returncode == 0
    refused = run_cli(*common, "seed=1", f"hydra.sweep.dir='{sweep}'", cwd=tmp_path)
    assert refused.returncode == 1
    assert f"'hydra.sweep.dir='\"'\"'{sweep}-" in refused.stderr
    assert "(for the whole sweep)" in refused.stderr and "hydra.run.dir" not in refused.stderr
