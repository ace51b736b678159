"""grok's Hydra sweeper (grok_sweeper.py): checks every job of a sweep before the first starts."""

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins


def register() -> None:
    """Make hydra/sweeper=grok available (grok.config.register_configs calls this).

    Hydra finds plugins by listing the hydra_plugins namespace package, which misses this one in
    an editable install (setuptools' import hook cannot be listed), so the class is registered by
    hand. Only after Hydra's scan: the scan runs every plugin module again, basic_sweeper.py
    included, and BasicSweeper's `super(BasicSweeper, self)` then names the new class, which a
    subclass of the class defined before the scan does not derive from."""
    plugins = Plugins.instance()  # the scan
    from hydra_plugins.grok_sweeper.grok_sweeper import GrokSweeper, GrokSweeperConf

    ConfigStore.instance().store(group="hydra/sweeper", name="grok", node=GrokSweeperConf,
                                 provider="grok")
    name = f"{GrokSweeper.__module__}.{GrokSweeper.__name__}"
    if name not in plugins.class_name_to_class:
        plugins.register(GrokSweeper)
