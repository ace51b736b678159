"""All matplotlib code. Functions take plain rows/arrays and a path, write one PNG, return it."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster nodes or CI
import matplotlib.pyplot as plt  # noqa: E402

from grok.analysis.aggregate import band  # noqa: E402


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
# [0, d_model], entropy in [0, ln(number of keys)] nats.
ACC_YLIM = (-0.02, 1.02)


def _rank_ylim(report: dict) -> tuple[float, float]:
    d_model = (report.get("model") or {}).get("d_model")
    top = d_model if d_model else max(max(r["rank"]) for r in report["full_analyses"])
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
    ax.set(ylim=_rank_ylim(report), ylabel="effective rank at '='")


def _entropy_panel(ax, report: dict) -> None:
    steps = report["checkpoint_steps"]
    if report["avg_entropy"] is None:
        ax.text(0.5, 0.5, "no attention", transform=ax.transAxes, ha="center")
    else:
        rows = report["full_analyses"]
        for layer in range(len(rows[0]["layer_entropy"])):
            ax.plot(steps, [r["layer_entropy"][layer] for r in rows], linewidth=1, alpha=0.7,
                    marker=".", markersize=3, label=f"layer {layer + 1}")
        ax.plot(steps, report["avg_entropy"], color="tab:green", linewidth=2, marker=".",
                markersize=4, label="mean")
    ax.set(ylim=_entropy_ylim(report), ylabel="attention entropy at '=' (nats)")


GROKKING_PANELS = {"accuracy": _accuracy_panel, "rank": _rank_panel, "entropy": _entropy_panel}


def grokking_figures(report: dict, folder: Path, title: str = "") -> dict[str, Path]:
    """plots/grokking_{accuracy,rank,entropy}.png and the combined plots/grokking.png: values
    against step (linear, unsmoothed) with a vertical line at t_grok."""
    folder = Path(folder)
    paths: dict[str, Path] = {}
    t = report["t_grok"]
    for name, panel in GROKKING_PANELS.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        panel(ax, report)
        _t_grok_line(ax, t)
        ax.set(xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        if title:
            ax.set_title(title)
        paths[f"grokking_{name}"] = _save(fig, folder / f"grokking_{name}.png")
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    for ax, panel in zip(axes, GROKKING_PANELS.values()):
        panel(ax, report)
        _t_grok_line(ax, t)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[-1].set(xlabel="step")
    method = report["t_grok_method"]
    fig.suptitle(title or (f"t_grok = {t} ({method})" if t is not None
                           else "t_grok not detected"))
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
            ax.plot(b["step"], b["mean"], color=colour, linewidth=1.6,
                    label=f"{label} (n={len(runs)})")
            if len(curves) > 1:
                ax.fill_between(b["step"], b["mean"] - b["std"], b["mean"] + b["std"],
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
