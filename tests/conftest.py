"""Shared fixtures: composed configs, a throw-away MLflow store, the harness as a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core.conf import compose
from harness.pipeline.config import load_config

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# Seconds-long timing for end-to-end runs: tiny tables, two sizes.
# (experiment=smoke records into experiment 'smoke'; the tests read theirs back from 'mprec')
SMOKE = ["+backend=cpu", "experiment=smoke", "experiment_name=mprec"]


def write_criteo_csv(path: Path, rows: int, seed: int = 0) -> Path:
    """A Criteo-Kaggle-format CSV (header; label, I1..I13, C1..C26; empty fields as in the real data), so
    tests of the reader and of runs on files need nothing beside the repository."""
    import random

    rng = random.Random(seed)
    header = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
    lines = [",".join(header)]
    for _ in range(rows):
        ints = ["" if rng.random() < 0.3 else str(rng.randint(-1, 5000)) for _ in range(13)]
        cats = ["" if rng.random() < 0.1 else f"{rng.getrandbits(32):08x}" for _ in range(26)]
        lines.append(",".join([str(int(rng.random() < 0.25)), *ints, *cats]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def run_config():
    """load_config(compose(overrides)): the validated config a job would see."""
    return lambda *overrides: load_config(compose(list(overrides)))


@pytest.fixture(scope="session")
def store_template(tmp_path_factory):
    """An empty SQLite MLflow store with its schema created once: migrating a new store takes ~4 s."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store") / "template.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path, store_template):
    """A fresh SQLite MLflow store (a copy of the empty template); its URI."""
    shutil.copy(store_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def harness_env(store_uri: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    if store_uri:
        env["MLFLOW_TRACKING_URI"] = store_uri
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


@pytest.fixture
def run_harness(tmp_path):
    """Run `python -m harness <args>` in tmp_path (so Hydra's job folders land there)."""

    def run(*args: str, store_uri: str | None = None, check: bool = True, timeout: float = 300):
        proc = subprocess.run(
            [sys.executable, "-m", "harness", *args, f"tracking.results_dir={tmp_path / 'results'}"],
            cwd=tmp_path, env=harness_env(store_uri), capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"harness exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    return run
