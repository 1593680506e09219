"""What a measurement ran on: CPU, memory, library versions, source revision.

Only an allow-list is captured: no hostname, no user name, and of the environment variables only those
that change performance (thread counts, visible devices). Secrets in the environment never reach a run.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import harness
from harness.core import processes
from harness.core.host import cpu_model_name, host_memory_bytes, numeric_flags, physical_cores

# Distributions whose versions are recorded when installed.
LIBRARIES = (
    "torch", "numpy", "pandas", "hydra-core", "omegaconf", "mlflow", "mlflow-skinny", "rich",
    "tensorflow", "tensorflow-cpu", "torch-xla", "poptorch", "mlcommons-loadgen", "torchrec", "fbgemm-gpu",
    "fbgemm-gpu-cpu",
)
# Environment variables that change performance; nothing else from the environment is read.
ENV_ALLOWLIST = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "KMP_AFFINITY", "KMP_BLOCKTIME",
    "CUDA_VISIBLE_DEVICES", "PJRT_DEVICE", "TPU_NUM_DEVICES", "TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS",
    "POPLAR_SDK_ENABLED", "IPUOF_VIPU_API_PARTITION_ID",
)


def library_versions() -> dict[str, str]:
    versions = {}
    for dist in LIBRARIES:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


@lru_cache(maxsize=1)
def git_revision() -> tuple[str, bool]:
    """(commit SHA, dirty) of the harness source tree; ("unknown", False) outside a git checkout."""
    root = Path(harness.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return sha, bool(status.strip())


@lru_cache(maxsize=1)
def machine_fingerprint() -> str:
    """A stable anonymous id of this machine (a hash of /etc/machine-id, never the hostname)."""
    return processes.machine_id()


def process_identity(pid: int | None = None) -> str:
    """machine:pid:start: enough to tell later whether the process that owned a run is still alive."""
    pid = pid or os.getpid()
    return f"{machine_fingerprint()}:{pid}:{processes.start_ticks(pid) or '?'}"


def process_alive(identity: str) -> bool | None:
    """True/False if `identity` is a process of this machine (alive or not); None for another machine."""
    machine, pid, start = (identity.split(":") + ["", "", ""])[:3]
    if machine != machine_fingerprint() or not pid.isdigit():
        return None
    return processes.start_ticks(int(pid)) == start


def capture() -> dict:
    sha, dirty = git_revision()
    return {"harness_version": harness.__version__, "git_sha": sha, "git_dirty": dirty,
            "python": sys.version.split()[0], "platform": {"system": platform.system(),
                                                           "release": platform.release(),
                                                           "machine": platform.machine()},
            "cpu": {"model": cpu_model_name(), "logical_cores": os.cpu_count(),
                    "physical_cores": physical_cores(),
                    "affinity_cores": (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                       else None),
                    "numeric_flags": numeric_flags()}, "memory_bytes": host_memory_bytes(),
            "libraries": library_versions(),
            "env": {key: os.environ[key] for key in ENV_ALLOWLIST if key in os.environ}}
