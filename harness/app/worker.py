"""The child process of an isolated job: `python -m harness.app.worker <job.json>`.

The job process (harness/app/jobs.py) creates the MLflow run, writes the validated config and the run
id to `job.json`, and waits. The worker measures the path into that run. If the worker dies (SIGKILL from
the OOM killer, a timeout), the job process sees it and ends the run FAILED; the sweep goes on.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path

from harness.app.console import INTERRUPTED_EXIT, ladder_progress, print_path_summary
from harness.core.errors import BackendUnavailable, ConfigError, DataError
from harness.core.processes import PARENT_ENV, exit_with_parent
from harness.pipeline.plan import plan
from harness.pipeline.run import measure_path


def main(argv: list[str]) -> int:
    if os.environ.get(PARENT_ENV, "").isdigit():  # die with the job process (harness/app/jobs.py)
        exit_with_parent(int(os.environ[PARENT_ENV]))
    # stderr goes to the job process (which relays it), and the job folder's harness.log has it too
    job_file = Path(argv[0])
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s",
                        handlers=[logging.StreamHandler(sys.stderr),
                                  logging.FileHandler(job_file.parent / "harness.log")])
    job = json.loads(job_file.read_text())
    p = plan(job["config"])
    try:
        progress = functools.partial(ladder_progress, job=job.get("position", ""))
        print_path_summary(p, measure_path(p, job["run_id"], progress=progress))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the recorder has ended the run KILLED
        return INTERRUPTED_EXIT
    except (BackendUnavailable, ConfigError, DataError) as exc:  # recorded FAILED; the message says it all
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
