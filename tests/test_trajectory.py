import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from grok.analysis import similarity as sim
from grok.analysis import trajectory as traj
from grok.analysis.base import Probe
from grok.config import ConfigError
from grok.data.splits import load_split
from grok.data.tasks import build_task
from grok.main import run
from grok.model import build_model
from grok.tracking import InMemoryLogger
from grok.train import checkpoint as ckpt
from grok.train.checkpoint import list_checkpoints
from tests.conftest import compose_config, tiny_config
from tests.faults import flip_byte_in_tensor_data

CPU = torch.device("cpu")


def train_tiny(root, *overrides):
    run(tiny_config(*overrides), root, logger=InMemoryLogger())
    task = build_task("add", 7)
    metrics = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    return task, load_split(root / "split.pt", task), list_checkpoints(root), metrics


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("traj")
    return root, *train_tiny(root, "steps=60", "train.checkpoints=10")


def independent_outputs(path, tokens):
    """Logits and final-layer representation of one checkpoint, in numpy float64, without the
    analysis code (torch.load + build_model + forward)."""
    data = torch.load(path, weights_only=True)
    model = build_model(data["model_config"])
    model.load_state_dict(data["model_state"])
    with torch.no_grad():
        out = model(tokens, return_cache=True)
    return out.logits.double().numpy(), out.residuals[-1].double().numpy()


def numpy_tn(a, b):
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def numpy_cka(x, y):
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    return float(np.sum((x.T @ y) ** 2) / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def numpy_js(a, b):
    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def entropy(p):
        return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=1)

    p, q = softmax(a), softmax(b)
    return float(np.mean(entropy((p + q) / 2) - (entropy(p) + entropy(q)) / 2))


def test_suite_writes_its_outputs_and_entries_match_an_independent_computation(tiny_run):
    root, task, split, checkpoints, metrics = tiny_run
    logger = InMemoryLogger()
    summary = traj.run_trajectory_suite(root, task, split, checkpoints, metrics, device=CPU,
                                   t_grok=20, logger=logger, progress=False)
    out = root / "analysis" / "trajectory"
    steps = np.load(out / "checkpoint_steps.npy")
    assert steps.tolist() == [s for s, _ in checkpoints] == summary["checkpoint_steps"]
    n = len(steps)
    assert n >= 6
    mats = {name: np.load(out / f"{name}.npy") for name in traj.MATRICES}
    tokens = task.tokens()
    outputs = {i: independent_outputs(checkpoints[i][1], tokens) for i in (0, 2, 3, n - 1)}
    for i, j in ((0, n - 1), (2, 3), (3, n - 1)):
        (la, ra), (lb, rb) = outputs[i], outputs[j]
        assert mats["tn_similarity"][i, j] == pytest.approx(numpy_tn(la, lb), abs=1e-5)
        assert mats["act_similarity"][i, j] == pytest.approx(numpy_cka(ra, rb), abs=1e-5)
        assert mats["js_divergence"][i, j] == pytest.approx(numpy_js(la, lb), abs=1e-6)
    for name, m in mats.items():
        assert m.shape == (n, n)
        np.testing.assert_array_equal(m, m.T)
        np.testing.assert_allclose(np.diag(m), 0.0 if name == "js_divergence" else 1.0,
                                   atol=1e-6)
    assert ((mats["js_divergence"] >= 0) & (mats["js_divergence"] <= math.log(2))).all()

    saved = json.loads((out / "summary.json").read_text())
    tn = saved["metrics"]["tn_similarity"]
    np.testing.assert_allclose(tn["consecutive"], np.diag(mats["tn_similarity"], 1))
    np.testing.assert_allclose(tn["rate_of_change"], 1 - np.diag(mats["tn_similarity"], 1))
    np.testing.assert_allclose(saved["metrics"]["js_divergence"]["rate_of_change"],
                               np.diag(mats["js_divergence"], 1))
    np.testing.assert_allclose(tn["to_final"], mats["tn_similarity"][:, -1])
    upper = mats["act_similarity"][np.triu_indices(n, 1)]
    assert saved["metrics"]["act_similarity"]["mean"] == pytest.approx(upper.mean())
    assert saved["metrics"]["act_similarity"]["std"] == pytest.approx(upper.std())
    assert set(saved["correlations"]) == {"tn_similarity~act_similarity",
                                          "tn_similarity~js_divergence",
                                          "act_similarity~js_divergence"}
    assert saved["t_grok"] == 20

    history = json.loads((out / "training_history.json").read_text())
    last = metrics[-1]
    assert history[str(last["step"])] == {"train_loss": last["train/loss"],
                                         "train_acc": last["train/acc"],
                                         "val_loss": last["test/loss"],
                                         "val_acc": last["test/acc"]}
    names = {name for name, _, _ in logger.figures}
    assert names == {f"trajectory/{k}" for k in ("heatmaps", "to_final", "training",
                                                 "consecutive", "scatter")}
    for _, path, step in logger.figures:
        assert step == steps[-1]
        assert path.is_file() and path.parent == root / "plots" and path.stat().st_size > 10_000
    assert logger.summary_values["trajectory/n_checkpoints"] == n
    assert logger.summary_values["trajectory/tn_similarity_mean"] == pytest.approx(tn["mean"])


def test_block_size_does_not_change_the_matrices(tiny_run):
    root, task, split, checkpoints, metrics = tiny_run
    store = traj.FeatureStore()
    try:
        probe = Probe.full(task, split)
        steps, stats = traj.extract_features(checkpoints, probe, store, CPU, progress=False)
        assert steps == [s for s, _ in checkpoints]
        n = len(checkpoints)
        results = {block: traj.similarity_matrices(store, stats, n, len(probe.tokens), block,
                                                   CPU, progress=False)
                   for block in (1, 2, 3, n)}
    finally:
        store.close()
    assert not store.folder.exists()  # the temporary features are removed
    for block in (1, 2, 3, n):
        for name in traj.MATRICES:
            np.testing.assert_allclose(results[block][name], results[n][name], atol=1e-6)
    out = root / "analysis" / "trajectory"
    if (out / "tn_similarity.npy").exists():  # written by the suite test of this module
        for name in traj.MATRICES:
            np.testing.assert_allclose(np.load(out / f"{name}.npy"), results[n][name], atol=1e-6)


def test_a_foreign_checkpoint_is_skipped_with_a_warning(tiny_run, tmp_path, caplog):
    """As in the grokking suite: the others are analysed, and their matrices are those of the
    full run without the skipped checkpoint's row and column."""
    root, task, split, checkpoints, metrics = tiny_run
    full = traj.run_trajectory_suite(tmp_path / "full", task, split, checkpoints, metrics,
                                     device=CPU, t_grok=None, logger=InMemoryLogger(),
                                     progress=False)
    bad = tmp_path / "bad.pt"  # whole, but its weights do not fit its model
    ckpt.atomic_save({**ckpt.load_checkpoint(checkpoints[2][1]), "model_state": {}}, bad)
    damaged = [(s, bad if k == 2 else path) for k, (s, path) in enumerate(checkpoints)]
    with caplog.at_level("WARNING", logger="grok.analysis.trajectory"):
        summary = traj.run_trajectory_suite(tmp_path / "damaged", task, split, damaged, metrics,
                                            device=CPU, t_grok=None, logger=InMemoryLogger(),
                                            progress=False)
    assert caplog.messages == [f"trajectory: skipping unusable checkpoint {bad} "
                               "(RuntimeError: Error(s) in loading state_dict for Transformer:)"]
    kept = [s for k, (s, _) in enumerate(checkpoints) if k != 2]
    assert summary["checkpoint_steps"] == kept and summary["n_checkpoints"] == len(kept)
    for name in traj.MATRICES:
        expected = np.delete(np.delete(np.load(tmp_path / "full" / traj.OUT_DIR / f"{name}.npy"),
                                       2, axis=0), 2, axis=1)
        np.testing.assert_allclose(  # blocks of another size sum in another order
            np.load(tmp_path / "damaged" / traj.OUT_DIR / f"{name}.npy"), expected, rtol=1e-12,
            atol=1e-15)
    assert full["n_checkpoints"] == len(checkpoints)
    with pytest.raises(traj.TrajectoryError, match="no checkpoint could be used"):
        traj.run_trajectory_suite(tmp_path / "none", task, split, [(0, bad)], metrics,
                                  device=CPU, t_grok=None, logger=InMemoryLogger(),
                                  progress=False)


def test_a_damaged_checkpoint_stops_the_trajectory_analysis(tiny_run, tmp_path):
    """Called on its own (the runner refuses a damaged checkpoint before), the suite verifies
    each checkpoint's checksum as it loads it, rather than analysing damaged weights."""
    root, task, split, checkpoints, metrics = tiny_run
    bad = tmp_path / "step_0000001.pt"
    shutil.copy(checkpoints[1][1], bad)
    flip_byte_in_tensor_data(bad)
    damaged = [(s, bad if k == 1 else path) for k, (s, path) in enumerate(checkpoints)]
    with pytest.raises(ckpt.DamagedCheckpoint, match="checksum mismatch"):
        traj.run_trajectory_suite(tmp_path / "damaged", task, split, damaged, metrics,
                                  device=CPU, t_grok=None, logger=InMemoryLogger(),
                                  progress=False)


def test_a_run_evaluated_only_at_step_0_gets_every_figure_but_the_training_curves(tiny_run,
                                                                                 tmp_path):
    """A run stopped right after its first evaluation: nothing to draw on a log step axis."""
    root, task, split, checkpoints, metrics = tiny_run
    logger = InMemoryLogger()
    summary = traj.run_trajectory_suite(tmp_path, task, split, checkpoints[:1], metrics[:1],
                                        device=CPU, t_grok=None, logger=logger, progress=False)
    assert summary["n_checkpoints"] == 1
    assert {name for name, _, _ in logger.figures} == {"trajectory/heatmaps",
                                                       "trajectory/to_final"}
    assert (tmp_path / traj.OUT_DIR / "summary.json").is_file()


def test_summary_phases_and_before_after_generalisation_by_hand():
    steps = [0, 10, 20, 30]
    m = np.array([[1.0, 0.9, 0.5, 0.2],
                  [0.9, 1.0, 0.6, 0.4],
                  [0.5, 0.6, 1.0, 0.8],
                  [0.2, 0.4, 0.8, 1.0]])
    js = np.array([[0.0, 0.1, 0.3, 0.6],
                   [0.1, 0.0, 0.2, 0.4],
                   [0.3, 0.2, 0.0, 0.1],
                   [0.6, 0.4, 0.1, 0.0]])
    rows = [{"step": s, "train/loss": 1.0, "train/acc": 1.0, "test/loss": 2.0, "test/acc": a}
            for s, a in zip([0, 5, 10, 15, 20, 25, 30], [0.0, 0.1, 0.25, 0.5, 0.95, 0.99, 1.0])]
    history = traj.training_history(rows)
    s = traj.summarize({"tn_similarity": m, "js_divergence": js}, steps, history, t_grok=15)
    assert s["phases"] == {"memorisation_end": 10, "generalisation_start": 20}
    tn = s["metrics"]["tn_similarity"]
    assert tn["consecutive"] == [0.9, 0.6, 0.8]
    assert tn["rate_of_change"] == pytest.approx([0.1, 0.4, 0.2])
    assert tn["to_final"] == [0.2, 0.4, 0.8, 1.0]
    assert tn["to_final_before_generalisation"] == pytest.approx(0.3)  # steps 0, 10
    # step 20 only: the final checkpoint (30) is the reference, its similarity 1 says nothing
    assert tn["to_final_after_generalisation"] == pytest.approx(0.8)
    upper = [0.9, 0.5, 0.2, 0.6, 0.4, 0.8]
    assert tn["mean"] == pytest.approx(np.mean(upper))
    assert tn["std"] == pytest.approx(np.std(upper))
    assert s["metrics"]["js_divergence"]["rate_of_change"] == [0.1, 0.2, 0.1]
    r = s["correlations"]["tn_similarity~js_divergence"]
    assert r == pytest.approx(np.corrcoef(upper, [0.1, 0.3, 0.6, 0.2, 0.4, 0.1])[0, 1])
    never = traj.summarize({"tn_similarity": m}, steps, traj.training_history(rows[:2]), None)
    assert never["phases"] == {"memorisation_end": None, "generalisation_start": None}
    assert never["metrics"]["tn_similarity"]["to_final_after_generalisation"] is None
    # the printed line: JS between consecutive checkpoints is largest from 10 to 20 (0.2)
    assert traj.summary_line(s, "RUN") == (
        "trajectory: 4 checkpoints; largest change between consecutive checkpoints: step 10 -> 20 "
        "(JS divergence 0.2 nats); TN similarity to the final checkpoint 0.30 before step 20 "
        "(test acc > 0.9), 0.80 from it; files RUN/analysis/trajectory")
    late = [dict(r, **{"test/acc": 0.5}) if r["step"] < 30 else r for r in rows]
    at_the_end = traj.summarize({"tn_similarity": m, "js_divergence": js}, steps,
                                traj.training_history(late), None)
    assert at_the_end["phases"]["generalisation_start"] == 30
    assert traj.summary_line(at_the_end, "RUN") == (
        "trajectory: 4 checkpoints; largest change between consecutive checkpoints: step 10 -> 20 "
        "(JS divergence 0.2 nats); TN similarity to the final checkpoint 0.47 before step 30 "
        "(test acc > 0.9), n/a from it; files RUN/analysis/trajectory")
    unlearned = traj.summarize({"tn_similarity": m, "js_divergence": js}, steps,
                               traj.training_history(rows[:2]), None)
    assert traj.summary_line(unlearned, "RUN") == (
        "trajectory: 4 checkpoints; largest change between consecutive checkpoints: step 10 -> 20 "
        "(JS divergence 0.2 nats); test accuracy never above 0.9; files RUN/analysis/trajectory")


def test_bilinear_run_also_gets_the_exact_weight_tensor_similarity(tmp_path):
    task, split, checkpoints, metrics = train_tiny(tmp_path, "model=bilinear")
    summary = traj.run_trajectory_suite(tmp_path, task, split, checkpoints, metrics, device=CPU,
                                   t_grok=None, logger=InMemoryLogger(), progress=False,
                                   block_size=2)
    exact = np.load(tmp_path / "analysis" / "trajectory" / "tn_exact_similarity.npy")
    assert "tn_exact_similarity" in summary["metrics"]

    def factors(path):
        data = torch.load(path, weights_only=True)
        model = build_model(data["model_config"])
        model.load_state_dict(data["model_state"])
        return model.interaction_factors()

    n = len(checkpoints)
    f = {i: factors(checkpoints[i][1]) for i in (0, 1, n - 1)}
    for i, j in ((0, n - 1), (1, n - 1), (0, 1)):
        assert exact[i, j] == pytest.approx(sim.interaction_similarity(f[i], f[j]), abs=1e-6)
    np.testing.assert_allclose(np.diag(exact), 1.0, atol=1e-6)
    # the CKA of a bilinear model is taken on its hidden layer
    assert np.isfinite(np.load(tmp_path / "analysis" / "trajectory" / "act_similarity.npy")).all()


def test_no_checkpoints_is_a_clear_error(tmp_path):
    task = build_task("add", 7)
    with pytest.raises(traj.TrajectoryError, match="train.checkpoints > 0"):
        traj.run_trajectory_suite(tmp_path, task, None, [], [], device=CPU, t_grok=None,
                             logger=InMemoryLogger())


def test_a_single_checkpoint_gives_one_by_one_matrices_and_empty_curves(tiny_run, tmp_path):
    _, task, split, checkpoints, metrics = tiny_run
    logger = InMemoryLogger()
    summary = traj.run_trajectory_suite(tmp_path, task, split, checkpoints[-1:], metrics,
                                        device=CPU, t_grok=None, logger=logger, progress=False)
    tn = np.load(tmp_path / "analysis" / "trajectory" / "tn_similarity.npy")
    assert tn.shape == (1, 1) and tn[0, 0] == pytest.approx(1.0)
    assert summary["metrics"]["js_divergence"]["consecutive"] == []
    assert traj.summary_line(summary, tmp_path).startswith("trajectory: 1 checkpoint; test acc")
    assert summary["metrics"]["js_divergence"]["mean"] is None
    assert all(r is None for r in summary["correlations"].values())
    assert None not in logger.summary_values.values()
    assert "trajectory/corr_tn_similarity_vs_act_similarity" not in logger.summary_values
    assert (tmp_path / "plots" / "trajectory_heatmaps.png").is_file()


def test_too_little_temporary_space_is_a_clear_error_before_the_long_loop(tiny_run, monkeypatch):
    _, task, split, checkpoints, _ = tiny_run
    usage = SimpleNamespace(total=10**9, used=10**9 - 1000, free=1000)
    monkeypatch.setattr(traj.shutil, "disk_usage", lambda path: usage)
    store = traj.FeatureStore()
    try:
        with pytest.raises(traj.TrajectoryError, match="point TMPDIR at a larger disk"):
            traj.extract_features(checkpoints, Probe.full(task, split), store, CPU, False)
        assert len(np.fromfile(store.folder / "logits.f32", dtype=np.float32)) == 49 * 7
    finally:
        store.close()


def test_analysis_trajectory_and_full_compose_and_check_the_block_size():
    assert compose_config("analysis=trajectory").analysis.block_size is None
    assert compose_config("analysis=full", "analysis.block_size=16").analysis.block_size == 16
    with pytest.raises(ConfigError, match="analysis.block_size=0"):
        compose_config("analysis=trajectory", "analysis.block_size=0")
