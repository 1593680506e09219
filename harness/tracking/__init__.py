"""Tracking: the only layer that imports mlflow (docs/architecture.md).

- `Store` (store.py): one experiment of one MLflow store; every search, run creation, failure and
  study record (analysis, serving) goes through it, with quoted search filters and SQLite lock retries.
- `RunRecorder` (recorder.py): one run being recorded, always ended FINISHED or FAILED, with a heartbeat.
- `environment`: what a run records about where it ran (CPU, libraries, git), and process identities.
"""

from harness.tracking.recorder import RunRecorder
from harness.tracking.store import (
                                    KIND_TAG,
                                    OWNER_TAG,
                                    SWEEP_TAG,
                                    Store,
                                    is_stale,
                                    studies_experiment,
                                    tracking_uri,
)

__all__ = ["KIND_TAG", "OWNER_TAG", "SWEEP_TAG", "RunRecorder", "Store", "is_stale", "studies_experiment",
           "tracking_uri"]
