import json

import pytest
import torch

from grok.data.splits import make_split
from grok.data.tasks import build_task
from grok.model import build_model
from grok.naming import identity
from grok.tracking import InMemoryLogger
from grok.train import checkpoint as ckpt
from grok.train.trainer import (
    DamagedMetrics,
    ResumeMismatch,
    Trainer,
    TrainingDiverged,
    build_settings,
    read_metrics,
)
from tests.conftest import tiny_config


def make_trainer(cfg, run_dir, logger=None):
    task = build_task(cfg.task.op, cfg.task.p)
    split = make_split(task, cfg.split.name, cfg.split.train_frac, cfg.split_seed,
                       cfg.split.pattern)
    torch.manual_seed(cfg.seed)
    model = build_model({"arch": "transformer", "d_vocab": task.vocab_size,
                         "n_classes": task.n_classes, "n_ctx": 3,
                         "n_layers": cfg.model.n_layers, "d_model": cfg.model.d_model,
                         "n_heads": cfg.model.n_heads, "d_mlp": cfg.model.d_mlp,
                         "act": cfg.model.act, "layer_norm": cfg.model.layer_norm})
    return Trainer(model, task, split, build_settings(cfg, identity(cfg), torch.device("cpu")),
                   logger or InMemoryLogger(), run_dir, torch.device("cpu"))


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "time/elapsed_s"} for r in rows]


@pytest.mark.parametrize("batch", ["8", "full"])
def test_resumed_run_equals_uninterrupted(tmp_path, batch):
    cfg = tiny_config("steps=40", f"train.batch_size={batch}")
    straight = make_trainer(cfg, tmp_path / "a")
    rows_straight = straight.fit()

    make_trainer(cfg, tmp_path / "b").fit(until=20)
    resumed = make_trainer(cfg, tmp_path / "b")  # a new process would build everything anew
    rows_resumed = resumed.fit(ckpt.load_resume_state(tmp_path / "b"))

    assert without_time(rows_resumed) == without_time(rows_straight)
    for (name, p), q in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values()):
        assert torch.equal(p, q), name
    for step, _ in ckpt.list_checkpoints(tmp_path / "a"):
        a = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path / "a", step))["model_state"]
        b = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path / "b", step))["model_state"]
        assert all(torch.equal(a[k], b[k]) for k in a), step


def test_resume_drops_metric_rows_after_the_saved_state(tmp_path):
    cfg = tiny_config("steps=40", "train.resume_every=20", "train.eval_every=5")
    make_trainer(cfg, tmp_path).fit()
    state = ckpt.load_resume_state(tmp_path)
    assert state["step"] == 40
    # Simulate a crash after step 20's resume state but with rows past it already written.
    make_trainer(cfg, tmp_path / "c").fit(until=20)
    with open(tmp_path / "c" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 25, "train/loss": 9.0}) + "\n")
    rows = make_trainer(cfg, tmp_path / "c").fit(ckpt.load_resume_state(tmp_path / "c"))
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows})
    assert all(r["train/loss"] != 9.0 for r in rows)


def test_a_row_cut_short_after_the_resume_state_is_dropped_and_redone(tmp_path, caplog):
    """kill -9 in the middle of writing a row leaves it torn; it comes after the resume state
    (which is saved after the row), so it is dropped and redone."""
    cfg = tiny_config("steps=40", "train.resume_every=20", "train.eval_every=5")
    straight = make_trainer(cfg, tmp_path / "a").fit()
    make_trainer(cfg, tmp_path / "b").fit(until=20)
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
        f.write(json.dumps(straight[5])[:30])
    rows = make_trainer(cfg, tmp_path / "b").fit(ckpt.load_resume_state(tmp_path / "b"))
    assert without_time(rows) == without_time(straight)
    assert "its last line is cut short" in caplog.text


@pytest.mark.parametrize("damage", ["deleted", "last row cut", "rows lost"])
def test_resume_refuses_a_metrics_file_that_lost_rows(tmp_path, damage):
    """Rows up to the resume state cannot be redone: continuing would detect t_grok on what is
    left, so the resume is refused with the way out."""
    cfg = tiny_config("steps=40", "train.resume_every=20", "train.eval_every=5")
    make_trainer(cfg, tmp_path).fit(until=20)
    path = tmp_path / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    if damage == "deleted":
        path.unlink()
    elif damage == "last row cut":
        path.write_text("".join(lines[:-1]) + lines[-1][:20])
    else:
        path.write_text("".join(lines[:2]))
    damaged = path.read_text() if path.exists() else None
    with pytest.raises(ResumeMismatch, match="had evaluated step 20 when its resume state was "
                                             "saved: its history is damaged"):
        make_trainer(cfg, tmp_path).fit(ckpt.load_resume_state(tmp_path))
    assert (path.read_text() if path.exists() else None) == damaged  # left as it was


def test_a_garbled_metrics_line_is_a_one_line_error(tmp_path):
    make_trainer(tiny_config(), tmp_path).fit()
    path = tmp_path / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2] + ["{not json\n"] + lines[3:]))
    with pytest.raises(DamagedMetrics, match="line 3 is not valid JSON"):
        read_metrics(path, torn_tail_ok=True)
    with pytest.raises(DamagedMetrics, match="is missing"):
        read_metrics(tmp_path / "nothing.jsonl")


def test_a_run_that_diverged_is_not_continued(tmp_path):
    cfg = tiny_config("optim.lr=1e30", "optim.warmup_steps=0")
    with pytest.raises(TrainingDiverged):
        make_trainer(cfg, tmp_path).fit()
    with pytest.raises(ResumeMismatch, match="diverged .* start a new run with a lower optim.lr"):
        make_trainer(cfg, tmp_path).fit(ckpt.load_resume_state(tmp_path))


def test_metrics_rows_and_logger(tmp_path):
    logger = InMemoryLogger()
    rows = make_trainer(tiny_config(), tmp_path, logger).fit()
    keys = {"step", "train/loss", "train/acc", "test/loss", "test/acc", "lr", "weight_norm",
            "time/elapsed_s"}
    assert all(set(r) == keys for r in rows)
    steps = [r["step"] for r in rows]
    assert steps[0] == 0 and steps[-1] == 40 and steps == sorted(steps)
    assert [s for s, _ in logger.rows] == steps
    times = [r["time/elapsed_s"] for r in rows]
    assert times == sorted(times)
    assert rows[1]["lr"] < rows[-1]["lr"] == pytest.approx(1e-3)  # warmup


def test_checkpoints_load_weights_only(tmp_path):
    trainer = make_trainer(tiny_config(), tmp_path)
    trainer.fit()
    found = ckpt.list_checkpoints(tmp_path)
    assert found[0][0] == 0 and found[-1][0] == 40
    data = torch.load(found[-1][1], weights_only=True)
    assert data["step"] == 40 and data["task"] == {"op": "add", "p": 7}
    rebuilt = build_model(data["model_config"])
    rebuilt.load_state_dict(data["model_state"])
    tokens = trainer.task.tokens()
    assert torch.equal(rebuilt(tokens).logits, trainer.model(tokens).logits)
    torch.load(ckpt.resume_path(tmp_path), weights_only=True)
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary files


def test_nan_loss_stops_with_state_saved(tmp_path):
    trainer = make_trainer(tiny_config("optim.lr=1e30", "optim.warmup_steps=0"), tmp_path)
    with pytest.raises(TrainingDiverged, match="loss became"):
        trainer.fit()
    assert ckpt.load_resume_state(tmp_path)["step"] == trainer.step > 0


def test_resume_with_another_config_is_refused(tmp_path):
    make_trainer(tiny_config("steps=10"), tmp_path).fit()
    other = make_trainer(tiny_config("optim.lr=0.01"), tmp_path)
    with pytest.raises(ResumeMismatch) as refused:
        other.fit(ckpt.load_resume_state(tmp_path))
    # the differing leaf, not the whole optim group
    assert f"{tmp_path} holds a run with optim.lr=0.001, but this command has optim.lr=0.01; " \
           "repeat the original overrides" in str(refused.value)
    another_model = make_trainer(tiny_config("model.n_heads=2"), tmp_path)
    with pytest.raises(ResumeMismatch, match="model.n_heads=4, but this command has "
                                             "model.n_heads=2;"):
        another_model.fit(ckpt.load_resume_state(tmp_path))
    in_bf16 = make_trainer(tiny_config("train.precision=bf16"), tmp_path)
    with pytest.raises(ResumeMismatch, match="train.precision='fp32', but this command has "
                                             "train.precision='bf16';"):
        in_bf16.fit(ckpt.load_resume_state(tmp_path))


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "x.pt"
    ckpt.atomic_save({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        ckpt.atomic_save({"a": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_a_damaged_history_is_refused_before_a_logger_opens(tmp_path, monkeypatch):
    """The refusal must come before the W&B logger writes a new offline fragment into the run."""
    from grok import assemble
    from grok.main import run

    run(tiny_config("steps=20", "train.eval_every=5"), tmp_path, logger=InMemoryLogger())
    (tmp_path / "metrics.jsonl").unlink()
    monkeypatch.setattr(assemble, "open_logger", lambda *a: pytest.fail("opened a logger"))
    with pytest.raises(ResumeMismatch, match="is missing or empty"):
        run(tiny_config("steps=40", "train.eval_every=5"), tmp_path)
