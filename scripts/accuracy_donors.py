"""Write the accuracy of each (representation, precision) measured in an experiment, with its run, as the
donors file the GPU check gives its latency-only profiles (scripts/gpu_check.sh, GPU_CHECK_ACCURACY).

    python scripts/accuracy_donors.py mprec_headline harness/serving/data/headline_accuracy.json
    python scripts/accuracy_donors.py <experiment> <out.json> "synthetic_kaggle x0.01"  # one of several

The store is $MLFLOW_TRACKING_URI, else sqlite:///results/mlflow.db (as the harness's). The harness trains
on the host whatever the backend, so these are the accuracies of the same weights on any device.
"""

from __future__ import annotations

import json
import sys
import time

from harness.analysis.runs import join_quality, tidy
from harness.core.conf import compose
from harness.core.host import cpu_model_name, physical_cores
from harness.pipeline.config import load_config
from harness.serving import profiles as prof
from harness.tracking import Store


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    experiment, out = argv[:2]
    workload = argv[2] if len(argv) == 3 else None  # an experiment of several workloads: which one
    store = Store(load_config(compose([])).tracking, experiment, create=False)
    runs = store.load_runs("latency")
    if not runs:
        print(f"error: experiment '{experiment}' has no latency runs in {store.uri}", file=sys.stderr)
        return 2
    try:
        measured = prof.from_runs(join_quality(tidy(runs)), workload)
    except ValueError as exc:  # several workloads: a donor's accuracy is one workload's
        print(f"error: {exc} (the third argument)", file=sys.stderr)
        return 2
    donors = prof.accuracy_donors(measured, {
        "source": f"experiment {experiment} on {cpu_model_name()} ({physical_cores()} cores), "
                  f"{time.strftime('%Y-%m-%d')}",
        "experiment": experiment, "command": f"python -m harness experiment={experiment}",
    })
    if not donors["accuracy"]:
        print(f"error: no run of '{experiment}' measured quality (train.steps > 0)", file=sys.stderr)
        return 2
    with open(out, "w") as f:
        json.dump(donors, f, indent=2)
    for key, d in sorted(donors["accuracy"].items()):
        print(f"{key:20s} {d['accuracy']:.4f}  run {d['run_id']} ({d['path']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
