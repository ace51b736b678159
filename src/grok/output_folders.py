"""The Hydra callbacks of grok.main and grok.compare that look at the output folder before Hydra
creates it or writes into it (hydra.callbacks in conf/config.yaml and conf/compare.yaml)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from grok import commands
from grok.assemble import check_output_folder
from grok.errors import GrokError
from grok.files import file_in_the_way, nearest_existing

# the parents of this run's output folder that did not exist before Hydra made it, deepest first
NEW_FOLDERS: list[Path] = []


class NoteNewFolders(Callback):
    """hydra.callbacks of grok.main and grok.compare: notes, before Hydra creates the output
    folder, which of its parents it creates with it (outputs/runs/<date>/ on a first run), so
    that a refused command removes them too (grok.files.remove_if_unused). An output folder
    that is a file, lies under one or cannot be written is refused here: Hydra's mkdir raised a
    traceback."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.run.dir)).absolute()
        _refuse_unwritable("hydra.run.dir", folder)
        NEW_FOLDERS[:] = [p for p in folder.parents if not p.exists()]

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_unwritable("hydra.sweep.dir", Path(str(config.hydra.sweep.dir)).absolute())


class RefuseNonRunFolder(Callback):
    """hydra.callbacks of grok.main: a hydra.run.dir that exists and holds files but no run (a
    project folder, say) is refused before Hydra writes its record and log into it. (The sweeper
    checks a sweep's job folders; grok_sweeper.)"""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_output_folder(Path(str(config.hydra.run.dir)), "hydra.run.dir")
        except GrokError as exc:
            _refuse(str(exc))


def _refuse_unwritable(key: str, folder: Path) -> None:
    """Refuse an output folder that cannot be made or written: a file in the way, or a folder
    (the output folder or its deepest existing parent) this user cannot write into, where
    Hydra's mkdir or its record raised a traceback."""
    file = file_in_the_way(folder)
    if file is not None:
        _refuse(f"{commands.override(key, folder)} cannot be made: {file} is a file; "
                f"choose another {key}")
    existing = nearest_existing(folder)
    if not os.access(existing, os.W_OK | os.X_OK):
        _refuse(f"{commands.override(key, folder)}: cannot write into {existing} (read-only or "
                f"no permission); choose another {key}")


def _refuse(problem: str) -> None:
    # SystemExit, not GrokError: no entry point is running yet to turn it into one line
    print(f"error: {problem}", file=sys.stderr)
    raise SystemExit(1)
