"""The overrides and commands that messages tell the user to run, written so that they paste."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path

# Characters Hydra reads unquoted in a value and a shell leaves alone; anything else (a space,
# ',' which would make a sweep, '=', '(', a non-ASCII letter) needs Hydra's quotes.
_PLAIN = re.compile(r"[A-Za-z0-9_./-]*")


def override(key: str, value: object) -> str:
    """`key=value` as one shell word that Hydra reads back as `value`."""
    text = str(value)
    if not _PLAIN.fullmatch(text):
        # inside Hydra's quotes a backslash is literal unless it comes before a quote (or the
        # closing one): those are doubled, and quotes escaped
        text = "'" + re.sub(r"(\\*)('|$)", _escape_quote, text) + "'"
    return shlex.quote(f"{key}={text}")


def _escape_quote(match: re.Match) -> str:
    return match.group(1) * 2 + ("\\'" if match.group(2) else "")


def typed(module: str, overrides: Sequence[str]) -> str:
    """`python -m module overrides...`, each override quoted as the shell needs: the command that
    was typed (Hydra's task overrides), to run again."""
    return shlex.join(["python", "-m", module, *overrides])


def analyze(run_dir: Path, *more: str) -> str:
    """The command that analyses run_dir."""
    return " ".join(["python -m grok.analyze", override("run_dir", run_dir), *more])


def elsewhere(run_dir: Path, suffix: str, sweep_dir: Path | None = None) -> str:
    """The override that starts a refused run fresh beside run_dir. In a sweep (`sweep_dir`, its
    hydra.sweep.dir) hydra.run.dir does not apply: Hydra places each job under hydra.sweep.dir,
    so it names a fresh sweep folder."""
    if sweep_dir is not None:
        return override("hydra.sweep.dir", f"{sweep_dir}-{suffix}") + " (for the whole sweep)"
    return override("hydra.run.dir", f"{run_dir}-{suffix}")
