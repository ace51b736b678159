"""Output-folder checks of grok.files and how the entry points use them."""

import errno
import os

import pytest

from grok import analyze as analyze_module
from grok.analyze import AnalyzeConfig, analyze
from grok.files import ReadOnly, disk_full
from grok.tracking import InMemoryLogger


def raised_from(inner):
    try:
        try:
            raise inner
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None
    except RuntimeError as exc:
        return exc


def test_disk_full_is_found_behind_the_error_torch_save_raises():
    assert disk_full(raised_from(OSError(errno.ENOSPC, "No space left on device")))
    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not disk_full(raised_from(OSError(errno.EACCES, "Permission denied")))
    assert not disk_full(RuntimeError("something else"))


def test_analysing_a_read_only_run_is_refused_before_any_work(tiny_runs, monkeypatch):
    """A colleague's run on a read-only mount: one line, before the checkpoints are read and
    before a logger opens (root ignores permissions, so the check is simulated)."""
    run_dir = tiny_runs["random"][0]
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) != str(run_dir / "analysis"))
    monkeypatch.setattr(analyze_module, "analyse_loaded",
                        lambda *a, **k: pytest.fail("analysed a read-only run"))
    with pytest.raises(ReadOnly, match=r"cannot write into .*analysis \(read-only\); the "
                                       r"analysis writes into the run directory: copy it"):
        analyze(AnalyzeConfig(run_dir=str(run_dir), progress=False), logger=InMemoryLogger())
