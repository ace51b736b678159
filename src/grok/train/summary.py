"""The end-of-run summary: final accuracies, when test accuracy first reached 0.99, wall time."""

from __future__ import annotations


def first_step_at(rows: list[dict], key: str, threshold: float) -> int | None:
    return next((int(r["step"]) for r in rows if r[key] >= threshold), None)


def summarize(rows: list[dict]) -> dict:
    last = rows[-1]
    return {
        "final/step": int(last["step"]),
        "final/train_acc": last["train/acc"],
        "final/test_acc": last["test/acc"],
        "final/train_loss": last["train/loss"],
        "final/test_loss": last["test/loss"],
        "steps_to/test_acc_0.95": first_step_at(rows, "test/acc", 0.95),
        "steps_to/test_acc_0.99": first_step_at(rows, "test/acc", 0.99),
        "time/wall_s": last["time/elapsed_s"],
    }


def summary_line(summary: dict, run_dir) -> str:
    reached = summary["steps_to/test_acc_0.99"]
    return (f"done: train acc {summary['final/train_acc']:.3f}, "
            f"test acc {summary['final/test_acc']:.3f}, "
            f"test acc >= 0.99 {'never' if reached is None else f'at step {reached}'}, "
            f"wall {summary['time/wall_s']:.1f} s, run dir {run_dir}")
