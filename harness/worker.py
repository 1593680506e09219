"""The child process of an isolated job: `python -m harness.worker <job.json>`.

The job process (harness/jobs.py) creates the MLflow run, writes the validated config and the run id to
`job.json`, and waits. The worker measures the path into that run. If the worker dies (SIGKILL from the
OOM killer, a timeout), the job process sees it and ends the run FAILED; the sweep goes on.
"""

from __future__ import annotations

import json
import logging
import sys


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    job = json.loads(open(argv[0]).read())
    from harness.task import measure_path, plan

    measure_path(plan(job["config"]), run_id=job["run_id"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
