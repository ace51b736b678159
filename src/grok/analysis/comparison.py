"""Compare runs: t_grok, delay against a baseline and before/after values, seeds aggregated.

Input is each run's analysis/post_analysis.json (the grokking suite's report) with a label; runs
sharing a label are seeds of one variant. The delay factor of a run is its t_grok divided by the
baseline variant's mean t_grok. "before"/"after" values are the report's before_after points
(the checkpoints nearest t_grok / r and t_grok * r).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grok import commands
from grok.analysis.grokking import REPORT_FILE
from grok.analysis.settings import AnalysisError

# Values reported before and after t_grok, as named in the report's before_after points.
CONTRASTS = ("test_accuracy", "final_layer_rank", "avg_entropy")
RUN_COLUMNS = ["label", "seed", "t_grok", "t_grok_method", "delay_factor", "step_test_acc_0.95",
               "step_test_acc_0.99", "final_test_accuracy",
               *[f"{name}_{when}" for name in CONTRASTS for when in ("before", "after")],
               "run_dir"]


@dataclass(frozen=True)
class RunEntry:
    run_dir: Path
    label: str
    seed: int | None
    report: dict[str, Any]


def load_report(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / REPORT_FILE
    if not path.is_file():
        raise AnalysisError(f"{path} not found; run `{commands.analyze(run_dir)}` "
                            "first (or let grok.compare do it: analyze_missing=true)")
    return json.loads(path.read_text())


def run_row(entry: RunEntry, baseline_t: float | None) -> dict[str, Any]:
    """One table row: t_grok, delay factor and the before/after values of one run."""
    r = entry.report
    t = r["t_grok"]
    row: dict[str, Any] = {
        "label": entry.label, "seed": entry.seed, "t_grok": t, "t_grok_method": r["t_grok_method"],
        "delay_factor": t / baseline_t if t is not None and baseline_t else None,
        "step_test_acc_0.95": r["step_test_acc_0.95"],
        "step_test_acc_0.99": r["step_test_acc_0.99"],
        "final_test_accuracy": r["test_accuracy"][-1],
        "run_dir": str(entry.run_dir),
    }
    points = r.get("before_after") or {}
    for name in CONTRASTS:
        for when in ("before", "after"):
            row[f"{name}_{when}"] = (points.get(when) or {}).get(name)
    # in RUN_COLUMNS' order, as runs.csv and compare.json show it (run_dir last, as in W&B)
    return {col: row[col] for col in RUN_COLUMNS}


def _mean_std(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1; None, undefined, for one value) of the
    non-null values."""
    vals = np.array([v for v in values if v is not None], dtype=np.float64)
    if len(vals) == 0:
        return None, None
    return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else None


def variant_rows(rows: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """Seeds of one label aggregated: counts, and mean/std of every numeric column."""
    out = []
    for label in labels:
        mine = [r for r in rows if r["label"] == label]
        agg: dict[str, Any] = {"label": label, "n_runs": len(mine),
                               "n_grokked": sum(r["t_grok"] is not None for r in mine)}
        for col in RUN_COLUMNS:
            if col in ("label", "seed", "t_grok_method", "run_dir"):
                continue
            agg[f"{col}_mean"], agg[f"{col}_std"] = _mean_std([r[col] for r in mine])
        out.append(agg)
    return out


def compare(entries: list[RunEntry], baseline: str) -> dict[str, Any]:
    """{"baseline", "baseline_t_grok", "runs": rows, "variants": aggregated rows}."""
    labels = list(dict.fromkeys(e.label for e in entries))
    if baseline not in labels:
        raise AnalysisError(f"baseline={baseline!r} is not one of the labels: "
                            + ", ".join(labels))
    base_t, _ = _mean_std([e.report["t_grok"] for e in entries if e.label == baseline])
    rows = [run_row(e, base_t) for e in entries]
    ratios = sorted({e.report["before_after"]["ratio"] for e in entries
                     if e.report.get("before_after")})
    return {"baseline": baseline, "baseline_t_grok": base_t, "before_after_ratios": ratios,
            "runs": rows, "variants": variant_rows(rows, labels)}


def write_tables(result: dict[str, Any], folder: Path) -> dict[str, Path]:
    """runs.csv, variants.csv and compare.json in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"runs": folder / "runs.csv", "variants": folder / "variants.csv",
             "json": folder / "compare.json"}
    for name in ("runs", "variants"):
        rows = result[name]
        with open(paths[name], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    paths["json"].write_text(json.dumps(result, indent=1))
    return paths


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _seeds_with_value(rows: list[dict[str, Any]], label: str, key: str) -> int:
    return sum(r["label"] == label and r[key] is not None for r in rows)


def format_table(result: dict[str, Any]) -> str:
    """The comparison as printed text: one line per variant (mean ± std over seeds)."""
    cols = [("t_grok", "t_grok"), ("delay", "delay_factor"),
            ("acc>=.99", "step_test_acc_0.99"),
            *[(f"{short} {when}", f"{name}_{when}")
              for name, short in zip(CONTRASTS, ("acc", "rank", "entropy"))
              for when in ("before", "after")]]
    header = ["variant", "runs", "grokked", *[c[0] for c in cols]]
    lines = [header]
    partial = False
    for v in result["variants"]:
        cells = [v["label"], str(v["n_runs"]), str(v["n_grokked"])]
        for _, key in cols:
            mean, std = v[f"{key}_mean"], v[f"{key}_std"]
            cell = _fmt(mean) + (f" ± {_fmt(std, 2)}" if std else "")
            # A mean over the seeds that have a value reads as the variant's; say when some
            # seeds have none (never reached 99%, no t_grok), or "480" hides a seed that failed.
            count = _seeds_with_value(result["runs"], v["label"], key)
            if 0 < count < v["n_runs"]:
                cell += f" ({count}/{v['n_runs']})"
                partial = True
            cells.append(cell)
        lines.append(cells)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in lines]
    base = result["baseline_t_grok"]
    ratio = "/".join(f"{r:g}" for r in result["before_after_ratios"]) or "r"
    text.append(f"baseline: {result['baseline']} (mean t_grok {_fmt(base)}); delay = t_grok / "
                f"baseline mean t_grok; before/after at the checkpoints nearest t_grok/{ratio} "
                f"and {ratio}*t_grok")
    if partial:
        text.append("(k/n): mean over the k of the variant's n runs that have a value")
    return "\n".join(text)

