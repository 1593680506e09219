"""`python -m harness`: one Hydra app; `-m` sweeps; `+backend=<name>` picks a backend.

Examples:
    python -m harness                                   # table path on the best available backend
    python -m harness +backend=cpu dataset.scale=0.001
    python -m harness -m dataset.scale=0.001,0.01       # one MLflow run per job, one experiment
    python -m harness dry_run=true dataset.scale=1.0    # the plan as JSON; allocates nothing
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from harness.app.console import INTERRUPTED_EXIT, print_interrupted
from harness.app.jobs import RunFailed, run_job
from harness.core.conf import config_dir
from harness.core.errors import BackendUnavailable, ConfigError, DataError
from harness.core.overrides import refuse_unknown_keys
from harness.tracking import TrackingUnavailable

log = logging.getLogger("harness")


def run() -> None:
    """`python -m harness` and the `mprec` script: a typo in an override's key is answered with the closest
    key before Hydra composes (its advice to append with '+' would mislead), then the Hydra app runs."""
    refuse_unknown_keys(sys.argv[1:], "config")
    try:
        main()
    except KeyboardInterrupt:  # the job has ended its run KILLED (and a sweep its parent run)
        print_interrupted()
        sys.exit(INTERRUPTED_EXIT)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig):
    try:
        return run_job(cfg)
    except (ConfigError, BackendUnavailable, DataError) as exc:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the launcher records the failed job; the message is in its log
        # A single run: the message is the whole story, a traceback would only hide it.
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except RunFailed as exc:  # the worker printed the details (a traceback where it was a bug)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except TrackingUnavailable as exc:  # the store stayed away past tracking.retry_s: the message says it all
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
