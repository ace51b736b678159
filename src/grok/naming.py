"""How a run is named and grouped, in W&B and in resume checks, derived from its config."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from grok.config import Config, config_dict

# Keys that do not change what is trained: how long, where, how it is logged or analysed.
_RUNTIME_KEYS = ("steps", "device", "logger", "analysis", "seeds")
# Identity keys added after runs were saved without them: named only when not at this value, so
# that older runs keep their identity. Compare identities through complete_identity().
LATER_KEYS = {"train.precision": "fp32"}


def identity(cfg: Config) -> dict[str, Any]:
    """Everything that defines the trained function up to its length; must match to resume."""
    d = config_dict(cfg)
    for key in _RUNTIME_KEYS:
        d.pop(key)
    train = d.pop("train")
    d["train.batch_size"] = train["batch_size"]
    if train["precision"] != LATER_KEYS["train.precision"]:
        d["train.precision"] = train["precision"]
    return {k: d[k] for k in sorted(d)}


def complete_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """An identity with the LATER_KEYS it leaves out at their values, for comparisons."""
    return {**LATER_KEYS, **identity}


def variant(cfg: Config) -> str:
    """A readable label of the variant: task, split and model, e.g. add97-random0.5-power_2l."""
    s = cfg.split
    split = s.name + (f"-{s.pattern}" if s.name == "structured" else "") + f"{s.train_frac:g}"
    return f"{cfg.task.op}{cfg.task.p}-{split}-{cfg.model.name}"


def group(cfg: Config) -> str:
    """The W&B group: the variant plus a short hash of everything but the seeds, so that the seeds
    of one configuration group together and differing configurations never do."""
    ident = identity(cfg)
    ident.pop("seed")
    ident["split"] = {k: v for k, v in ident["split"].items() if k != "seed"}
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:6]
    return f"{variant(cfg)}-{digest}"


def run_name(cfg: Config) -> str:
    return f"{variant(cfg)}-s{cfg.seed}"
