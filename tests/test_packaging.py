"""A plain (non-editable) install resolves the same config tree: conf/ ships inside the wheel."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from .conftest import REPO, harness_env

pytest.importorskip("hatchling", reason="building the wheel needs hatchling (pip install -e '.[test]')")


def test_wheel_ships_conf_and_runs_outside_the_checkout(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
         str(tmp_path / "dist"), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    [wheel] = (tmp_path / "dist").glob("mprec_harness-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "harness/conf/config.yaml" in names
    assert "harness/conf/representation/table.yaml" in names

    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    env = harness_env()
    env["PYTHONPATH"] = str(target)
    proc = subprocess.run(
        [sys.executable, "-c", "from harness.core.conf import config_dir; print(config_dir())"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.stdout.strip() == str(target / "harness" / "conf")
    proc = subprocess.run([sys.executable, "-m", "harness", "dry_run=true", "+backend=cpu",
                           "hydra.run.dir=."], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["path"] == "table@cpu"
