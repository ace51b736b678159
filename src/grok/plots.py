"""All matplotlib code. Functions take plain rows/arrays and a path, write one PNG, return it."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster nodes or CI
import matplotlib.pyplot as plt  # noqa: E402


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
