"""Fault injection on real training processes: start `python -m grok.main`, kill it (also in the
middle of a checkpoint write), and compare what it leaves with an uninterrupted run; and damage
to a file that torch.load does not notice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import torch

from grok.train import checkpoint as ckpt


def start(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """`python -m grok.main args...` in its own session (so a group kill spares pytest), with
    output in files next to nothing that a test compares."""
    full_env = {**os.environ, "CI": "true", "HYDRA_FULL_ERROR": "", **(env or {})}
    log = open(Path(cwd) / f"proc-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "grok.main", *args], cwd=cwd, env=full_env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = Path(log.name)  # type: ignore[attr-defined]
    log.close()
    return proc


def output(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text()  # type: ignore[attr-defined]


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for a process that should succeed; return its output."""
    code = proc.wait(timeout=timeout)
    assert code == 0, output(proc)
    return output(proc)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the process and its children (the W&B service, if any), as when a node
    dies; wait for the process."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def wait_until(predicate, proc: subprocess.Popen, timeout: float = 300,
               poll: float = 0.002) -> bool:
    """Poll until predicate() is true (True) or the process has ended (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return bool(predicate())
        time.sleep(poll)
    raise TimeoutError("the training process did not get there in time")


def metrics_steps(run_dir: Path) -> list[int]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass
    return steps


def kill_during_write(proc: subprocess.Popen, folder: Path, prefix: str) -> Path | None:
    """SIGKILL the process while it writes a file whose temporary name starts with `prefix`
    (e.g. ".last.pt." for the resume state) in `folder`. The process is frozen with SIGSTOP as
    soon as the temporary file shows up; if the file is still there once it is frozen, the
    write (or the rename that completes it) has not finished, and SIGKILL lands inside it.
    Otherwise it continues and the next write is tried. Returns the temporary file left behind,
    or None if the run ended first."""
    # Left over by an earlier kill (the new process deletes them when it loads its state).
    stale = set(folder.glob(prefix + "*.tmp")) if folder.is_dir() else set()

    def temporary() -> list[Path]:
        return [p for p in folder.glob(prefix + "*.tmp") if p not in stale] if folder.is_dir() \
            else []

    while True:

        if not wait_until(lambda: bool(temporary()), proc, poll=0.0005):
            return None
        os.killpg(proc.pid, signal.SIGSTOP)
        caught = temporary()
        if caught:
            kill_group(proc)
            return caught[0]
        os.killpg(proc.pid, signal.SIGCONT)


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time/elapsed_s"} for r in rows]


def read_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def assert_same_training(run_dir: Path, reference: Path) -> None:
    """Same metric rows (wall time aside), the same analysis checkpoints bit for bit, and the
    same final model and optimizer state, with no temporary file left behind."""
    run_dir = Path(run_dir)
    assert without_time(read_rows(run_dir)) == without_time(read_rows(reference))
    got, want = ckpt.list_checkpoints(run_dir), ckpt.list_checkpoints(reference)
    assert [s for s, _ in got] == [s for s, _ in want]
    for (step, a), (_, b) in zip(got, want):
        wa, wb = ckpt.load_checkpoint(a)["model_state"], ckpt.load_checkpoint(b)["model_state"]
        assert all(torch.equal(wa[k], wb[k]) for k in wb), f"weights differ at step {step}"
    leftovers = [p for d in (run_dir, run_dir / "checkpoints") for p in d.glob(".*.tmp")]
    assert not leftovers, leftovers
    last, ref = ckpt.load_resume_state(run_dir), ckpt.load_resume_state(reference)
    assert last["step"] == ref["step"]
    assert all(torch.equal(last["model"][k], ref["model"][k]) for k in ref["model"])
    sa, sb = last["optimizer"]["state"], ref["optimizer"]["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sb for k in sb[i])


def flip_byte_in_tensor_data(path: Path) -> None:
    """Flip one byte in the middle of the largest tensor of a torch.save file (a zip archive whose
    records are stored uncompressed). torch.load reads such a file without complaint: it does not
    check the zip CRC of tensor records, so the tensor just holds another value."""
    with zipfile.ZipFile(path) as archive:
        record = max((r for r in archive.infolist() if "/data/" in r.filename),
                     key=lambda r: r.file_size)
    data = bytearray(Path(path).read_bytes())
    # The data follows the record's local header: 30 bytes, then the name and an extra field
    # whose lengths it gives at offsets 26 and 28 (the extra field may differ from the central
    # directory's copy, so it is read here).
    start = record.header_offset
    name_len = int.from_bytes(data[start + 26:start + 28], "little")
    extra_len = int.from_bytes(data[start + 28:start + 30], "little")
    data[start + 30 + name_len + extra_len + record.file_size // 2] ^= 0xFF
    Path(path).write_bytes(bytes(data))
