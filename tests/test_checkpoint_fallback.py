"""The resume state survives damage: previous.pt is an exact fallback for a bad last.pt."""

import logging
import os

import pytest
import torch

from grok.data.splits import SplitError
from grok.main import run
from grok.tracking import NullLogger
from grok.train import checkpoint as ckpt
from tests.conftest import run_cli, tiny_config
from tests.test_trainer import make_trainer, without_time


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_tensor_byte(path):
    """Flip one byte inside tensor data: torch.load still succeeds, only the checksum notices."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * 0.6)] ^= 0xFF
    path.write_bytes(bytes(data))


def garbage(path):
    path.write_bytes(os.urandom(4096))


def empty(path):
    path.write_bytes(b"")


def test_saving_rotates_last_into_previous(tmp_path):
    ckpt.save_resume_state(tmp_path, {"step": 10, "w": torch.arange(3.0)})
    assert not ckpt.previous_path(tmp_path).exists()
    ckpt.save_resume_state(tmp_path, {"step": 20, "w": torch.arange(3.0) + 1})
    assert torch.load(ckpt.previous_path(tmp_path), weights_only=True)["step"] == 10
    state = ckpt.load_resume_state(tmp_path)
    assert state["step"] == 20 and torch.equal(state["w"], torch.arange(3.0) + 1)
    assert "checksum" not in state


@pytest.mark.parametrize("damage", [truncate, flip_tensor_byte, garbage, empty])
def test_damaged_last_falls_back_to_previous_with_a_warning(tmp_path, caplog, damage):
    ckpt.save_resume_state(tmp_path, {"step": 10, "w": torch.randn(2000)})
    ckpt.save_resume_state(tmp_path, {"step": 20, "w": torch.randn(2000)})
    damage(ckpt.resume_path(tmp_path))
    with caplog.at_level(logging.WARNING, logger="grok.train.checkpoint"):
        state = ckpt.load_resume_state(tmp_path)
    assert state["step"] == 10
    assert "last.pt is damaged" in caplog.text and "previous.pt at step 10" in caplog.text
    # Moved aside, so the next save cannot rotate the damaged file into previous.pt.
    assert not ckpt.resume_path(tmp_path).exists()
    assert (ckpt.resume_path(tmp_path).parent / "last.pt.corrupt").exists()
    ckpt.save_resume_state(tmp_path, {"step": 15})
    assert ckpt.load_resume_state(tmp_path)["step"] == 15
    assert torch.load(ckpt.previous_path(tmp_path), weights_only=True)["step"] == 10


def test_a_save_interrupted_between_the_renames_resumes_from_previous(tmp_path):
    ckpt.save_resume_state(tmp_path, {"step": 10})
    ckpt.save_resume_state(tmp_path, {"step": 20})
    os.replace(ckpt.resume_path(tmp_path), tmp_path / "elsewhere.pt")  # last.pt not yet renamed
    assert ckpt.has_resume_state(tmp_path)
    assert ckpt.load_resume_state(tmp_path)["step"] == 10


def test_no_valid_resume_state_is_a_clear_error(tmp_path):
    ckpt.save_resume_state(tmp_path, {"step": 10})
    ckpt.save_resume_state(tmp_path, {"step": 20})
    truncate(ckpt.resume_path(tmp_path))
    garbage(ckpt.previous_path(tmp_path))
    with pytest.raises(ckpt.NoValidResumeState, match="cannot continue exactly") as err:
        ckpt.load_resume_state(tmp_path)
    assert "last.pt: unreadable" in str(err.value) and "previous.pt: unreadable" in str(err.value)
    assert "hydra.run.dir=" in str(err.value)


def test_fresh_directory_has_no_resume_state_and_stale_temporaries_go(tmp_path):
    assert ckpt.load_resume_state(tmp_path) is None and not ckpt.has_resume_state(tmp_path)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = folder / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = folder / "step_0000010.pt"
    keep.write_bytes(b"x")
    # an analysis or plot killed mid-write leaves its temporary file too
    others = [tmp_path / "plots" / ".curves.png.x1.tmp",
              tmp_path / "analysis" / "trajectory" / ".summary.json.x2.tmp"]
    for path in others:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"half")
    wandb_own = tmp_path / "wandb" / ".run.x3.tmp"
    wandb_own.parent.mkdir()
    wandb_own.write_bytes(b"theirs")
    assert ckpt.load_resume_state(tmp_path) is None
    assert not stale.exists() and keep.exists()
    assert not any(path.exists() for path in others) and wandb_own.exists()


def test_training_continued_from_the_fallback_equals_an_uninterrupted_run(tmp_path):
    cfg = tiny_config("steps=40", "train.resume_every=10")
    straight = make_trainer(cfg, tmp_path / "a")
    rows_straight = straight.fit()

    make_trainer(cfg, tmp_path / "b").fit(until=30)  # last.pt at 30, previous.pt at 20
    flip_tensor_byte(ckpt.resume_path(tmp_path / "b"))
    state = ckpt.load_resume_state(tmp_path / "b")
    assert state["step"] == 20
    resumed = make_trainer(cfg, tmp_path / "b")
    rows = resumed.fit(state)
    assert without_time(rows) == without_time(rows_straight)
    for (name, p), q in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values()):
        assert torch.equal(p, q), name


def test_disk_estimate_matches_the_files_written(tmp_path, capsys):
    cfg = tiny_config("steps=40", "train.checkpoints=8")
    run(cfg, tmp_path, logger=NullLogger())
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("disk: checkpoints need ")
    files = ckpt.list_checkpoints(tmp_path)
    from grok.assemble import model_config
    from grok.data.tasks import build_task
    from grok.model import build_model
    from grok.train.schedule import checkpoint_steps

    task = build_task("add", 7)
    model = build_model(model_config(cfg, task))
    steps = checkpoint_steps(40, 8, "log+linear")
    fresh = ckpt.estimate_disk(tmp_path / "new", model, model.config_dict(),
                               {"op": "add", "p": 7}, steps)
    assert fresh.n_checkpoints == len(files) == len(steps)
    for _, path in files:
        assert abs(path.stat().st_size - fresh.checkpoint_bytes) <= 0.01 * fresh.checkpoint_bytes
    for path in (ckpt.resume_path(tmp_path), ckpt.previous_path(tmp_path)):
        assert abs(path.stat().st_size - fresh.resume_bytes) <= 0.03 * fresh.resume_bytes
    assert fresh.remaining_bytes == fresh.total_bytes
    done = ckpt.estimate_disk(tmp_path, model, model.config_dict(), {"op": "add", "p": 7}, steps)
    assert done.remaining_bytes == 0 and done.total_bytes == fresh.total_bytes


def test_a_run_that_cannot_fit_on_disk_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda _: type("U", (), {"free": 10_000})())
    with pytest.raises(ckpt.InsufficientDisk, match="lower train.checkpoints"):
        run(tiny_config(), tmp_path / "run", logger=NullLogger())
    assert not (tmp_path / "run" / "split.pt").exists()


def test_an_extended_run_counts_only_the_checkpoints_after_its_step_as_still_to_write(
        tmp_path, capsys):
    """Extending a run moves its checkpoint schedule: steps before the resume point that the new
    schedule names were never saved and never will be, so they are not "still to write"."""
    run(tiny_config("steps=40", "train.checkpoints=8"), tmp_path, logger=NullLogger())
    run(tiny_config("steps=80", "train.checkpoints=8"), tmp_path, logger=NullLogger())
    capsys.readouterr()
    before = {s for s, _ in ckpt.list_checkpoints(tmp_path)}
    run(tiny_config("steps=120", "train.checkpoints=8"), tmp_path, logger=NullLogger())
    disk_line = next(line for line in capsys.readouterr().out.splitlines()
                     if line.startswith("disk:"))
    written = {s for s, _ in ckpt.list_checkpoints(tmp_path)} - before
    assert written and min(written) > 80
    one = ckpt.checkpoint_path(tmp_path, max(written)).stat().st_size
    # the two resume files exist already, so only the new analysis checkpoints remain
    assert f"{len(written) * one / 1e3:.1f} kB still to write" in disk_line
    # and the total counts the earlier schedules' checkpoints the run keeps (it gave the new
    # schedule's count alone: "8 analysis checkpoints" for a folder that ends with more)
    assert f"({len(before | written)} analysis checkpoints x" in disk_line


def test_a_split_that_cannot_be_made_stops_the_run_before_the_disk_line(tmp_path, capsys):
    with pytest.raises(SplitError, match="leaves"):
        run(tiny_config("task.p=5", "split=structured", "split.train_frac=0.999"),
            tmp_path / "run", logger=NullLogger())
    assert "disk:" not in capsys.readouterr().out
    assert not list((tmp_path / "run").glob("*.pt"))


def test_resuming_with_another_thread_count_warns(tmp_path, caplog):
    run(tiny_config(), tmp_path, logger=NullLogger())
    state = ckpt.load_resume_state(tmp_path)
    assert state["torch_threads"] == torch.get_num_threads()
    ckpt.save_resume_state(tmp_path, {**state, "torch_threads": torch.get_num_threads() + 1})
    with caplog.at_level(logging.WARNING, logger="grok.main"):
        run(tiny_config(), tmp_path, logger=NullLogger())  # a finished run: only the summary
    assert "not bit-identical" in caplog.text


def test_a_run_directory_is_locked_while_training(tmp_path):
    with ckpt.lock_run_dir(tmp_path):
        with pytest.raises(ckpt.RunDirBusy, match=f"pid {os.getpid()}"):
            with ckpt.lock_run_dir(tmp_path):
                pass
    with ckpt.lock_run_dir(tmp_path):  # released on exit
        pass


def test_a_command_refused_as_busy_leaves_the_holders_directory_alone(tmp_path):
    """The holder may not have written anything yet (just locked): the refused command must not
    take its folder for an unused one and delete it, lock file and all."""
    run_dir = tmp_path / "run"
    with ckpt.lock_run_dir(run_dir):
        refused = run_cli("task.p=7", "steps=10", "logger=none", f"hydra.run.dir={run_dir}",
                          cwd=tmp_path)
        assert refused.returncode == 1 and "in use by another training process" in refused.stderr
        assert (run_dir / ckpt.LOCK_FILE).read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_run_directory_files_get_the_permissions_of_the_umask(tmp_path, umask):
    """Atomic writes go through mkstemp, which alone would leave split.pt, checkpoints and the
    analysis report readable by their owner only; a shared run directory must follow the umask."""
    previous = os.umask(umask)
    try:
        run(tiny_config("analysis=grokking"), tmp_path, logger=NullLogger())
    finally:
        os.umask(previous)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    written = {p.relative_to(tmp_path).as_posix() for p in files}
    assert {"split.pt", "checkpoints/last.pt", "analysis/post_analysis.json",
            "analysis/grokking_arrays.npz"} <= written
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in files}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)
