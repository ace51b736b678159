"""grok's joblib launcher (joblib_launcher.py): the plugin's, stoppable by SIGTERM and Ctrl-C."""

from hydra.core.plugins import Plugins


def register() -> None:
    """Make the launcher conf/hydra/launcher/joblib.yaml names available (grok.main calls this).
    By hand and after Hydra's plugin scan, for the reasons given in hydra_plugins.grok_sweeper:
    the scan misses this package in an editable install and runs the plugin modules again."""
    plugins = Plugins.instance()  # the scan
    from hydra_plugins.grok_joblib_launcher.joblib_launcher import JoblibLauncher

    name = f"{JoblibLauncher.__module__}.{JoblibLauncher.__name__}"
    if name not in plugins.class_name_to_class:
        plugins.register(JoblibLauncher)
