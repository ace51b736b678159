import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    on_disk = {".".join(init.parent.relative_to(ROOT / "src").parts)
               for init in (ROOT / "src").rglob("__init__.py")}
    assert listed == on_disk | {"grok.conf"}
    assert "hydra_plugins.grok_sweeper" in listed


def test_hydra_plugins_stays_a_namespace_package():
    """An __init__.py in src/hydra_plugins would hide the installed launcher plugins (joblib,
    submitit), which live in the same namespace."""
    assert not (ROOT / "src" / "hydra_plugins" / "__init__.py").exists()


def test_torch_is_capped_below_2_14():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(d for d in deps if d.startswith("torch"))
    assert "<2.14" in torch_req


def test_only_entry_points_and_plugins_read_hydra_state():
    """Components get what they need from Hydra as arguments (STYLE.md: they never call
    HydraConfig.get()), so they can be used and tested without a Hydra job around them."""
    entry_points = {"main.py", "analyze.py", "compare.py", "config.py", "launcher.py"}
    readers = {path.relative_to(ROOT / "src").as_posix()
               for path in (ROOT / "src" / "grok").rglob("*.py")
               if path.name not in entry_points and "HydraConfig" in path.read_text()}
    assert readers == set()
