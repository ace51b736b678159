"""Analysis suite `trajectory`: how the learned function changes from checkpoint to checkpoint.

Three N x N matrices over a run's checkpoints (definitions in grok.analysis.similarity):
tn_similarity (cosine of class-centred logit tensors over all inputs), act_similarity (linear
CKA of the final-layer representation at `=`) and js_divergence (mean Jensen-Shannon divergence
of the softmax outputs); for bilinear models also tn_exact_similarity, the weight-only cosine of
the symmetrised interaction tensors.

How it scales: one forward pass per checkpoint writes that checkpoint's features (centred
logits, centred representations and, for bilinear models, its tensor features) to float32 files
in a temporary folder; the matrices are then filled block by block (grok.analysis.similarity.
blockwise_matrices), with at most two blocks of checkpoints in memory. Nothing holds N logit
tensors at once, and no forward pass is repeated.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from grok import plots
from grok.analysis import similarity as sim
from grok.analysis.base import Probe, forward_pass
from grok.analysis.scan import load_or_reason
from grok.data.splits import Split
from grok.data.tasks import Task
from grok.errors import GrokError
from grok.files import atomic_write
from grok.progress import progress_enabled
from grok.tracking import Logger

OUT_DIR = Path("analysis") / "trajectory"
SUMMARY_FILE = OUT_DIR / "summary.json"
MATRICES = ("tn_similarity", "act_similarity", "js_divergence")
EXACT = "tn_exact_similarity"  # bilinear models only
DIVERGENCES = frozenset({"js_divergence"})
BLOCK_MEMORY = 1 << 30  # bytes for the two blocks of features held while filling the matrices
MEMORISATION_ACC, GENERALISATION_ACC = 0.2, 0.9  # phase thresholds on test accuracy

log = logging.getLogger(__name__)


class TrajectoryError(GrokError):
    """The run directory cannot be analysed (e.g. it has no checkpoints)."""


class FeatureStore:
    """Per-checkpoint float32 arrays appended to one raw file per feature, read back a block of
    checkpoints at a time. Files go to a temporary folder (under $TMPDIR) removed on close."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="grok-trajectory-")
        self.folder = Path(self._tmp.name)
        self.shapes: dict[str, tuple[int, ...]] = {}

    def append(self, name: str, array: torch.Tensor) -> None:
        a = array.detach().to("cpu", torch.float32).contiguous().numpy()
        if self.shapes.setdefault(name, a.shape) != a.shape:
            raise ValueError(f"feature {name!r} changed shape from {self.shapes[name]} to "
                             f"{a.shape}; are all checkpoints from the same run?")
        with open(self.folder / f"{name}.f32", "ab") as f:
            a.tofile(f)

    def read(self, name: str, start: int, stop: int) -> torch.Tensor:
        shape = self.shapes[name]
        size = math.prod(shape)
        a = np.fromfile(self.folder / f"{name}.f32", dtype=np.float32,
                        count=(stop - start) * size, offset=start * size * 4)
        return torch.from_numpy(a).view(stop - start, *shape)

    def bytes_per_item(self) -> int:
        return sum(4 * math.prod(s) for s in self.shapes.values())

    def ensure_space(self, n_items: int) -> None:
        """Fail early, with the fix, if the folder cannot hold n_items items."""
        need = n_items * self.bytes_per_item()
        free = shutil.disk_usage(self.folder).free
        if free < need:
            raise TrajectoryError(
                f"the trajectory analysis needs {need / 1e9:.1f} GB of temporary space for "
                f"{n_items} checkpoints but {self.folder.parent} has {free / 1e9:.1f} GB free; "
                "point TMPDIR at a larger disk")

    def close(self) -> None:
        self._tmp.cleanup()


def extract_features(checkpoints: list[tuple[int, Path]], probe: Probe, store: FeatureStore,
                     device: torch.device, progress: bool
                     ) -> tuple[list[int], dict[str, np.ndarray]]:
    """One forward pass per checkpoint; features go to `store`. Returns the steps of the
    checkpoints used (an unusable one is skipped with a warning, as the grokking suite does) and
    per-checkpoint statistics the JS divergence needs (sum p log p and total mass, float64)."""
    neg_entropy, mass, used = [], [], []
    bilinear = None
    bar = tqdm(checkpoints, desc="trajectory: checkpoints", unit="ckpt",
               disable=not progress_enabled(progress))
    for step, path in bar:
        loaded = load_or_reason(path, device)
        if isinstance(loaded, str):
            log.warning("trajectory: skipping unusable checkpoint %s (%s)", path, loaded)
            continue
        saved_step, model = loaded
        if saved_step != step:
            raise TrajectoryError(f"{path} holds step {saved_step}, not {step}")
        fp = forward_pass(model, probe, step)
        logits = sim.centre_classes(fp.logits).float()
        h, m = sim.neg_entropy_and_mass(sim.probabilities(logits))
        neg_entropy.append(h)
        mass.append(m)
        store.append("logits", logits)
        store.append("reps", sim.centre_inputs(fp.residuals[-1].float()).T)  # (d, n)
        if bilinear is None:
            bilinear = hasattr(model, "interaction_factors")
        if bilinear != hasattr(model, "interaction_factors"):
            raise TrajectoryError(f"{path} has another architecture than the earlier "
                                  "checkpoints; analyse one run at a time")
        if bilinear:
            store.append("tensor", sim.interaction_features(model.interaction_factors()))
        if len(neg_entropy) == 1:
            store.ensure_space(len(checkpoints))
        used.append(step)
        del fp, model
    if not used:
        raise TrajectoryError("no checkpoint could be used; see the warnings above")
    return used, {"neg_entropy": np.array(neg_entropy), "mass": np.array(mass)}


def auto_block_size(bytes_per_checkpoint: int, n: int) -> int:
    """The largest block whose two loaded copies (features plus probabilities) fit in
    BLOCK_MEMORY."""
    return max(1, min(n, BLOCK_MEMORY // (2 * bytes_per_checkpoint)))


def similarity_matrices(store: FeatureStore, stats: dict[str, np.ndarray], n: int,
                        n_inputs: int, block: int, device: torch.device, progress: bool,
                        timing: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """The N x N matrices, filled block by block from the stored features. `timing`, if given,
    receives the seconds spent loading blocks ("load") and the checkpoints loaded ("loaded")."""
    has_tensor = "tensor" in store.shapes
    timing = {} if timing is None else timing
    timing.update(load=0.0, loaded=0)

    def load(i: int, j: int) -> dict[str, torch.Tensor]:
        clock = time.perf_counter()
        logits = store.read("logits", i, j).to(device)
        probs = torch.empty_like(logits)
        for k in range(len(logits)):  # the same call, on the same rows, as extract_features
            probs[k] = sim.probabilities(logits[k])
        out = {"logits": logits, "probs": probs, "reps": store.read("reps", i, j).to(device)}
        if has_tensor:
            out["tensor"] = store.read("tensor", i, j).to(device)
        timing["load"] += time.perf_counter() - clock
        timing["loaded"] += j - i
        return out

    def kernel(a: dict, b: dict, same: bool) -> dict[str, torch.Tensor]:
        out = {"tn": sim.gram_block(a["logits"], b["logits"]),
               "hsic": sim.hsic_block(a["reps"], b["reps"], upper=same),
               "xlogx": sim.xlogx_sum_block(a["probs"], b["probs"], upper=same)}
        if has_tensor:
            out["tensor"] = sim.gram_block(a["tensor"], b["tensor"])
        return out

    with tqdm(total=sim.n_block_pairs(n, block), desc="trajectory: similarity blocks",
              disable=not progress_enabled(progress)) as bar:
        raw = sim.blockwise_matrices(n, block, load, kernel, on_block=bar.update)
    matrices = {
        "tn_similarity": sim.cosine_from_gram(raw["tn"]),
        "act_similarity": sim.cosine_from_gram(raw["hsic"]),
        "js_divergence": sim.js_from_sums(raw["xlogx"], stats["neg_entropy"], stats["mass"],
                                          n_inputs),
    }
    if has_tensor:
        matrices[EXACT] = sim.cosine_from_gram(raw["tensor"])
    return matrices


# ------------------------------------------------------------------------------ summary
def training_history(metrics: list[dict]) -> dict[str, dict[str, float]]:
    """step -> train/validation loss and accuracy, from the rows of metrics.jsonl."""
    keys = {"train_loss": "train/loss", "train_acc": "train/acc", "val_loss": "test/loss",
            "val_acc": "test/acc"}
    rows = sorted((r for r in metrics if "test/acc" in r), key=lambda r: r["step"])
    return {str(r["step"]): {k: r[src] for k, src in keys.items() if src in r} for r in rows}


def phases(history: dict[str, dict[str, float]]) -> dict[str, int | None]:
    """Memorisation ends at the first step with test accuracy > 0.2; generalisation starts at
    the first step with test accuracy > 0.9 (None when never reached)."""
    def first_above(threshold: float) -> int | None:
        return next((int(s) for s, r in history.items() if r["val_acc"] > threshold), None)

    return {"memorisation_end": first_above(MEMORISATION_ACC),
            "generalisation_start": first_above(GENERALISATION_ACC)}


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def summarize(matrices: dict[str, np.ndarray], steps: list[int],
              history: dict[str, dict[str, float]], t_grok: int | None) -> dict:
    """Everything summary.json holds, from the matrices, the steps and the training history."""
    n = len(steps)
    upper = np.triu_indices(n, 1)
    phase = phases(history)
    gen = phase["generalisation_start"]
    # the final checkpoint is left out of the before/after means: it is the reference itself
    earlier = np.array(steps[:-1])
    metrics = {}
    for name, m in matrices.items():
        consecutive = np.diag(m, 1)
        to_final = m[:, -1]
        metrics[name] = {
            "kind": "divergence" if name in DIVERGENCES else "similarity",
            "consecutive": consecutive.tolist(),  # M[k, k+1], at checkpoint_steps[k + 1]
            "rate_of_change": (consecutive if name in DIVERGENCES
                               else 1.0 - consecutive).tolist(),
            "to_final": to_final.tolist(),
            "mean": _mean(m[upper]),
            "std": float(np.std(m[upper])) if n > 1 else None,
            "to_final_before_generalisation": None if gen is None
            else _mean(to_final[:-1][earlier < gen]),
            "to_final_after_generalisation": None if gen is None
            else _mean(to_final[:-1][earlier >= gen]),
        }
    names = list(matrices)
    correlations = {f"{a}~{b}": _pearson(matrices[a][upper], matrices[b][upper])
                    for i, a in enumerate(names) for b in names[i + 1:]}
    return {"n_checkpoints": n, "checkpoint_steps": list(steps), "t_grok": t_grok,
            "phases": phase, "metrics": metrics, "correlations": correlations}


def _json_safe(obj):
    """NaN and infinity become null (JSON has neither)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_json(obj, path: Path) -> None:
    text = json.dumps(_json_safe(obj), indent=1, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def _write_array(array: np.ndarray, path: Path) -> None:
    atomic_write(path, lambda f: np.save(f, array))


# --------------------------------------------------------------------------- the suite
def run_trajectory_suite(run_dir: Path, task: Task, split: Split,
                         checkpoints: list[tuple[int, Path]], metrics: list[dict], *,
                         device: torch.device, t_grok: int | None, logger: Logger,
                         progress: bool = True, block_size: int | None = None,
                         title: str = "") -> dict:
    """Compute the trajectory matrices over `checkpoints` ((step, path), in step order), write
    analysis/trajectory/*.npy, training_history.json, summary.json and plots/trajectory_*.png
    into run_dir (the figures titled with `title`, the run's name, first), log the figures and a
    few summary scalars, and return the summary."""
    run_dir = Path(run_dir)
    checkpoints = sorted(checkpoints)
    if not checkpoints:
        raise TrajectoryError(f"{run_dir} has no checkpoints to analyse; train with "
                              "train.checkpoints > 0")
    out_dir = run_dir / OUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    probe = Probe.full(task, split, device)

    clock = time.perf_counter()
    store = FeatureStore()
    try:
        steps, stats = extract_features(checkpoints, probe, store, device, progress)
        n = len(steps)
        forward_s = time.perf_counter() - clock
        loaded = store.bytes_per_item() + 4 * math.prod(store.shapes["logits"])  # + probs
        block = block_size or auto_block_size(loaded, n)
        loads: dict[str, float] = {}
        matrices = similarity_matrices(store, stats, n, len(probe.tokens), block, device,
                                       progress, loads)
    finally:
        store.close()
    matrices_s = time.perf_counter() - clock - forward_s

    for name, m in matrices.items():
        _write_array(m, out_dir / f"{name}.npy")
    _write_array(np.array(steps, dtype=np.int64), out_dir / "checkpoint_steps.npy")
    history = training_history(metrics)
    _write_json(history, out_dir / "training_history.json")
    summary = summarize(matrices, steps, history, t_grok)

    figures = plots.trajectory_figures(matrices, summary, history, run_dir / "plots", title)
    for name, path in figures.items():
        logger.log_figure(f"trajectory/{name}", path, step=steps[-1])
    summary["block_size"] = block
    summary["timing_s"] = {"forward": forward_s, "matrices": matrices_s,
                           "block_loads": loads["load"],
                           "plots": time.perf_counter() - clock - forward_s - matrices_s}
    summary["checkpoints_loaded_from_store"] = loads["loaded"]
    _write_json(summary, run_dir / SUMMARY_FILE)
    logger.summary({k: v for k, v in _json_safe(summary_scalars(summary)).items()
                    if v is not None})
    return summary


def summary_line(summary: dict, run_dir: Path) -> str:
    """One printed line: where the function moved most between consecutive checkpoints, how
    close it was to the final one before and after generalisation, and where the files went."""
    steps, metrics = summary["checkpoint_steps"], summary["metrics"]
    n = summary["n_checkpoints"]
    parts = [f"{n} checkpoint{'' if n == 1 else 's'}"]
    js = metrics["js_divergence"]["consecutive"]
    if js:
        k = int(np.argmax(js))
        parts.append(f"largest change between consecutive checkpoints: step {steps[k]} -> "
                     f"{steps[k + 1]} (JS divergence {js[k]:.3g} nats)")
    gen = summary["phases"]["generalisation_start"]
    if gen is None:
        parts.append(f"test accuracy never above {GENERALISATION_ACC}")
    else:
        tn = metrics["tn_similarity"]
        before, after = (tn[f"to_final_{w}_generalisation"] for w in ("before", "after"))
        parts.append("TN similarity to the final checkpoint "
                     f"{'n/a' if before is None else f'{before:.2f}'} before step {gen} "
                     f"(test acc > {GENERALISATION_ACC}), "
                     f"{'n/a' if after is None else f'{after:.2f}'} from it")
    return f"trajectory: {'; '.join(parts)}; files {Path(run_dir) / OUT_DIR}"


def summary_scalars(summary: dict) -> dict[str, float | int | None]:
    """The few numbers worth a W&B summary column."""
    out: dict[str, float | int | None] = {"trajectory/n_checkpoints": summary["n_checkpoints"]}
    for name, m in summary["metrics"].items():
        out[f"trajectory/{name}_mean"] = m["mean"]
        out[f"trajectory/{name}_to_final_before_gen"] = m["to_final_before_generalisation"]
        out[f"trajectory/{name}_to_final_after_gen"] = m["to_final_after_generalisation"]
    for pair, r in summary["correlations"].items():
        out[f"trajectory/corr_{pair.replace('~', '_vs_')}"] = r
    return out
