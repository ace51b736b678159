"""All matplotlib code. Functions take plain rows/arrays and a path, write one PNG, return it."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; no display on cluster nodes or CI
import matplotlib.pyplot as plt  # noqa: E402

from grok.analysis.aggregate import band  # noqa: E402
from grok.files import atomic_write  # noqa: E402


def _save(fig, path: Path) -> Path:
    """Save atomically: a plot being rewritten (an analysis run again) is never seen half-drawn."""
    path = Path(path)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format=path.suffix.lstrip("."), dpi=120))
    plt.close(fig)
    return path


def _titled(name: str, text: str) -> str:
    """A figure's title: the run's name (when known), then what the figure shows."""
    return f"{name}: {text}" if name else text


def training_curves(rows: list[dict], path: Path, title: str = "") -> Path:
    """Train/test accuracy and loss against step on a log x-axis (step 0 cannot be shown)."""
    rows = [r for r in rows if r["step"] > 0]
    steps = [r["step"] for r in rows]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for scope, colour in (("train", "tab:blue"), ("test", "tab:red")):
        ax_acc.plot(steps, [r[f"{scope}/acc"] for r in rows], color=colour, label=scope)
        ax_loss.plot(steps, [r[f"{scope}/loss"] for r in rows], color=colour, label=scope)
    ax_acc.set(xscale="log", ylim=(-0.02, 1.02), xlabel="step", ylabel="accuracy")
    ax_loss.set(xscale="log", yscale="log", xlabel="step", ylabel="cross-entropy loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# ------------------------------------------------------------------------- grokking suite
# Fixed y ranges so that figures of different runs line up: accuracy in [0, 1], rank in
# [0, width of the representation], entropy in [0, ln(number of keys)] nats.
ACC_YLIM = (-0.02, 1.02)


def _rank_ylim(report: dict) -> tuple[float, float]:
    """[0, the largest rank possible]: the residual stream's width d_model for the transformer,
    the hidden layer's d_hidden for the bilinear model (whose d_embed is not the width)."""
    model = report.get("model") or {}
    width = model.get("d_hidden") if model.get("arch") == "bilinear" else model.get("d_model")
    top = width if width else max(max(r["rank"]) for r in report["full_analyses"])
    return (0.0, float(top) * 1.02)


def _entropy_ylim(report: dict) -> tuple[float, float]:
    n_keys = (report.get("model") or {}).get("n_ctx") or 3
    return (0.0, math.log(n_keys) * 1.02)


def _t_grok_line(ax, t_grok, colour="black", label="t_grok") -> None:
    if t_grok is not None:
        ax.axvline(t_grok, color=colour, linestyle="--", linewidth=1, label=f"{label} = {t_grok}")


def _accuracy_panel(ax, report: dict) -> None:
    rows = report.get("training_metrics") or {}
    if rows.get("step"):
        ax.plot(rows["step"], rows["train/acc"], color="tab:blue", alpha=0.6, label="train")
        ax.plot(rows["step"], rows["test/acc"], color="tab:red", label="test")
    else:
        ax.plot(report["checkpoint_steps"], report["test_accuracy"], color="tab:red",
                marker=".", label="test (checkpoints)")
    ax.set(ylim=ACC_YLIM, ylabel="accuracy")


def _rank_panel(ax, report: dict) -> None:
    steps = report["checkpoint_steps"]
    ranks = [r["rank"] for r in report["full_analyses"]]
    n_layers = len(ranks[0])
    for layer in range(n_layers - 1):
        ax.plot(steps, [r[layer] for r in ranks], linewidth=1, alpha=0.7, marker=".",
                markersize=3, label=f"layer {layer + 1}")
    ax.plot(steps, report["final_layer_rank"], color="tab:purple", linewidth=2, marker=".",
            markersize=4, label=f"layer {n_layers} (final)")
    ax.set(ylim=_rank_ylim(report), ylabel=_rank_label(report))


def _rank_label(report: dict) -> str:
    """The bilinear model never reads a '=' position: its rank is its hidden layer's."""
    if (report.get("model") or {}).get("arch") == "bilinear":
        return "effective rank of the hidden layer"
    return "effective rank at '='"


def _entropy_panel(ax, report: dict) -> None:
    steps = report["checkpoint_steps"]
    if report["avg_entropy"] is None:
        ax.text(0.5, 0.5, "no attention", transform=ax.transAxes, ha="center")
        # Nothing is plotted, so the step axis would otherwise span a few steps around the
        # t_grok line; it spans the run's checkpoints like the other panels.
        ax.update_datalim([(steps[0], 0.0), (steps[-1], 0.0)])
        ax.autoscale_view()
    else:
        rows = report["full_analyses"]
        for layer in range(len(rows[0]["layer_entropy"])):
            ax.plot(steps, [r["layer_entropy"][layer] for r in rows], linewidth=1, alpha=0.7,
                    marker=".", markersize=3, label=f"layer {layer + 1}")
        ax.plot(steps, report["avg_entropy"], color="tab:green", linewidth=2, marker=".",
                markersize=4, label="mean")
    ax.set(ylim=_entropy_ylim(report), ylabel="attention entropy at '=' (nats)")


def _legend(ax) -> None:
    """A legend when the panel has labelled lines (an attention-free model without t_grok has
    none)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")


GROKKING_PANELS = {"accuracy": _accuracy_panel, "rank": _rank_panel, "entropy": _entropy_panel}
# A run this many times longer than its t_grok gets a logarithmic step axis: on a linear one the
# transition of a 400k-step run (t_grok near 1000) would fill the first pixel of the plot.
LOG_STEP_AXIS_RATIO = 20


def grokking_step_scale(report: dict) -> str:
    """"linear", or "symlog" (logarithmic from step 1, with step 0 still shown) when the last
    plotted step is at least LOG_STEP_AXIS_RATIO times t_grok."""
    t = report["t_grok"]
    steps = list(report["checkpoint_steps"]) + list(
        (report.get("training_metrics") or {}).get("step") or [])
    return "symlog" if t and max(steps) >= LOG_STEP_AXIS_RATIO * t else "linear"


def _set_step_scale(ax, scale: str) -> str:
    """Apply grokking_step_scale's choice to ax; return the step axis label that names it."""
    if scale == "linear":
        return "step"
    ax.set_xscale("symlog", linthresh=1, linscale=0.5)
    ax.set_xlim(left=0)
    return "step (log scale)"


def grokking_figures(report: dict, folder: Path, title: str = "") -> dict[str, Path]:
    """plots/grokking_{accuracy,rank,entropy}.png and the combined plots/grokking.png: values
    against step (unsmoothed; linear, or logarithmic for runs much longer than t_grok, see
    grokking_step_scale) with a vertical line at t_grok. Titles begin with `title` (the run's
    name), so that a figure opened outside its run still says whose it is."""
    folder = Path(folder)
    paths: dict[str, Path] = {}
    t = report["t_grok"]
    scale = grokking_step_scale(report)
    found = (f"t_grok = {t} ({report['t_grok_method']})" if t is not None
             else "t_grok not detected")
    heading = _titled(title, found)
    for name, panel in GROKKING_PANELS.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        panel(ax, report)
        _t_grok_line(ax, t)
        ax.set(xlabel=_set_step_scale(ax, scale))
        ax.grid(alpha=0.3)
        _legend(ax)
        ax.set_title(heading)
        paths[f"grokking_{name}"] = _save(fig, folder / f"grokking_{name}.png")
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    for ax, panel in zip(axes, GROKKING_PANELS.values()):
        panel(ax, report)
        _t_grok_line(ax, t)
        label = _set_step_scale(ax, scale)
        ax.grid(alpha=0.3)
        _legend(ax)
    axes[-1].set(xlabel=label)
    fig.suptitle(heading)
    paths["grokking"] = _save(fig, folder / "grokking.png")
    return paths


# ---------------------------------------------------------------------------- comparison
def _curve(report: dict, metric: str) -> tuple[list, list]:
    """(steps, values) of one run's report for accuracy, rank or entropy."""
    if metric == "accuracy":
        rows = report.get("training_metrics") or {}
        if rows.get("step"):
            return rows["step"], rows["test/acc"]
        return report["checkpoint_steps"], report["test_accuracy"]
    key = {"rank": "final_layer_rank", "entropy": "avg_entropy"}[metric]
    return report["checkpoint_steps"], report[key] or [None] * len(report["checkpoint_steps"])


COMPARE_YLABELS = {"accuracy": "test accuracy", "rank": "final-layer effective rank at '='",
                   "entropy": "mean attention entropy at '=' (nats)"}
# The values each quantity can take: a +-1 std band is clipped to them (an accuracy band below 0
# or above 1 would show values no run can have).
COMPARE_RANGES = {"accuracy": (0.0, 1.0), "rank": (0.0, None), "entropy": (0.0, None)}


def _compare_panel(ax, groups: dict[str, list[dict]], metric: str, xscale: str) -> None:
    reports = [r for rs in groups.values() for r in rs]
    ylim = {"accuracy": ACC_YLIM,
            "rank": (0.0, max(_rank_ylim(r)[1] for r in reports)),
            "entropy": (0.0, max(_entropy_ylim(r)[1] for r in reports))}[metric]
    for i, (label, runs) in enumerate(groups.items()):
        colour = f"C{i % 10}"
        curves = []
        for r in runs:
            steps, values = _curve(r, metric)
            keep = [(s, v) for s, v in zip(steps, values) if v is not None
                    and (xscale != "log" or s > 0)]
            if keep:
                curves.append(([s for s, _ in keep], [v for _, v in keep]))
        if curves:
            b = band(curves)
            # only where every seed has a value: past the end of a shorter run the mean would
            # silently become that of fewer seeds
            every = b["count"] == len(curves)
            mean, std = np.where(every, b["mean"], np.nan), np.where(every, b["std"], np.nan)
            ax.plot(b["step"], mean, color=colour, linewidth=1.6,
                    label=f"{label} (n={len(runs)})")
            if len(curves) > 1:
                low, high = COMPARE_RANGES[metric]
                ax.fill_between(b["step"], np.clip(mean - std, low, high),
                                np.clip(mean + std, low, high),
                                color=colour, alpha=0.2, linewidth=0)
        for r in runs:
            if r["t_grok"] is not None and (xscale != "log" or r["t_grok"] > 0):
                ax.axvline(r["t_grok"], color=colour, linestyle="--", linewidth=1, alpha=0.8)
    ax.set(xscale=xscale, ylim=ylim, ylabel=COMPARE_YLABELS[metric])
    ax.grid(alpha=0.3)


def compare_figures(groups: dict[str, list[dict]], folder: Path,
                    xscale: str = "log") -> dict[str, Path]:
    """Overlays of several variants (label -> the reports of its seeds): compare_accuracy.png,
    compare_rank.png, compare_entropy.png and the combined compare.png. One colour per variant:
    the mean over seeds with a +-1 std band, and a dashed t_grok line per run."""
    folder = Path(folder)
    paths: dict[str, Path] = {}
    note = "dashed: t_grok of each run; band: ±1 std over seeds"
    for metric in COMPARE_YLABELS:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        _compare_panel(ax, groups, metric, xscale)
        ax.set(xlabel="step", title=note)
        ax.legend(fontsize=8, loc="best")
        paths[f"compare_{metric}"] = _save(fig, folder / f"compare_{metric}.png")
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    for ax, metric in zip(axes, COMPARE_YLABELS):
        _compare_panel(ax, groups, metric, xscale)
    axes[0].legend(fontsize=8, loc="best")
    axes[0].set_title(note)
    axes[-1].set(xlabel="step")
    paths["compare"] = _save(fig, folder / "compare.png")
    return paths


# ------------------------------------------------------------------ trajectory (analysis suite)
_TRAJ_LABELS = {"tn_similarity": "TN similarity (logit cosine)",
                "act_similarity": "activation similarity (linear CKA)",
                "js_divergence": "JS divergence (nats)",
                "tn_exact_similarity": "exact tensor similarity (weights)"}
# the same, short enough for an axis label
_TRAJ_SHORT = {"tn_similarity": "logit cosine", "act_similarity": "linear CKA",
               "js_divergence": "JS divergence", "tn_exact_similarity": "weight similarity"}
_TRAJ_COLOURS = {"tn_similarity": "tab:blue", "act_similarity": "tab:green",
                 "js_divergence": "tab:red", "tn_exact_similarity": "tab:purple"}


def _grok_note(t_grok: int | None) -> str:
    return f"t_grok = {t_grok}, dashed" if t_grok is not None else "t_grok: not detected"


def _mark_step(ax, t_grok: int | None, label: bool = True) -> None:
    if t_grok is not None and t_grok > 0:
        ax.axvline(t_grok, color="black", ls="--", lw=1, label="t_grok" if label else None)


def _step_axis(ax, steps) -> None:
    """Log x-axis when every plotted step is positive (checkpoint steps are log-spaced)."""
    if len(steps) and min(steps) > 0:
        ax.set_xscale("log")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)


def trajectory_heatmaps(matrices: dict, steps: list[int], path: Path,
                        t_grok: int | None = None, title: str = "") -> Path:
    """One N x N heatmap per matrix, ticks labelled with steps, t_grok marked on both axes."""
    n = len(steps)
    fig, axes = plt.subplots(1, len(matrices), figsize=(5.2 * len(matrices), 4.6), squeeze=False)
    pos = float(np.interp(t_grok, steps, np.arange(n))) if t_grok is not None else None
    # every checkpoint while the labels fit; else 8 spread out plus the one nearest t_grok
    ticks = np.arange(n) if n <= 16 else np.unique(np.append(
        np.linspace(0, n - 1, 8).round(), [] if pos is None else [round(pos)])).astype(int)
    for ax, (name, m) in zip(axes[0], matrices.items()):
        divergence = name == "js_divergence"
        im = ax.imshow(m, cmap="magma" if divergence else "viridis", origin="upper",
                       interpolation="nearest", vmin=0.0 if divergence else None)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(ticks, [str(steps[i]) for i in ticks], rotation=60, fontsize=7)
        ax.set_yticks(ticks, [str(steps[i]) for i in ticks], fontsize=7)
        ax.set(title=_TRAJ_LABELS.get(name, name), xlabel="checkpoint step",
               ylabel="checkpoint step")
        if pos is not None:
            ax.axvline(pos, color="white", ls="--", lw=1)
            ax.axhline(pos, color="white", ls="--", lw=1)
    fig.suptitle(_titled(title, f"checkpoint-by-checkpoint matrices ({n} checkpoints; "
                                f"{_grok_note(t_grok)})"))
    # tight_layout sizes the margins before the square images and their colour bars take their
    # final place, which pushed the x label past the bottom edge; the second pass (in _save)
    # measures the settled axes.
    fig.tight_layout()
    return _save(fig, path)


def trajectory_consecutive(summary: dict, path: Path, title: str = "") -> Path:
    """Top: each metric between consecutive checkpoints; bottom: the rate of change
    (1 - similarity, or the divergence itself), log scale."""
    steps = summary["checkpoint_steps"][1:]
    metrics = summary["metrics"]
    fig, axes = plt.subplots(2, len(metrics), figsize=(4.6 * len(metrics), 6.4), squeeze=False)
    for col, (name, m) in enumerate(metrics.items()):
        top, bottom = axes[0][col], axes[1][col]
        colour = _TRAJ_COLOURS.get(name)
        top.plot(steps, m["consecutive"], "o-", ms=2.5, color=colour)
        top.set(title=_TRAJ_LABELS.get(name, name),
                ylabel=f"{_TRAJ_SHORT.get(name, name)}\nto the previous checkpoint")
        change = [max(v, 1e-12) if v is not None else float("nan") for v in m["rate_of_change"]]
        bottom.plot(steps, change, "o-", ms=2.5, color=colour)
        bottom.set(yscale="log", ylabel="rate of change" + (
            "" if m["kind"] == "divergence" else " (1 - similarity)"))
        for ax in (top, bottom):
            _step_axis(ax, steps)
            _mark_step(ax, summary["t_grok"])
    if summary["t_grok"]:
        axes[0][0].legend(fontsize=8)
    fig.suptitle(_titled(title, "change between consecutive checkpoints "
                                f"({_grok_note(summary['t_grok'])})"))
    return _save(fig, path)


def trajectory_to_final(summary: dict, history: dict, path: Path, title: str = "") -> Path:
    """Left: every metric against the final checkpoint vs step (similarities left axis, JS
    right axis). Then one panel per metric with validation accuracy on a second axis."""
    steps = summary["checkpoint_steps"]
    metrics = summary["metrics"]
    acc_steps = [int(s) for s in history]
    acc = [r["val_acc"] for r in history.values()]
    fig, axes = plt.subplots(1, 1 + len(metrics), figsize=(4.6 * (1 + len(metrics)), 4.2))
    overlay = axes[0]
    js_ax = None
    for name, m in metrics.items():
        ax = overlay
        if m["kind"] == "divergence":
            js_ax = js_ax or overlay.twinx()
            ax = js_ax
            ax.set_ylabel("divergence to final")
        ax.plot(steps, m["to_final"], "o-", ms=2.5, color=_TRAJ_COLOURS.get(name),
                label=_TRAJ_LABELS.get(name, name))
    overlay.set(title="to the final checkpoint", ylabel="similarity to final")
    handles = overlay.get_legend_handles_labels()
    if js_ax is not None:
        extra = js_ax.get_legend_handles_labels()
        handles = (handles[0] + extra[0], handles[1] + extra[1])
    overlay.legend(*handles, fontsize=7, loc="center left")
    for ax, (name, m) in zip(axes[1:], metrics.items()):
        ax.plot(steps, m["to_final"], "o-", ms=2.5, color=_TRAJ_COLOURS.get(name))
        ax.set(title=_TRAJ_LABELS.get(name, name),
               ylabel=f"{_TRAJ_SHORT.get(name, name)}\nto the final checkpoint")
        acc_ax = ax.twinx()
        acc_ax.plot(acc_steps, acc, color="0.4", lw=1)
        acc_ax.set(ylim=(-0.02, 1.02), ylabel="validation accuracy")
    for ax in axes:
        shown = [s for s in steps if s > 0]
        _step_axis(ax, shown)
        _mark_step(ax, summary["t_grok"], label=False)
    fig.suptitle(_titled(title, "similarity to the final checkpoint "
                                f"({_grok_note(summary['t_grok'])})"))
    return _save(fig, path)


def trajectory_scatter(matrices: dict, correlations: dict, path: Path, title: str = "") -> Path:
    """Every pair of metrics over the checkpoint pairs (upper triangle), with Pearson r."""
    names = list(matrices)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    n = len(next(iter(matrices.values())))
    upper = np.triu_indices(n, 1)
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.4 * len(pairs), 4.0), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs):
        ax.scatter(matrices[a][upper], matrices[b][upper], s=4 if n < 40 else 1.5,
                   alpha=max(0.05, min(0.5, 300 / max(1, len(upper[0])) ** 0.5)), lw=0)
        r = correlations.get(f"{a}~{b}")
        ax.set(xlabel=_TRAJ_LABELS.get(a, a), ylabel=_TRAJ_LABELS.get(b, b),
               title=f"r = {r:.3f}" if r is not None else "r: undefined")
        ax.grid(alpha=0.3)
    fig.suptitle(_titled(title, "metric against metric over all checkpoint pairs"))
    return _save(fig, path)


def trajectory_training(history: dict, path: Path, t_grok: int | None = None,
                        phases: dict | None = None, title: str = "") -> Path:
    """Loss (log scale) and accuracy against step, with the 95% accuracy line and the phase
    boundaries (memorisation end, generalisation start) as dotted lines."""
    steps = [int(s) for s in history]
    rows = list(history.values())
    keep = [i for i, s in enumerate(steps) if s > 0]
    steps = [steps[i] for i in keep]
    rows = [rows[i] for i in keep]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label, colour in (("train", "train", "tab:blue"), ("val", "validation", "tab:red")):
        ax_loss.plot(steps, [r[f"{key}_loss"] for r in rows], color=colour, label=label)
        if f"{key}_acc" in rows[0]:
            ax_acc.plot(steps, [r[f"{key}_acc"] for r in rows], color=colour, label=label)
    ax_acc.axhline(0.95, color="0.3", ls=":", lw=1, label="95%")
    ax_loss.set(yscale="log", ylabel="cross-entropy loss")
    ax_acc.set(ylim=(-0.02, 1.02), ylabel="accuracy")
    # The labels give the definitions (grok.analysis.trajectory.phases, which imports this
    # module): "memorisation ends" alone read as the step train accuracy reached 1, which in the
    # classic grokking run comes a thousand steps before test accuracy leaves its plateau.
    phase_style = {"memorisation_end": ("tab:orange", "plateau ends: validation acc > 0.2"),
                   "generalisation_start": ("tab:green", "generalisation: validation acc > 0.9")}
    for ax in (ax_loss, ax_acc):
        _step_axis(ax, steps)
        _mark_step(ax, t_grok)
        for key, step in (phases or {}).items():
            if step:
                colour, label = phase_style[key]
                ax.axvline(step, color=colour, ls=":", lw=1.2, label=f"{label} ({step})")
        ax.legend(fontsize=8)
    fig.suptitle(_titled(title, f"training curves ({_grok_note(t_grok)})"))
    return _save(fig, path)


def trajectory_figures(matrices: dict, summary: dict, history: dict, plot_dir: Path,
                       title: str = "") -> dict:
    """All trajectory figures into plot_dir, titled with `title` (the run's name) first;
    returns {name: path}."""
    plot_dir = Path(plot_dir)
    t_grok, steps = summary["t_grok"], summary["checkpoint_steps"]
    figures = {
        "heatmaps": trajectory_heatmaps(matrices, steps, plot_dir / "trajectory_heatmaps.png",
                                        t_grok, title),
        "to_final": trajectory_to_final(summary, history, plot_dir / "trajectory_to_final.png",
                                        title),
    }
    if any(int(step) > 0 for step in history):  # its step axis is logarithmic
        figures["training"] = trajectory_training(history, plot_dir / "trajectory_training.png",
                                                  t_grok, summary["phases"], title)
    if len(steps) > 1:
        figures["consecutive"] = trajectory_consecutive(
            summary, plot_dir / "trajectory_consecutive.png", title)
        figures["scatter"] = trajectory_scatter(matrices, summary["correlations"],
                                                plot_dir / "trajectory_scatter.png", title)
    return figures
