"""The harness's Hydra launchers, where Hydra looks for plugins (it instantiates a launcher only from the
`hydra_plugins` namespace). What they do is in harness/app/launchers.py; conf/hydra/launcher/ selects them:
`hydra/launcher=slurm`, `hydra/launcher=ray`.

The Slurm recipe's schema is hydra-submitit-launcher's with the wait's own keys (`poll_s`,
`state_timeout_s`), registered as `hydra/launcher/mprec_slurm_schema` when the cluster extra is installed;
their values live in conf/hydra/launcher/slurm.yaml."""

from dataclasses import dataclass

from omegaconf import MISSING

from harness.app import launchers


class SlurmLauncher(launchers.SlurmLauncher):
    __doc__ = launchers.SlurmLauncher.__doc__


class RayLauncher(launchers.RayLauncher):
    __doc__ = launchers.RayLauncher.__doc__


try:
    from hydra.core.config_store import ConfigStore
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
except ImportError:  # no cluster extra: hydra/launcher=slurm says what to install (harness/app/launchers.py)
    pass
else:

    @dataclass
    class MprecSlurmConf(SlurmQueueConf):
        poll_s: float = MISSING  # seconds between two looks at the jobs' states
        state_timeout_s: float = MISSING  # a job whose state Slurm cannot say for this long is lost

    ConfigStore.instance().store(group="hydra/launcher", name="mprec_slurm_schema", node=MprecSlurmConf,
                                 provider="mprec_harness")
