"""Writing run-directory files atomically: a reader, or a restart after kill -9, sees either the
old file or the complete new one."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def temp_file_beside(path: Path) -> tuple[int, str]:
    """(fd, name) of a new temporary file in path's folder, to be renamed over `path`.

    mkstemp creates files readable by their owner alone; the file gets the permissions open()
    would give it (0666 minus the umask), so a run directory stays readable by the colleagues
    the umask allows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call write(f) on a temporary file next to `path`, then rename it over `path`."""
    fd, tmp = temp_file_beside(Path(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_if_unused(folder: Path, also: tuple[str, ...] = ()) -> None:
    """Delete a job's output folder that holds nothing but what Hydra wrote before the job began
    (.hydra/, a log file) and the names in `also`, so that a refused command leaves none."""
    folder = Path(folder)
    if folder.is_dir() and all(p.name in (".hydra", *also) or p.suffix == ".log"
                               for p in folder.iterdir()):
        shutil.rmtree(folder)
