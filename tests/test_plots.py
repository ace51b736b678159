"""The step axis of the grokking figures: linear for runs of about t_grok's length, logarithmic
for runs much longer than it (where a linear axis would squeeze the transition into a pixel)."""

import numpy as np
import pytest

from grok import plots


def report(t_grok, last_step, eval_every):
    """A minimal grokking report of a 2-layer model: checkpoints at 0, 1, 10, ..., evaluations
    every eval_every steps up to last_step."""
    ckpts = [0] + [10**k for k in range(len(str(last_step)))]
    ckpts = sorted({s for s in ckpts if s <= last_step} | {last_step})
    evals = list(range(0, last_step + 1, eval_every))
    return {
        "t_grok": t_grok, "t_grok_method": "sharpest_rise", "model": {"d_model": 8, "n_ctx": 3},
        "checkpoint_steps": ckpts, "test_accuracy": [0.5] * len(ckpts),
        "full_analyses": [{"rank": [4.0, 3.0], "layer_entropy": [0.5, 0.6]} for _ in ckpts],
        "final_layer_rank": [3.0] * len(ckpts), "avg_entropy": [0.55] * len(ckpts),
        "training_metrics": {"step": evals, "train/acc": [1.0] * len(evals),
                             "test/acc": [0.5] * len(evals)},
    }


@pytest.mark.parametrize(("t_grok", "last_step", "scale"), [
    (1000, 400_000, "symlog"),  # the headline long run
    (1000, 20_000, "symlog"),  # exactly LOG_STEP_AXIS_RATIO times t_grok
    (1000, 19_900, "linear"),
    (450, 1000, "linear"),  # the default experiment
    (None, 400_000, "linear"),  # no t_grok: nothing to scale by
])
def test_step_scale_follows_the_run_length_over_t_grok(t_grok, last_step, scale):
    assert plots.grokking_step_scale(report(t_grok, last_step, 100)) == scale


def test_step_scale_counts_evaluations_after_the_last_checkpoint():
    r = report(1000, 10_000, 100)
    r["training_metrics"]["step"].append(50_000)
    assert plots.grokking_step_scale(r) == "symlog"


@pytest.mark.parametrize(("last_step", "scale"), [(400_000, "symlog"), (2000, "linear")])
def test_every_grokking_figure_uses_the_scale_and_still_shows_step_0(
        tmp_path, monkeypatch, last_step, scale):
    seen = {}
    save = plots._save

    def record(fig, path):
        seen[path.name] = [(ax.get_xscale(), ax.get_xlim()[0]) for ax in fig.axes]
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", record)
    paths = plots.grokking_figures(report(1000, last_step, 500), tmp_path)
    assert sorted(seen) == sorted(p.name for p in paths.values())
    assert len(seen["grokking.png"]) == 3
    for axes in seen.values():
        for xscale, left in axes:
            assert xscale == scale
            assert left <= 0  # step 0 (initialisation) stays on the plot
    assert all(p.stat().st_size > 0 for p in paths.values())


@pytest.mark.parametrize("n,t_grok,expected", [
    (11, 400, list(range(11))),  # all labelled while they fit
    (40, 1430, [0, 6, 11, 14, 17, 22, 28, 33, 39]),  # 8 spread out, and 14 (step 1400) at t_grok
])
def test_heatmap_ticks_label_every_checkpoint_or_the_one_at_t_grok(tmp_path, monkeypatch, n,
                                                                  t_grok, expected):
    import matplotlib.pyplot as plt
    import numpy as np

    steps = [100 * i for i in range(n)]
    seen = []
    real = plt.Axes.set_xticks

    def recording(ax, ticks, labels=None, **kwargs):
        seen.append((list(ticks), list(labels)))
        return real(ax, ticks, labels, **kwargs)

    monkeypatch.setattr(plt.Axes, "set_xticks", recording)
    plots.trajectory_heatmaps({"tn_similarity": np.eye(n)}, steps, tmp_path / "h.png", t_grok)
    ticks, labels = seen[0]
    assert ticks == expected
    assert labels == [str(steps[i]) for i in ticks]


@pytest.mark.parametrize(("model", "top"), [
    ({"arch": "transformer", "d_model": 128, "n_ctx": 3}, 128),
    ({"arch": "bilinear", "d_embed": 128, "d_hidden": 256}, 256),  # rank of the hidden layer
    ({}, 4.0),  # an old report without the model: the largest rank seen
])
def test_the_rank_axis_spans_the_width_of_the_representation(model, top):
    r = report(1000, 2000, 100)
    r["model"] = model
    assert plots._rank_ylim(r) == pytest.approx((0.0, top * 1.02))


def _edge_is_blank(png_path) -> bool:
    """True when the outermost 2 pixels of the figure hold only its white background: nothing
    drawn there was cut off by the edge."""
    import matplotlib.image

    pixels = matplotlib.image.imread(png_path)[..., :3]
    edge = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                           pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    return bool((edge > 0.99).all())


@pytest.mark.parametrize("names", [
    ("tn_similarity", "act_similarity", "js_divergence"),
    ("tn_similarity", "act_similarity", "js_divergence", "tn_exact_similarity"),  # bilinear
])
def test_heatmaps_keep_their_axis_labels_inside_the_figure(tmp_path, names):
    steps = [0, 1, 5, 21, 96, 400, 437, 800, 1200, 1600, 2000]
    rng = np.random.default_rng(0)
    matrices = {name: rng.random((len(steps), len(steps))) for name in names}
    path = plots.trajectory_heatmaps(matrices, steps, tmp_path / "h.png", t_grok=1800)
    assert _edge_is_blank(path)


def test_bilinear_figures_span_the_run_and_name_the_hidden_layer(tmp_path, monkeypatch):
    """The bilinear model has no attention and no '=' position: its entropy figure is empty but
    still spans the run's steps (not a few steps around t_grok), and its rank is the hidden
    layer's."""
    r = report(1800, 2000, 100)
    r["model"] = {"arch": "bilinear", "d_embed": 8, "d_hidden": 16}
    r["avg_entropy"] = None
    seen = {}
    save = plots._save

    def record(fig, path):
        seen[path.name] = [(ax.get_xlim(), ax.get_ylabel()) for ax in fig.axes]
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", record)
    plots.grokking_figures(r, tmp_path)
    (left, right), _ = seen["grokking_entropy.png"][0]
    assert left <= 0 and right >= 2000
    assert seen["grokking_rank.png"][0][1] == "effective rank of the hidden layer"


def test_the_phase_lines_of_the_training_figure_say_how_they_are_defined(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from grok.analysis.trajectory import GENERALISATION_ACC, MEMORISATION_ACC

    history = {str(s): {"train_loss": 1.0, "val_loss": 2.0, "train_acc": 1.0, "val_acc": a}
               for s, a in ((0, 0.0), (100, 0.1), (200, 0.5), (300, 0.95))}
    labels = []
    real = plt.Axes.axvline
    monkeypatch.setattr(plt.Axes, "axvline", lambda ax, *a, **k: (
        labels.append(k.get("label")), real(ax, *a, **k))[1])
    plots.trajectory_training(history, tmp_path / "t.png", None,
                              {"memorisation_end": 200, "generalisation_start": 300})
    assert labels[:2] == [f"plateau ends: validation acc > {MEMORISATION_ACC} (200)",
                          f"generalisation: validation acc > {GENERALISATION_ACC} (300)"]
