import os
import sys
from pathlib import Path

import grok.conf
import pytest

from grok import config as config_module
from grok.assemble import NotARunDir, check_output_folder
from grok.config import Config, ConfigError
from grok.main import main
from tests.conftest import compose_config, run_cli

CONF = Path(grok.conf.__file__).parent
GROUPS = ["task", "split", "model", "optim", "train", "analysis", "logger"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes(group):
    assert options(group), group
    for option in options(group):
        overrides = [f"{group}={option}"]
        if group == "split" and option == "conflict":
            overrides.append("task=add")
        cfg = compose_config(*overrides)
        assert getattr(cfg, group).name if group not in ("task", "logger") else True


def test_headline_command_composes():
    cfg = compose_config("split=structured", "steps=400000")
    assert cfg.split.name == "structured" and cfg.steps == 400000 and cfg.split.pattern == "block"
    assert cfg.train.compile == "auto"  # so that it compiles (grok.device.use_compile)


@pytest.mark.parametrize("value,expected", [("true", True), ("false", False), ("auto", "auto")])
def test_train_compile_takes_true_false_or_auto(value, expected):
    assert compose_config(f"train.compile={value}").train.compile == expected


def test_defaults():
    cfg = compose_config()
    assert (cfg.task.op, cfg.task.p, cfg.split.name, cfg.split.train_frac) == ("add", 97,
                                                                              "random", 0.8)
    assert cfg.model.name == "power_2l" and cfg.optim.weight_decay == 1.0
    assert cfg.optim.betas == [0.9, 0.98] and cfg.optim.warmup_steps == 10


@pytest.mark.parametrize("overrides,key", [
    (["split.train_frac=1.5"], "split.train_frac"),
    (["split.train_frac=0"], "split.train_frac"),
    (["task.p=2"], "task.p"),
    (["task=div", "task.p=91"], "task.p"),
    (["steps=0"], "steps"),
    (["model.d_model=130"], "model.d_model"),
    (["task=div", "split=conflict"], "split.name"),
    (["split=structured", "split.pattern=diagonal"], "split.pattern"),
    (["train.batch_size=half"], "train.batch_size"),
    (["optim.lr=-1"], "optim.lr"),
    (["optim.lr=inf"], "optim.lr"),
    (["optim.weight_decay=nan"], "optim.weight_decay"),
    (["optim.weight_decay=inf"], "optim.weight_decay"),
    (["optim.betas=[0.9,1.2]"], "optim.betas"),
    (["device=tpu"], "device"),
    (["logger.mode=sometimes"], "logger.mode"),
    (["train.compile=sometimes"], "train.compile"),
    (["train.checkpoints=many"], "train.checkpoints"),
    (["train.checkpoints=-1"], "train.checkpoints"),
    (["train.eval_every=0"], "train.eval_every"),
    (["train.eval_every=often"], "train.eval_every"),
    (["task.p=100003"], "task.p"),
    (["split.seed=-3"], "split.seed"),
    (["seed=4294967296"], "seed"),  # the minibatch generator's seed overflowed mid-run
    (["split.seed=99999999999999999999"], "split.seed"),
    (["seeds=[0,4294967296]"], "seeds"),
    (["train.checkpoints=0"], "train.checkpoints"),  # the default analysis needs them
    # numpy overflowed with a traceback on 20 digits; 10^16 steps were killed for memory
    (["steps=100000000000000000000"], "steps"),
    (["steps=9007199254740993"], "steps"),
    (["train.checkpoints=1000001"], "train.checkpoints"),  # 10^9 took 8 GB before the disk check
])
def test_out_of_range_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        compose_config(*overrides)
    assert str(err.value).startswith(f"{key}=")


@pytest.mark.parametrize("value", ["half", "0", "-512"])
def test_a_bad_batch_size_says_that_full_is_allowed_too(value):
    with pytest.raises(ConfigError, match="choose a positive integer or full"):
        compose_config(f"train.batch_size={value}")


def test_values_next_to_the_bounds_are_accepted():
    assert compose_config("train.checkpoints=0", "analysis=none").train.checkpoints == 0
    assert compose_config("task.p=4096", "split.seed=0").task.p == 4096
    assert compose_config("seed=4294967295", "split.seed=4294967295").seed == 2**32 - 1
    assert compose_config("steps=9007199254740992").steps == 2**53
    assert compose_config("train.checkpoints=1000000").train.checkpoints == 10**6


@pytest.mark.parametrize("override,needle", [
    ("split.train_frac=1.5", "split.train_frac=1.5 is invalid"),
    ("task=div task.p=91", "div needs a prime modulus"),
    ("split=bogus", "Could not find 'split/bogus'"),
    ("steps=abc", "steps"),
    ("nonsense=1", "nonsense"),
    ("model.n_heads=3.5", "n_heads"),
    ("optim.weight_decay=nan", "optim.weight_decay=nan is invalid"),  # torch's AdamW raised
    ("seed=100000000000000 train.batch_size=8", "seed=100000000000000 is invalid"),
    ("+model.dmodel=256", "error: unknown config key model.dmodel (added with "
                          "+model.dmodel=...; did you mean model.d_model?): remove it"),
    ("+nonsense=1", "error: unknown config key nonsense"),
])
def test_bad_input_fails_cleanly_before_training(tmp_path, override, needle):
    run_dir = tmp_path / "run"
    result = run_cli(f"hydra.run.dir={run_dir}", "task.p=7", "steps=5", "logger=none",
                     *override.split(), cwd=tmp_path)
    assert result.returncode != 0
    assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()  # nothing half-written


@pytest.mark.parametrize("args", [("task.p=2",), ("experiment=v1_baseline", "optim.lr=-1")])
def test_a_refused_first_run_leaves_no_outputs_folder(tmp_path, args):
    """Hydra creates outputs/runs/<date>/ (outputs/v1_baseline/ for a preset) with the run folder;
    only the run folder was removed, so a first mistake left the empty dated folder behind."""
    (tmp_path / "mine").mkdir()  # a folder that was there before is kept, even when empty
    result = run_cli(*args, "logger=none", cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("error: ")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["mine"]


@pytest.mark.parametrize("module,args", [
    ("grok.main", ("hydra.run.dir={file}",)),
    ("grok.main", ("hydra.run.dir={file}/run",)),
    ("grok.main", ("-m", "seed=0,1", "hydra.sweep.dir={file}/sweep")),
    ("grok.compare", ("runs=[x]", "hydra.run.dir={file}")),
])
def test_an_output_folder_under_a_file_is_one_line(tmp_path, module, args):
    """Hydra's mkdir raised FileExistsError / NotADirectoryError with a traceback."""
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    result = run_cli(*(a.format(file=file) for a in args), "logger=none", cwd=tmp_path,
                     module=module)
    assert result.returncode == 1
    key = "hydra.sweep.dir" if "-m" in args else "hydra.run.dir"
    assert result.stderr.strip().splitlines() == [
        f"error: {key}={args[-1].split('=', 1)[1].format(file=file)} cannot be made: {file} is a "
        f"file; choose another {key}"]
    assert file.read_text() == "mine" and sorted(tmp_path.iterdir()) == [file]


@pytest.mark.usefixtures("cli_logging")
@pytest.mark.parametrize("args,key", [
    (("hydra.run.dir={shared}/run",), "hydra.run.dir"),
    (("hydra.run.dir={shared}",), "hydra.run.dir"),  # a colleague's run, say
    (("-m", "seed=0,1", "hydra.sweep.dir={shared}/sweep"), "hydra.sweep.dir"),
])
def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, capsys,
                                                             args, key):
    """Hydra's mkdir (or its record) raised PermissionError with a traceback. Root ignores
    permissions, so a folder it cannot write into is simulated."""
    shared = tmp_path / "shared"
    shared.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
        Path(path) != shared and access(path, mode, **kw)))
    args = [a.format(shared=shared) for a in args]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["grok.main", *args, "task.p=7", "steps=5", "logger=none"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: {args[-1]}: cannot write into {shared} (read-only or no permission); choose "
        f"another {key}"]
    assert sorted(tmp_path.rglob("*")) == [shared]


def a_project_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder of someone's own files, and its files' contents by relative path."""
    folder = tmp_path / "project"
    (folder / "src").mkdir(parents=True)
    (folder / "readme.txt").write_text("mine")
    (folder / "src" / "model.py").write_text("# mine")
    return folder, files_in(folder)


def files_in(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()}


def test_training_into_a_folder_that_holds_files_but_no_run_is_refused(tmp_path):
    """It trained there without a word, scattering split.pt, checkpoints/, plots/, wandb/ and
    Hydra's record among the folder's own files."""
    folder, before = a_project_folder(tmp_path)
    result = run_cli(f"hydra.run.dir={folder}", "task.p=7", "steps=5", "logger=none",
                     cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {folder} holds files but no grok run (readme.txt, src): choose a new or empty "
        "folder for hydra.run.dir"]
    assert files_in(folder) == before and sorted(p.name for p in folder.iterdir()) == [
        "readme.txt", "src"]  # not even Hydra's record or log


def test_a_sweep_job_whose_folder_holds_files_but_no_run_refuses_the_sweep(tmp_path):
    folder, before = a_project_folder(tmp_path)
    result = run_cli("-m", "seed=0,1", "task.p=7", "steps=5", "logger=none", "analysis=none",
                     f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=${hydra.job.num}",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # job folders 0 and 1 are new: they train
    result = run_cli("-m", "seed=0,1", "task.p=7", "steps=5", "logger=none", "analysis=none",
                     f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=project", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: job #{num} (seed={num} task.p=7 steps=5 logger=none analysis=none): {folder} "
        "holds files but no grok run (readme.txt, src): choose a new or empty folder for "
        "hydra.sweep.dir" for num in (0, 1)]
    assert files_in(folder) == before


def test_a_folder_with_only_what_a_refused_command_left_trains_as_a_new_run(tmp_path):
    """Hydra's record and log, the lock, a temporary file and empty folders are no one's files:
    the folder a stopped or refused first command left trains (an empty folder too)."""
    folder = tmp_path / "run"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (folder / "main.log").write_text("")
    (folder / ".lock").write_text("")
    (folder / ".split.pt.x1y2.tmp").write_bytes(b"")
    (folder / "seed_0" / "checkpoints").mkdir(parents=True)
    check_output_folder(folder, "hydra.run.dir")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(NotARunDir, match=r"\(notes.txt\): choose"):
        check_output_folder(folder, "hydra.run.dir")
    for name in ("a.txt", "b.txt", "c.txt"):
        (folder / "seed_0" / "checkpoints" / name).write_text("mine")
        (folder / name).write_text("mine")
    with pytest.raises(NotARunDir, match=r"\(a.txt, b.txt, c.txt and 2 more\): choose"):
        check_output_folder(folder, "hydra.run.dir")
    (folder / "split.pt").write_bytes(b"")  # a run: it is resumed or refused on its own terms
    check_output_folder(folder, "hydra.run.dir")


MISTYPED_KEYS = [
    ("grok.main", (), "train.evel_every", "train.eval_every"),
    ("grok.analyze", ("run_dir=x",), "t_grk", "t_grok"),
    ("grok.compare", ("runs=[x]",), "lables", "labels"),
]


@pytest.mark.parametrize("module,schema_args,key,meant", MISTYPED_KEYS)
def test_an_added_key_that_the_schema_lacks_is_refused(tmp_path, module, schema_args, key, meant):
    """`+key=...` lifts Hydra's struct check; each entry point checks the keys itself."""
    result = run_cli(*schema_args, f"+{key}=1", "logger=none", cwd=tmp_path, module=module)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: unknown config key {key} (added with +{key}=...; did you mean {meant}?): "
        f"remove it; `python -m {module} --cfg job` lists every key"]
    assert list(tmp_path.rglob("*.yaml")) == []  # no output folder with a Hydra record


@pytest.mark.parametrize("module,schema_args,key,meant", MISTYPED_KEYS)
def test_a_mistyped_key_is_refused_in_one_line_naming_the_key_it_meant(tmp_path, module,
                                                                      schema_args, key, meant):
    """Hydra's error took five lines and advised `+key=...`, which the line above refuses."""
    result = run_cli(*schema_args, f"{key}=1", "logger=none", cwd=tmp_path, module=module)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: unknown config key {key}: did you mean {meant}? (`python -m {module} --cfg job` "
        "lists every key)"]
    assert list(tmp_path.rglob("*")) == []


def test_every_schema_key_and_every_override_that_is_hydras_passes_the_key_check():
    from grok.analyze import AnalyzeConfig
    from grok.compare import CompareConfig

    for schema in (Config, AnalyzeConfig, CompareConfig):
        keys = config_module._schema_keys(schema)
        assert "logger.project" in keys
        config_module.check_override_keys([f"{k}=1" for k in keys], schema, "m")
    config_module.check_override_keys(
        ["-m", "--cfg", "job", "--multirun", "hydra.run.dir=x", "hydra/launcher=joblib",
         "experiment=v1_baseline", "+anything=1", "++other=2", "~gone", "seeds=[0,1]",
         "optim.betas=[0.9,0.99]", "optim.betas.0=0.8", "logger.tags=[a=b]", "model@x=y"],
        Config, "grok.main", groups=("experiment",))
    with pytest.raises(ConfigError, match=r"^unknown config key experiment \("):
        config_module.check_override_keys(["experiment=v1_baseline"], Config, "grok.main")


@pytest.mark.parametrize("key,meant", [
    ("d_model", "model.d_model"),  # a key without its section
    ("stesp", "steps"), ("model.dmodel", "model.d_model"),
    ("optim.weight_decy", "optim.weight_decay"),
    ("modle", "model"), ("modl.d_modle", "model.d_model"), ("xyzzy", None), ("model.xyzzy", None),
])
def test_the_key_a_mistyped_key_meant(key, meant):
    assert config_module._closest_key(key, Config) == meant


@pytest.mark.parametrize("module,usage,groups", [
    ("grok.main", "python -m grok.main [group=option ...]", {"task", "model", "experiment"}),
    ("grok.analyze", "python -m grok.analyze run_dir=PATH", {"analysis", "logger"}),
    ("grok.compare", "python -m grok.compare runs=[DIR1,DIR2,...]", {"logger"}),
])
def test_help_says_what_the_command_does_and_lists_only_its_groups(tmp_path, module, usage,
                                                                   groups):
    result = run_cli("--help", cwd=tmp_path, module=module)
    assert result.returncode == 0 and result.stdout.startswith(usage)
    head = result.stdout.split("\n== Config ==")[0].split("\n== Config (")[0]  # groups only
    listed = {line.split(":")[0] for line in head.splitlines()
              if line.split(":")[0] in {"task", "model", "experiment", "analysis", "logger",
                                        "split", "optim", "train"}}
    assert listed >= groups and (module == "grok.main" or listed == groups)
