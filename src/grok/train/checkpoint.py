"""Checkpoint files: atomic writes, weights-only analysis checkpoints and the resume state.

Layout inside a run directory:
  checkpoints/step_0001000.pt  {"step", "model_state", "model_config", "task", "checksum"}
  checkpoints/last.pt          everything needed to continue exactly (see save_resume_state)
  checkpoints/previous.pt      the resume state before last.pt, kept as an exact fallback
All load with torch.load(weights_only=True): they hold only tensors and plain containers.

Every file carries a SHA-256 checksum of its contents (state_digest), because torch.load does not
notice flipped bytes inside tensor data (it skips the zip CRC of tensor records), and analyses of
damaged weights would look like results. The readers (load_checkpoint, load_resume_state) verify
it and raise DamagedCheckpoint for a file that is truncated, unreadable or fails it; a checkpoint
written before checksums were added (no "checksum" key) loads unverified.

A damaged last.pt is moved aside and the run resumes from previous.pt: minibatches are a pure
function of (seed, step), so redoing the steps in between gives the same run bit for bit. A
damaged or missing analysis checkpoint at the step a run resumes at is written again from the
resume state (grok.train.trainer), which holds the same weights.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grok.errors import GrokError, brief
from grok.files import nearest_existing, temp_file_beside

CHECKPOINT_DIR = "checkpoints"
RESUME_FILE = "last.pt"
PREVIOUS_FILE = "previous.pt"
_STEP_FILE = re.compile(r"step_(\d+)\.pt$")
_CHECKSUM_KEY = "checksum"

log = logging.getLogger(__name__)


class DamagedCheckpoint(GrokError):
    """A checkpoint or resume file that is truncated, unreadable or fails its checksum."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} is damaged ({reason})")


class NoValidResumeState(GrokError):
    """The run directory has resume files, but none of them can be read."""


class InsufficientDisk(GrokError):
    """The disk cannot hold the checkpoints the run will write."""


class RunDirBusy(GrokError):
    """Another process is training in the same run directory."""


LOCK_FILE = ".lock"


@contextlib.contextmanager
def lock_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on run_dir while training, so that two processes (the same command
    started twice) can never write one run directory at once. The kernel releases it when the
    process ends, even by kill -9. On file systems without flock the run goes on unlocked."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise RunDirBusy(f"{run_dir} is in use by another training process (pid {holder}); "
                             "wait for it to end or stop it (kill -TERM <pid>), or start this "
                             "command in another directory (hydra.run.dir=...)") from None
        except OSError as exc:  # e.g. ENOLCK/EOPNOTSUPP on some network file systems
            log.warning("cannot lock %s (%s); make sure no other process uses it", path, exc)
            yield
            return
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (a crash after os.replace must not undo it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_temp(obj: Any, path: Path) -> Path:
    """torch.save `obj` to a fsynced temporary file next to `path`; return its name."""
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`.

    A reader (or a restart after kill -9) sees either the old file or the complete new one.
    """
    path = Path(path)
    tmp = _write_temp(obj, path)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete temporary files left by a write that was killed (they are never complete): ours
    (grok.files), in the run directory's own folders; W&B's folder is left alone."""
    run_dir = Path(run_dir)
    analysis = run_dir / "analysis"
    folders = [run_dir, run_dir / CHECKPOINT_DIR, run_dir / "logs", run_dir / "plots", analysis,
               *analysis.rglob("*/")]  # "*/": its subfolders (none when it does not exist)
    stale = [p for folder in folders if folder.is_dir() for p in folder.glob(".*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:07d}.pt"


def resume_path(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / RESUME_FILE


def previous_path(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / PREVIOUS_FILE


def has_resume_state(run_dir: Path) -> bool:
    """Whether run_dir holds a run that was started (a resume file exists, valid or not)."""
    return resume_path(run_dir).exists() or previous_path(run_dir).exists()


def _weights_payload(step: int, model_state: dict, model_config: dict, task: dict) -> dict:
    """The contents of a weights-only checkpoint file, checksum included."""
    return _with_checksum({"step": step, "model_state": model_state, "model_config": model_config,
                           "task": task})


def save_weights(run_dir: Path, step: int, model: torch.nn.Module, model_config: dict,
                 task: dict) -> Path:
    path = checkpoint_path(run_dir, step)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save(_weights_payload(step, state, model_config, task), path)
    return path


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every weights-only checkpoint, sorted by step."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    found = []
    for path in folder.glob("step_*.pt"):
        match = _STEP_FILE.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """A weights-only checkpoint {"step", "model_state", "model_config", "task"}, checksum
    verified. Raises DamagedCheckpoint (naming the file) if it is truncated, unreadable or fails
    its checksum, FileNotFoundError if it does not exist."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint {path}")
    return _read_verified(path, map_location)


# -------------------------------------------------------------------------------- checksums
def state_digest(obj: Any) -> str:
    """SHA-256 of a nested structure of dicts, lists, tensors and plain values (tensors by dtype,
    shape and bytes), independent of the device the tensors live on."""
    h = hashlib.sha256()

    def feed(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(f"D{len(x)}".encode())
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)}".encode())
            for v in x:
                feed(v)
        else:
            h.update(f"V{x!r}".encode())

    feed(obj)
    return h.hexdigest()


def _with_checksum(contents: dict) -> dict:
    """What a checkpoint file holds: `contents` and the checksum that _read_verified checks."""
    return {**contents, _CHECKSUM_KEY: state_digest(contents)}


def _read_verified(path: Path, map_location: str | torch.device) -> dict:
    """Load a checkpoint or resume file and check its checksum (a file written before checksums
    has none and loads unverified); raise DamagedCheckpoint saying what is wrong."""
    try:
        contents = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, garbage, empty file, ...
        raise DamagedCheckpoint(path, f"unreadable ({brief(exc, 'empty file')})") from None
    if not isinstance(contents, dict) or "step" not in contents:
        raise DamagedCheckpoint(path, "not a checkpoint: no step")
    saved = contents.pop(_CHECKSUM_KEY, None)
    if saved is not None and saved != state_digest(contents):
        raise DamagedCheckpoint(path, "checksum mismatch")
    return contents


# ----------------------------------------------------------------------------- resume state
def save_resume_state(run_dir: Path, state: dict) -> None:
    """Write `state` (with its checksum) as last.pt; the former last.pt becomes previous.pt.

    Order: the new state is complete and fsynced in a temporary file before anything is renamed,
    so at every instant last.pt or previous.pt holds a complete state.
    """
    last, previous = resume_path(run_dir), previous_path(run_dir)
    tmp = _write_temp(_with_checksum(state), last)
    try:
        if last.exists():
            os.replace(last, previous)
        os.replace(tmp, last)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(last.parent)


def load_resume_state(run_dir: Path, map_location: str | torch.device = "cpu") -> dict | None:
    """The newest valid resume state of run_dir: last.pt, else previous.pt; None for a new run.

    A damaged last.pt is renamed to last.pt.corrupt (so the next save cannot rotate it into
    previous.pt) and a warning names the file and the step the run goes back to. Raises
    NoValidResumeState when resume files exist but none is valid.
    """
    remove_stale_temporaries(run_dir)
    last, previous = resume_path(run_dir), previous_path(run_dir)
    problems = []
    for path in (last, previous):
        if not path.is_file():
            continue
        try:
            state = _read_verified(path, map_location)
        except DamagedCheckpoint as exc:
            problems.append(f"{path.name}: {exc.reason}")
            if path == last:
                os.replace(last, last.with_name(last.name + ".corrupt"))
            continue
        if problems:
            log.warning("%s is damaged (%s); moved it to %s.corrupt and resuming from %s at step "
                        "%d instead: the steps after it are redone and give the same result",
                        last, problems[0].split(": ", 1)[1], last.name, path.name, state["step"])
        elif path == previous:
            log.info("no %s (a save was interrupted); resuming from %s at step %d",
                     last.name, path.name, state["step"])
        return state
    if problems:
        raise NoValidResumeState(
            f"no valid resume state in {last.parent} ({'; '.join(problems)}), so the run cannot "
            "continue exactly. Start it fresh in another directory (hydra.run.dir=...), or "
            f"delete the folder {last.parent} to restart it from step 0 in this directory")
    return None


def resume_step(run_dir: Path) -> int | None:
    """The step a rerun of the training command continues from (that of the resume state
    load_resume_state would pick), read without moving any file; None if there is none."""
    for path in (resume_path(run_dir), previous_path(run_dir)):
        if path.is_file():
            with contextlib.suppress(DamagedCheckpoint):
                return int(_read_verified(path, "cpu")["step"])
    return None


# ------------------------------------------------------------------------------- disk space
@dataclass
class DiskEstimate:
    """Bytes the checkpoints of one run take: weights-only files plus the two resume files."""

    n_checkpoints: int
    checkpoint_bytes: int  # one weights-only checkpoint
    resume_bytes: int  # one resume state (last.pt; previous.pt is the same size)
    remaining_bytes: int  # what is not on disk yet (less than total for a resumed run)
    free_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.n_checkpoints * self.checkpoint_bytes + 2 * self.resume_bytes

    def line(self, ahead: int = 0) -> str:
        """The disk line; `ahead`: the bytes the seeds before this one in its seed batch still
        write, which share the free space with it."""
        batch = (f" ({_human(ahead + self.remaining_bytes)} with the seeds before it)"
                 if ahead else "")
        return (f"disk: checkpoints need {_human(self.total_bytes)} ({self.n_checkpoints} "
                f"analysis checkpoints x {_human(self.checkpoint_bytes)} + resume state 2 x "
                f"{_human(self.resume_bytes)}); {_human(self.remaining_bytes)} still to write"
                f"{batch}, {_human(self.free_bytes)} free")


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _serialized_size(obj: Any) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


def estimate_disk(run_dir: Path, model: torch.nn.Module, model_config: dict, task: dict,
                  steps: list[int], trained_to: int | None = None) -> DiskEstimate:
    """Estimate the checkpoint bytes of a run that saves weights at `steps`, by serializing what
    those files hold: the model's weights, and for the resume state the weights with AdamW's two
    moment buffers per parameter and the RNG state. A run resumed at step `trained_to` writes only
    the checkpoints from it on (an extended run's schedule can name earlier steps it never saved;
    the one at trained_to is written again from the resume state if it is missing), and the total
    counts the checkpoints of its earlier schedules that stay in the folder."""
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt_bytes = _serialized_size(_weights_payload(max(steps, default=0), weights, model_config,
                                                   task))
    params = [p.detach().cpu() for p in model.parameters()]
    optimizer = {"state": {i: {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(p),
                               "exp_avg_sq": torch.zeros_like(p)} for i, p in enumerate(params)},
                 "param_groups": [{"params": list(range(len(params)))}]}
    resume_bytes = _serialized_size({"model": weights, "optimizer": optimizer,
                                     "torch_rng": torch.get_rng_state(),
                                     _CHECKSUM_KEY: "0" * 64}) + 1024  # + scalars and identity
    to_come = {s for s in steps if trained_to is None or s >= trained_to}
    missing = sum(not checkpoint_path(run_dir, s).exists() for s in to_come)
    # an extended run keeps the checkpoints of its earlier schedule beside the new one's
    kept = {s for s, _ in list_checkpoints(run_dir)}
    missing_resume = sum(not p.exists() for p in (resume_path(run_dir), previous_path(run_dir)))
    return DiskEstimate(n_checkpoints=len(to_come | kept), checkpoint_bytes=ckpt_bytes,
                        resume_bytes=resume_bytes,
                        remaining_bytes=missing * ckpt_bytes + missing_resume * resume_bytes,
                        free_bytes=shutil.disk_usage(nearest_existing(run_dir)).free)
