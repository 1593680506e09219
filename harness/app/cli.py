"""`python -m harness`: one Hydra app; `-m` sweeps; `+backend=<name>` picks a backend.

Examples:
    python -m harness                                   # table path on the best available backend
    python -m harness +backend=cpu dataset.scale=0.001
    python -m harness -m dataset.scale=0.001,0.01       # one MLflow run per job, one experiment
    python -m harness dry_run=true dataset.scale=1.0    # the plan as JSON; allocates nothing
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from harness.app.console import INTERRUPTED_EXIT, print_interrupted
from harness.app.jobs import STATUS_FILE, Interrupted, RunFailed, run_job
from harness.core.conf import config_dir
from harness.core.errors import BackendUnavailable, ConfigError, DataError
from harness.core.overrides import refuse_unknown_keys
from harness.tracking import TrackingUnavailable

log = logging.getLogger("harness")


def run() -> None:
    """`python -m harness` and the `mprec` script: a typo in an override's key is answered with the closest
    key before Hydra composes (its advice to append with '+' would mislead), then the Hydra app runs."""
    try:
        refuse_unknown_keys(sys.argv[1:], "config")  # composes the config: Ctrl-C may land here too
        main()
    except Interrupted as exc:  # a single job: it has ended its run KILLED, if it had created one
        print_interrupted(exc.run_id, known=True)
        sys.exit(INTERRUPTED_EXIT)
    except KeyboardInterrupt:  # a sweep: its jobs have ended their runs KILLED, the sweep its own run
        # A single run interrupted before its job began (while Python imported) has created nothing.
        single = not {"-m", "--multirun"} & set(sys.argv[1:])
        print_interrupted(None, known=single)
        sys.exit(INTERRUPTED_EXIT)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig):
    try:
        return run_job(cfg)
    except (ConfigError, BackendUnavailable, DataError) as exc:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the launcher records the failed job; the message is in its log
        # A single run: the message is the whole story, a traceback would only hide it; and a refused
        # command leaves nothing behind (its Hydra folder held only the config Hydra copied into it).
        discard_run_folder()
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except RunFailed as exc:  # the worker printed the details (a traceback where it was a bug)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except TrackingUnavailable as exc:  # the store stayed away past tracking.retry_s: the message says it all
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


# What Hydra and the job write into a single run's folder before any measurement: a refused run's folder
# holding only these is its own, and goes.
_BEFORE_WORK = {".hydra", "harness.log", STATUS_FILE}


def discard_run_folder() -> None:
    """Remove this single run's Hydra folder if it holds nothing but what was written before any work and
    names no recorded run. A folder the user chose (`hydra.run.dir=...`) is theirs: it stays."""
    hc = HydraConfig.get()
    if any(o.split("=", 1)[0].lstrip("+~") == "hydra.run.dir" for o in hc.overrides.hydra):
        return
    folder = Path(hc.runtime.output_dir)
    if not folder.is_dir() or {entry.name for entry in folder.iterdir()} - _BEFORE_WORK:
        return
    if _names_a_run(folder / STATUS_FILE):
        return
    shutil.rmtree(folder, ignore_errors=True)
    for parent in (folder.parent, folder.parent.parent):  # results/runs and results, if left empty
        with contextlib.suppress(OSError):
            parent.rmdir()


def _names_a_run(status_file: Path) -> bool:
    """Whether the job's status file names an MLflow run (its folder is then the run's record)."""
    try:
        return bool(json.loads(status_file.read_text()).get("run_id"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError, AttributeError):
        return True  # unreadable: keep the folder rather than guess
