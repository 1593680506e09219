"""Tracking: the only layer that imports mlflow (docs/architecture.md).

- `Store` (store.py): one experiment of one MLflow store; every search, run creation, failure and
  study record (analysis, serving) goes through it, with quoted search filters.
- `retry`: every MLflow call retried, for at most `tracking.retry_s`, while the store is locked (SQLite)
  or unreachable (a tracking server restarting), then `TrackingUnavailable`; the calls' times on request.
- `credentials`: a tracking URI's user and password kept out of everything printed or recorded.
- `RunRecorder` (recorder.py): one run being recorded, always ended FINISHED or FAILED, with a heartbeat.
- `environment`: what a run records about where it ran (CPU, libraries, git), and process identities.
"""

from harness.tracking.recorder import RunRecorder
from harness.tracking.retry import TrackingUnavailable
from harness.tracking.store import (
                                    KIND_TAG,
                                    OWNER_TAG,
                                    SWEEP_TAG,
                                    Store,
                                    is_stale,
                                    studies_experiment,
                                    tracking_uri,
)

__all__ = ["KIND_TAG", "OWNER_TAG", "SWEEP_TAG", "RunRecorder", "Store", "TrackingUnavailable", "is_stale",
           "studies_experiment", "tracking_uri"]
