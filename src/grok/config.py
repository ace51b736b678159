"""Config schemas (registered in Hydra's ConfigStore) and the range checks Hydra cannot express.

Hydra checks types and unknown keys against these dataclasses while composing. `validate` then
checks values (ranges, combinations) and returns plain dataclasses, so no DictConfig ever reaches
a component. Only the entry points import this module's Hydra-facing half.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import typing
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from grok.data.tasks import OPERATIONS, is_prime
from grok.errors import GrokError

SPLITS = ("random", "structured", "conflict")
PATTERNS = ("block", "stripe")
ARCHS = ("transformer", "bilinear")
ACTIVATIONS = ("relu", "gelu")
CHECKPOINT_SPACINGS = ("log", "linear", "log+linear")
LOGGERS = ("wandb", "csv", "none")
PRECISIONS = ("fp32", "bf16")
ANALYSIS_SUITES = ("none", "grokking", "trajectory", "full")
MAX_MODULUS = 4096  # p^2 pairs are built and evaluated: ~17M at the bound, 80 GB of pairs at 1e5
# torch generators take 64-bit seeds, and the minibatch order seeds one with seed * 1_000_003 +
# epoch (grok.train.sampler): a larger seed fails with an overflow once training has begun
MAX_SEED = 2**32 - 1
# the checkpoint schedule spaces steps in float64 (np.geomspace), which holds integers exactly up
# to 2^53; numpy overflowed on 20-digit counts with a traceback
MAX_STEPS = 2**53
# the checkpoint schedule is computed as arrays of this length before the disk check can refuse
# it (10^9 took 8 GB); a million checkpoints of even a tiny model fill tens of gigabytes
MAX_CHECKPOINTS = 10**6


class ConfigError(GrokError, ValueError):
    """A config value is out of range or an invalid combination; the message says how to fix it."""


@dataclass
class TaskConfig:
    op: str = "add"
    p: int = 97


@dataclass
class SplitConfig:
    name: str = "random"
    train_frac: float = 0.5
    pattern: str = "block"  # structured only: block | stripe
    seed: int | None = None  # None: use the top-level seed


@dataclass
class ModelConfig:
    name: str = "power_2l"
    arch: str = "transformer"  # bilinear reads only d_model (embedding) and d_mlp (hidden units)
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    act: str = "relu"
    layer_norm: bool = True  # pre-LN when true, none when false


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_steps: int = 10


@dataclass
class TrainConfig:
    name: str = "default"
    batch_size: Any = 512  # a positive int, or "full" for full-batch training
    # steps between evaluations, or auto (every 100 to step 20k, every 500 after it;
    # grok.train.schedule.eval_steps)
    eval_every: Any = "auto"
    # number of weights-only analysis checkpoints, or auto (grok.train.schedule.checkpoint_count)
    checkpoints: Any = 100
    checkpoint_spacing: str = "log+linear"
    resume_every: int = 1000  # steps between resume-state (last.pt) saves
    progress: bool = True
    # torch.compile the training loss and the evaluation forward pass: true, false, or auto (runs
    # of 20k steps or more on the CPU, when a C++ compiler is present; grok.device.use_compile)
    compile: Any = "auto"
    precision: str = "fp32"  # fp32 | bf16 (bfloat16 autocast for the training matmuls)
    fused_optimizer: bool = True  # fused AdamW kernel on CPU/CUDA (else foreach)


@dataclass
class AnalysisConfig:
    name: str = "none"
    window: int = 5  # t_grok: evaluation points per sliding window
    threshold: float = 0.15  # t_grok: smallest test-accuracy rise across a window
    monotone: bool = True  # t_grok: on the running maximum of test accuracy
    before: int = 3  # checkpoints selected before, near and after t_grok
    near: int = 2
    after: int = 3
    before_after_ratio: float = 2.0  # "before"/"after" values at t_grok / r and t_grok * r
    batch_size: int = 2048  # probe inputs per forward batch
    # trajectory: checkpoints per block of the similarity matrices (two blocks are in memory at
    # once); None picks the largest block that keeps them under about 1 GB
    block_size: int | None = None


@dataclass
class LoggerConfig:
    backend: str = "wandb"
    project: str = "grok"
    entity: str | None = None
    mode: str | None = None  # None: $WANDB_MODE, else "offline"
    tags: list[str] = field(default_factory=list)


@dataclass
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    # Non-empty: train these seeds in one process as one batched model (grok.train.multiseed),
    # each into run_dir/seed_<s>; `seed` is then ignored.
    seeds: list[int] = field(default_factory=list)
    steps: int = 5000
    device: str = "auto"

    @property
    def split_seed(self) -> int:
        return self.seed if self.split.seed is None else self.split.seed


# conf/hydra/launcher/ holds our defaults for the launcher plugins under the plugins' own option
# names; Hydra 1.3 validates such a file against the plugin's schema of the same name and warns
# that this matching is deprecated. The files hold every schema key, so they work either way.
# (Set here, at import, because submitit jobs import this module but not grok.main.)
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema")


def register_configs() -> None:
    """Register the schema (config.yaml lists it first, so every group file merged into its typed
    fields is checked against the matching dataclass: types and unknown keys), the sweeper that
    checks every job of a sweep before starting one (hydra/sweeper=grok) and the presets'
    run-folder resolver."""
    import hydra_plugins.grok_sweeper

    ConfigStore.instance().store(name="base_config", node=Config)
    hydra_plugins.grok_sweeper.register()
    if not OmegaConf.has_resolver("grok.seed_folder"):
        OmegaConf.register_new_resolver(
            "grok.seed_folder", lambda seed, seeds: seed_folder(seed, list(seeds or [])))


def seed_folder(seed: int, seeds: list[int]) -> str:
    """A preset's run folder: s<seed> for one run, seeds_<a>_<b>... for a seed batch, so that a
    batch never lands in (and rewrites the record of) the single run of its first seed."""
    return "seeds_" + "_".join(str(s) for s in seeds) if seeds else f"s{seed}"


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def _one_of(key: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        _fail(key, value, "choose one of " + ", ".join(options))


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _positive(key: str, value: Any) -> None:
    if not _is_int(value, minimum=1):
        _fail(key, value, "must be a positive integer")


def check(cfg: Config) -> Config:
    """Raise ConfigError naming the key, the bad value and what is allowed; else return cfg."""
    t, s, m, o, tr = cfg.task, cfg.split, cfg.model, cfg.optim, cfg.train
    _one_of("task.op", t.op, tuple(OPERATIONS))
    if t.p < 3:
        _fail("task.p", t.p, "the modulus must be at least 3")
    if t.p > MAX_MODULUS:
        _fail("task.p", t.p, f"every run builds and evaluates all p^2 pairs; use p <= "
                             f"{MAX_MODULUS}")
    if t.op == "div" and not is_prime(t.p):
        _fail("task.p", t.p, "div needs a prime modulus so that every b != 0 has an inverse")

    _one_of("split.name", s.name, SPLITS)
    if s.name == "conflict":
        if t.op == "div":
            _fail("split.name", s.name, "the conflict split is not defined for div "
                  "(division has no integer shortcut); use random or structured")
        if not 0.0 < s.train_frac <= 1.0:
            _fail("split.train_frac", s.train_frac, "must be in (0, 1] for the conflict split")
    elif not 0.0 < s.train_frac < 1.0:
        _fail("split.train_frac", s.train_frac, "must be strictly between 0 and 1")
    if s.name == "structured":
        _one_of("split.pattern", s.pattern, PATTERNS)

    _one_of("model.arch", m.arch, ARCHS)
    _one_of("model.act", m.act, ACTIVATIONS)
    for key in ("n_layers", "d_model", "n_heads", "d_mlp"):
        _positive(f"model.{key}", getattr(m, key))
    if m.d_model % m.n_heads:
        _fail("model.d_model", m.d_model, f"must be divisible by model.n_heads={m.n_heads}")
    if m.arch == "bilinear" and m.n_layers != 1:
        _fail("model.n_layers", m.n_layers, "the bilinear model has exactly one layer")

    _one_of("optim.name", o.name, ("adamw",))
    # nan and inf pass the comparisons below the wrong way (torch's AdamW raises on a nan weight
    # decay; an infinite one, or lr, makes the loss nan at the first step)
    if not (math.isfinite(o.lr) and o.lr > 0):
        _fail("optim.lr", o.lr, "must be a finite number > 0")
    if not (math.isfinite(o.weight_decay) and o.weight_decay >= 0):
        _fail("optim.weight_decay", o.weight_decay, "must be a finite number >= 0")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        _fail("optim.betas", list(o.betas), "must be two numbers in [0, 1)")
    if o.warmup_steps < 0:
        _fail("optim.warmup_steps", o.warmup_steps, "must be >= 0")

    if tr.batch_size != "full" and not _is_int(tr.batch_size, minimum=1):
        _fail("train.batch_size", tr.batch_size, "choose a positive integer or full")
    if tr.eval_every != "auto" and not _is_int(tr.eval_every, minimum=1):
        _fail("train.eval_every", tr.eval_every, "choose a number of steps >= 1 or auto")
    _positive("train.resume_every", tr.resume_every)
    if tr.checkpoints != "auto" and not (_is_int(tr.checkpoints, minimum=0)
                                         and tr.checkpoints <= MAX_CHECKPOINTS):
        _fail("train.checkpoints", tr.checkpoints,
              f"choose a count from 0 to {MAX_CHECKPOINTS} or auto")
    if tr.checkpoints == 0 and cfg.analysis.name != "none":
        _fail("train.checkpoints", 0, f"analysis={cfg.analysis.name} reads the analysis "
                                      "checkpoints; save some or choose analysis=none")
    _one_of("train.checkpoint_spacing", tr.checkpoint_spacing, CHECKPOINT_SPACINGS)
    _one_of("train.precision", tr.precision, PRECISIONS)
    if not (isinstance(tr.compile, bool) or tr.compile == "auto"):
        _fail("train.compile", tr.compile, "choose true, false or auto")

    check_analysis(cfg.analysis)
    check_logger(cfg.logger)
    if not (_is_int(cfg.steps, minimum=1) and cfg.steps <= MAX_STEPS):
        _fail("steps", cfg.steps, f"must be a positive integer up to 2^53 = {MAX_STEPS}")
    if not 0 <= cfg.seed <= MAX_SEED:
        _fail("seed", cfg.seed, f"must be in 0..{MAX_SEED}")
    if s.seed is not None and not 0 <= s.seed <= MAX_SEED:
        _fail("split.seed", s.seed, f"must be in 0..{MAX_SEED} (or null: the run's seed)")
    if (any(not 0 <= s <= MAX_SEED for s in cfg.seeds)
            or len(set(cfg.seeds)) != len(cfg.seeds)):
        _fail("seeds", list(cfg.seeds), f"must be distinct integers in 0..{MAX_SEED}, e.g. "
                                        "seeds=[0,1,2,3]")
    check_device(cfg.device)
    return cfg


# grok.analyze and grok.compare check these too: they open the device and the logger only after
# reading (and, for grok.compare, writing) files, where torch or wandb would raise a traceback
def check_device(device: str) -> None:
    if not (device in ("auto", "cpu", "cuda", "mps") or device.startswith("cuda:")):
        _fail("device", device, "choose auto, cpu, cuda, cuda:N or mps")


def check_logger(lc: LoggerConfig) -> None:
    # grok.analyze leaves a setting None to take the training run's (grok.analyze.posthoc_logger)
    if lc.backend is not None:
        _one_of("logger.backend", lc.backend, LOGGERS)
    if lc.mode is not None:
        _one_of("logger.mode", lc.mode, ("online", "offline", "disabled"))


def check_analysis(a: AnalysisConfig) -> AnalysisConfig:
    _one_of("analysis.name", a.name, ANALYSIS_SUITES)
    if a.window < 2:
        _fail("analysis.window", a.window, "must be at least 2 evaluation points")
    if not 0.0 < a.threshold <= 1.0:
        _fail("analysis.threshold", a.threshold, "must be in (0, 1] (a rise in test accuracy)")
    for key in ("before", "near", "after"):
        if getattr(a, key) < 0:
            _fail(f"analysis.{key}", getattr(a, key), "must be >= 0")
    if not a.before_after_ratio >= 1.0:
        _fail("analysis.before_after_ratio", a.before_after_ratio, "must be >= 1")
    _positive("analysis.batch_size", a.batch_size)
    if a.block_size is not None:
        _positive("analysis.block_size", a.block_size)
    return a


def unknown_keys(cfg: DictConfig, schema: type | None = None) -> list[str]:
    """Dotted keys of cfg that the dataclass `schema` (default Config) does not have.

    The schema rejects `foo=1`, but `+foo=1` lifts Hydra's struct flag to add the key, and
    OmegaConf.to_object then drops it without a word: a typo like `+model.dmodel=256` would
    train the default model."""
    types = typing.get_type_hints(schema or Config)
    unknown = []
    for key in cfg:
        if key not in types:
            unknown.append(str(key))
        elif dataclasses.is_dataclass(types[key]) and isinstance(cfg[key], DictConfig):
            unknown += [f"{key}.{k}" for k in unknown_keys(cfg[key], types[key])]
    return unknown


def reject_unknown_keys(cfg: DictConfig, schema: type, module: str) -> None:
    unknown = unknown_keys(cfg, schema)
    if unknown:
        key, meant = unknown[0], _closest_key(unknown[0], schema)
        hint = f"; did you mean {meant}?" if meant else ""
        raise ConfigError(f"unknown config key {key} (added with +{key}=...{hint}): remove it; "
                          f"`python -m {module} --cfg job` lists every key")


def check_override_keys(args: Iterable[str], schema: type, module: str,
                        groups: Iterable[str] = ()) -> None:
    """Refuse a `key=value` command-line override whose key the schema lacks, naming the key it
    most likely meant, before Hydra composes. Hydra's own error for it ("Could not override
    'stesp'. To append to your config use +stesp=10", and a few more lines) advises the `+` that
    reject_unknown_keys then refuses. Flags, `+`/`~`/`++` overrides, Hydra's own keys, group
    paths (a/b=c) and the config `groups` that are not schema fields (experiment=) are Hydra's."""
    for arg in args:
        if arg.startswith(("-", "+", "~")) or "=" not in arg:
            continue
        key = arg.split("=", 1)[0]
        if any(c in key for c in "/@") or key.split(".")[0] in ("hydra", *groups):
            continue
        if _unknown(key.split("."), schema):
            meant = _closest_key(key, schema)
            hint = f": did you mean {meant}?" if meant else ""
            raise ConfigError(f"unknown config key {key}{hint} (`python -m {module} --cfg job` "
                              "lists every key)")


def refuse_unknown_override_keys(schema: type, module: str, groups: Iterable[str] = ()) -> None:
    """check_override_keys on this process's command line, for an entry point before it hands
    over to Hydra: exit 1 with one line. Help requests are Hydra's whatever else is typed."""
    args = sys.argv[1:]
    if any(a in ("-h", "--help", "--hydra-help") for a in args):
        return
    try:
        check_override_keys(args, schema, module, groups)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def _unknown(parts: list[str], schema: type) -> bool:
    """Whether the dotted key `parts` is not in the dataclass schema (a key inside a list or a
    free-form field is not this check's to judge)."""
    types = typing.get_type_hints(schema)
    if parts[0] not in types:
        return True
    inner = types[parts[0]]
    return len(parts) > 1 and dataclasses.is_dataclass(inner) and _unknown(parts[1:], inner)


def _schema_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key of the dataclass schema, sections included."""
    keys = []
    for name, kind in typing.get_type_hints(schema).items():
        keys.append(prefix + name)
        if dataclasses.is_dataclass(kind):
            keys += _schema_keys(kind, f"{prefix}{name}.")
    return keys


def _closest_key(key: str, schema: type) -> str | None:
    """The schema key a mistyped (or misplaced) key most likely meant: one with the same last
    part (model.d_model for d_model), else the closest spelling in the same section (compared
    without the section's name, which would make model.xyzzy close to model.act), else the
    closest at the same depth (modl.d_modle); None when none is close."""
    keys = _schema_keys(schema)
    section, _, last = key.rpartition(".")
    same = [k for k in keys if k.rpartition(".")[2] == last and k != key]
    if same:
        return same[0]
    siblings = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == section}
    if siblings:
        close = difflib.get_close_matches(last, list(siblings), n=1, cutoff=0.6)
        return siblings[close[0]] if close else None
    level = [k for k in keys if k.count(".") == key.count(".")]
    close = difflib.get_close_matches(key, level, n=1, cutoff=0.6)
    return close[0] if close else None


def to_config(cfg: DictConfig) -> Config:
    """Turn a composed (already type-checked) DictConfig into a checked plain Config."""
    reject_unknown_keys(cfg, Config, "grok.main")
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, Config)
    obj.optim.betas = list(obj.optim.betas)
    obj.logger.tags = list(obj.logger.tags)
    obj.seeds = list(obj.seeds)
    return check(obj)


def compose(*overrides: str) -> Config:
    """The checked Config that `python -m grok.main <overrides>` would run, for tools that build
    runs without the Hydra app (grok.bench)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    register_configs()
    with initialize_config_module(config_module="grok.conf", version_base="1.3"):
        return to_config(hydra_compose(config_name="config", overrides=list(overrides)))


def config_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain nested dicts (for W&B, the resume state and comparisons)."""
    return dataclasses.asdict(cfg)
