"""The harness's Hydra launchers, where Hydra looks for plugins (it instantiates a launcher only from the
`hydra_plugins` namespace). What they do is in harness/app/launchers.py; conf/hydra/launcher/ selects them:
`hydra/launcher=slurm`, `hydra/launcher=ray`."""

from harness.app import launchers


class SlurmLauncher(launchers.SlurmLauncher):
    __doc__ = launchers.SlurmLauncher.__doc__


class RayLauncher(launchers.RayLauncher):
    __doc__ = launchers.RayLauncher.__doc__
