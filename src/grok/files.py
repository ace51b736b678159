"""Writing run-directory files atomically (a reader, or a restart after kill -9, sees either the
old file or the complete new one), and telling a full or read-only disk from other failures."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from grok.errors import GrokError


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


def remove_if_unused(folder: Path, also: tuple[str, ...] = (),
                     made: list[Path] | tuple[Path, ...] = ()) -> None:
    """Delete a job's output folder that holds nothing but what Hydra wrote before the job began
    (.hydra/, a log file) and the names in `also`, so that a refused command leaves none; then
    the folders of `made` (the parents Hydra created for it, deepest first, e.g.
    outputs/runs/<date>) that this leaves empty."""
    folder = Path(folder)
    if folder.is_dir() and all(hydra_wrote(p) or p.name in also for p in folder.iterdir()):
        shutil.rmtree(folder)
        for parent in made:
            if not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()


def hydra_wrote(path: Path) -> bool:
    """Whether path is what Hydra writes into a job's output folder before the job begins: its
    record (.hydra/) or the job's log file."""
    return path.name == ".hydra" or path.suffix == ".log"


def file_in_the_way(path: Path) -> Path | None:
    """The first of path and its parents that exists but is not a folder (a file that stops path
    from being made as a folder, or below one), or None."""
    path = Path(path)
    return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)


def nearest_existing(path: Path) -> Path:
    """path if it exists, else its deepest parent that does (where a folder would be made)."""
    path = Path(path)
    return next(p for p in (path, *path.parents) if p.exists())


def disk_full(exc: BaseException) -> bool:
    """Whether exc, or an exception it was raised from or during, is "no space left on device"
    (torch.save reports it as a RuntimeError raised while handling the OSError)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def check_writable(folders: list[Path], fix: str) -> None:
    """Refuse, before any work, to write into folders that exist but cannot be written."""
    for folder in folders:
        if folder.exists() and not os.access(folder, os.W_OK):
            raise ReadOnly(f"cannot write into {folder} (read-only); {fix}")


class ReadOnly(GrokError):
    """An output folder cannot be written."""
