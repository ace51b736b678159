"""The launcher of `hydra/launcher=joblib`: the plugin's, stoppable by SIGTERM and Ctrl-C
(grok.launcher). It is here because Hydra instantiates launchers only from the hydra_plugins
package."""

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as _PluginLauncher


class JoblibLauncher(_PluginLauncher):
    """The plugin's launcher with the same options; launch() is grok.launcher.launch."""

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        from grok import launcher

        return launcher.launch(self, job_overrides, initial_job_idx)
