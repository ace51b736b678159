"""The `grokking` suite: when did the run grok, and how did rank and attention entropy move.

Every checkpoint is analysed (one load, one shared forward pass over all task inputs): train/test
accuracy and loss, per-layer effective rank of the residual stream at `=`, and the `=` query's
attention entropy per layer and head. t_grok comes from the test accuracy in metrics.jsonl (all
evaluation points). The report lands in analysis/post_analysis.json (fields in the README),
the per-checkpoint arrays in analysis/grokking_arrays.npz, figures in plots/grokking*.png, and
the per-checkpoint values and summary in the logger.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from grok import plots
from grok.analysis.accuracy import AccuracyAnalyzer
from grok.analysis.alignment import align
from grok.analysis.base import Probe
from grok.analysis.entropy import EntropyAnalyzer
from grok.analysis.rank import RankAnalyzer
from grok.analysis.scan import Scan, scan_checkpoints
from grok.analysis.selection import nearest_step, select_checkpoints
from grok.analysis.settings import AnalysisError, AnalysisSettings
from grok.analysis.tgrok import detect_t_grok
from grok.files import atomic_write
from grok.tracking.base import Logger

log = logging.getLogger(__name__)

ANALYZERS = (AccuracyAnalyzer(), RankAnalyzer(), EntropyAnalyzer())
REPORT_FILE = Path("analysis") / "post_analysis.json"
ARRAYS_FILE = Path("analysis") / "grokking_arrays.npz"
ACC_LEVELS = (0.95, 0.99)


def grokking_suite(run, settings: AnalysisSettings, *, t_grok: int | None, device, logger: Logger,
                   progress: bool = True) -> dict[str, Any]:
    """Analyse every checkpoint of `run` (a grok.analysis.runner.LoadedRun), save, log and
    return the report. t_grok, when given, is forced instead of detected."""
    clock = time.perf_counter()
    probe = Probe.full(run.task, run.split)
    scan = scan_checkpoints(run.checkpoints, probe, ANALYZERS, device, settings.batch_size,
                            progress)
    if not scan.steps:
        raise AnalysisError(f"none of the {len(run.checkpoints)} checkpoints in "
                            f"{run.run_dir / 'checkpoints'} could be used (see the warnings)")
    report = build_report(scan, run.metrics, settings, forced=t_grok)
    report["run"] = {"task": run.split.task, "split": run.split.name,
                     "split_params": run.split.params, "split_seed": run.split.seed,
                     "split_checksum": run.split.checksum, "n_inputs": run.task.n}
    _write_json(run.run_dir / REPORT_FILE, report)
    _write_arrays(run.run_dir / ARRAYS_FILE, scan)
    figures = plots.grokking_figures(report, run.run_dir / "plots", title=run.name)
    _log(report, figures, logger, elapsed=time.perf_counter() - clock)
    return report


def build_report(scan: Scan, metrics: list[dict], settings: AnalysisSettings,
                 forced: int | None = None) -> dict[str, Any]:
    """The post_analysis.json content from a checkpoint scan and the metrics rows (pure)."""
    warnings = list(scan.warnings)
    steps = list(scan.steps)
    per_ckpt = _per_checkpoint(scan)
    test_acc = per_ckpt["test/acc"]
    if metrics:
        eval_steps = [int(r["step"]) for r in metrics]
        eval_acc = [float(r["test/acc"]) for r in metrics]
        warnings += _consistency(steps, test_acc, eval_steps, eval_acc)
    else:
        eval_steps, eval_acc = steps, list(test_acc)
        warnings.append("metrics.jsonl is missing or holds no whole row: t_grok is detected on "
                        "the test accuracy recomputed at the checkpoints")
    tg = detect_t_grok(eval_steps, eval_acc, settings.window, settings.threshold, forced,
                       settings.monotone)
    if tg.warning:
        warnings.append(tg.warning)
    for message in warnings[len(scan.warnings):]:
        log.warning(message)
    t = tg.t_grok

    rank = per_ckpt["rank"]  # (N, L)
    entropy = per_ckpt.get("entropy")  # (N, L, H) or None without attention
    signals = {"final_layer_rank": rank[:, -1], "avg_rank": rank.mean(axis=1)}
    if entropy is not None:
        signals["avg_entropy"] = entropy.mean(axis=(1, 2))
    correlations, drops = align(steps, test_acc, signals, t, settings.window)
    selection = select_checkpoints(steps, t, settings.before, settings.near, settings.after)

    def at(step: int) -> dict[str, Any]:
        i = steps.index(step)
        return {"step": step, "relative_step": None if t is None else step - t,
                "test_accuracy": test_acc[i],
                **{name: float(values[i]) for name, values in signals.items()}}

    before_after = None
    if t is not None:
        r = settings.before_after_ratio
        points = {"before": nearest_step(steps, t / r), "after": nearest_step(steps, t * r)}
        before_after = {"ratio": r, **{k: at(s) for k, s in points.items()}}

    return {
        "t_grok": t,
        "t_grok_method": tg.method,
        "t_grok_detected": tg.detected,
        "t_grok_max_rise": tg.max_rise,
        "t_grok_window_steps": list(tg.window_steps) if tg.window_steps else None,
        "step_test_acc_0.95": tg.step_95,
        "step_test_acc_0.99": tg.step_99,
        "thresholds": {"window": settings.window, "rise_threshold": settings.threshold,
                       "monotone": settings.monotone, "accuracy_levels": list(ACC_LEVELS)},
        "checkpoint_steps": steps,
        "relative_steps": None if t is None else [s - t for s in steps],
        "test_accuracy": list(test_acc),
        "train_accuracy": list(per_ckpt["train/acc"]),
        "final_layer_rank": signals["final_layer_rank"].tolist(),
        "avg_rank": signals["avg_rank"].tolist(),
        "avg_entropy": signals["avg_entropy"].tolist() if entropy is not None else None,
        "avg_entropy_normalized": (per_ckpt["entropy_norm"].mean(axis=(1, 2)).tolist()
                                   if entropy is not None else None),
        "selected_checkpoints": {**selection, "details": [
            {"position": pos, **at(s)} for pos, chosen in selection.items() for s in chosen]},
        "before_after": before_after,
        "full_analyses": _full_analyses(steps, t, per_ckpt),
        "training_metrics": _columns(metrics),
        "analysis_metrics": {"step": steps, **analysis_metrics(per_ckpt)},
        "correlations": {f"test_accuracy_vs_{name}": value
                         for name, value in correlations.items()},
        "alignment": {f"{name}_sharpest_drop": value for name, value in drops.items()},
        "model": scan.model_config,
        "warnings": warnings,
    }


def _per_checkpoint(scan: Scan) -> dict[str, np.ndarray]:
    """Stack every analyzer output over the checkpoints: scalars -> (N,), arrays -> (N, ...)."""
    keys = scan.results[0].keys()
    return {k: np.stack([np.asarray(r[k], dtype=np.float64) for r in scan.results])
            for k in keys}


def analysis_metrics(per_ckpt: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """Scalar series per checkpoint under the keys logged to W&B (layers and heads 1-based)."""
    out: dict[str, list[float]] = {}
    rank = per_ckpt["rank"]
    for layer in range(rank.shape[1]):
        out[f"rank/layer_{layer + 1}"] = rank[:, layer].tolist()
    out["rank/final"] = rank[:, -1].tolist()
    out["rank/avg"] = rank.mean(axis=1).tolist()
    if "entropy" in per_ckpt:
        ent, norm = per_ckpt["entropy"], per_ckpt["entropy_norm"]
        for layer in range(ent.shape[1]):
            out[f"entropy/layer_{layer + 1}"] = ent[:, layer].mean(axis=1).tolist()
            for head in range(ent.shape[2]):
                out[f"entropy/layer_{layer + 1}_head_{head + 1}"] = ent[:, layer, head].tolist()
        out["entropy/avg"] = ent.mean(axis=(1, 2)).tolist()
        out["entropy_norm/avg"] = norm.mean(axis=(1, 2)).tolist()
    for key in ("train/acc", "test/acc", "train/loss", "test/loss"):
        out[key] = per_ckpt[key].tolist()
    return out


def _full_analyses(steps: list[int], t: int | None, per_ckpt: dict[str, np.ndarray]) -> list:
    rows = []
    for i, step in enumerate(steps):
        row: dict[str, Any] = {"step": step, "relative_step": None if t is None else step - t,
                               "rank": per_ckpt["rank"][i].tolist()}
        if "entropy" in per_ckpt:
            row["entropy"] = per_ckpt["entropy"][i].tolist()
            row["entropy_normalized"] = per_ckpt["entropy_norm"][i].tolist()
            row["layer_entropy"] = per_ckpt["entropy"][i].mean(axis=1).tolist()
        for key in ("train/acc", "test/acc", "train/loss", "test/loss"):
            row[key] = float(per_ckpt[key][i])
        rows.append(row)
    return rows


def _columns(rows: list[dict]) -> dict[str, list]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: [r.get(k) for r in rows] for k in keys}


def _consistency(steps, test_acc, eval_steps, eval_acc, tol: float = 0.01) -> list[str]:
    """A warning when the recomputed test accuracy disagrees with metrics.jsonl."""
    recorded = dict(zip(eval_steps, eval_acc))
    bad = [(s, a, recorded[s]) for s, a in zip(steps, test_acc)
           if s in recorded and abs(a - recorded[s]) > tol]
    if not bad:
        return []
    s, a, b = bad[0]
    return [f"the test accuracy recomputed from the checkpoints differs from metrics.jsonl at "
            f"{len(bad)} checkpoint(s), first at step {s} ({a:.4f} vs {b:.4f}); is split.pt the "
            "run's own?"]


def summary_values(report: dict[str, Any]) -> dict[str, Any]:
    """The W&B summary of the suite (keys in the README)."""
    out = {"analysis/t_grok": report["t_grok"],
           "analysis/t_grok_method": report["t_grok_method"],
           "analysis/t_grok_max_rise": report["t_grok_max_rise"],
           "analysis/step_test_acc_0.95": report["step_test_acc_0.95"],
           "analysis/step_test_acc_0.99": report["step_test_acc_0.99"]}
    for name, value in report["alignment"].items():
        short = name.removesuffix("_sharpest_drop")
        out[f"analysis/{short}_drop_step"] = value["step"]
        out[f"analysis/{short}_drop_lag"] = value["lag"]
    for name, value in report["correlations"].items():
        short = name.removeprefix("test_accuracy_vs_")
        out[f"analysis/pearson_acc_{short}"] = value["pearson"]
        out[f"analysis/spearman_acc_{short}"] = value["spearman"]
    if report["before_after"]:
        for when in ("before", "after"):
            for key, value in report["before_after"][when].items():
                if key not in ("step", "relative_step"):
                    out[f"analysis/{key}_{when}"] = value
    return out


def _log(report: dict[str, Any], figures: dict[str, Path], logger: Logger, elapsed: float) -> None:
    metrics = report["analysis_metrics"]
    keys = [k for k in metrics if k.startswith(("rank/", "entropy/", "entropy_norm/"))]
    for i, step in enumerate(metrics["step"]):
        logger.log({k: metrics[k][i] for k in keys}, step=step)
    for name, path in figures.items():  # at the last analysed step (see grok.main.finish)
        logger.log_figure(f"plots/{name}", path, step=metrics["step"][-1])
    logger.summary({**summary_values(report), "time/analysis_s": elapsed})


def summary_line(report: dict[str, Any], run_dir: Path) -> str:
    """One printed line: t_grok, the accuracy levels, the drops and where the report went."""
    t = report["t_grok"]
    if t is None:
        head = "t_grok not detected"
    elif report["t_grok_method"] == "forced":
        head = f"t_grok {t} (forced)"
    else:
        lo, hi = report["t_grok_window_steps"]
        head = f"t_grok {t} (rise {report['t_grok_max_rise']:.2f} over steps {lo}-{hi})"

    def reached(level: str) -> str:
        step = report[f"step_test_acc_{level}"]
        return "never" if step is None else f"at {step}"

    parts = [head, f"test acc >= 0.95 {reached('0.95')}, >= 0.99 {reached('0.99')}"]
    for name, value in report["alignment"].items():
        if value["lag"] is not None:
            parts.append(f"{name.removesuffix('_sharpest_drop')} drop at {value['step']} "
                         f"(lag {value['lag']:+d})")
    return f"grokking: {'; '.join(parts)}; report {Path(run_dir) / REPORT_FILE}"


def _json_safe(value: Any) -> Any:
    """Plain JSON values: numpy to Python, NaN and infinities to null."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(_json_safe(data), indent=1, allow_nan=False)
    atomic_write(path, lambda f: f.write(text.encode()))


def _write_arrays(path: Path, scan: Scan) -> None:
    per_ckpt = _per_checkpoint(scan)
    arrays = {"step": np.asarray(scan.steps, dtype=np.int64)}
    arrays.update({k.replace("/", "_"): v for k, v in per_ckpt.items()})
    atomic_write(path, lambda f: np.savez(f, **arrays))
