"""Nothing the project starts is left running (harness/core/processes.py): what a killed owner left is found
by its mark and stopped, by identity, and nothing unrelated is touched; a pytest session that leaves a
process fails and names it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from harness.core import processes

# Each of these plants or reaps processes whose owner is gone, which any reap on this machine may stop: one
# worker runs them all, one after another (pyproject's --dist loadgroup), tests/test_doctor.py's too.
pytestmark = pytest.mark.xdist_group("leftovers")

REPO = Path(__file__).resolve().parent.parent

# An owner as a killed test would be: it marks itself, starts a detached "daemon" (its own session, as a
# daemon's double fork leaves it, re-parented away from the owner) and a recorded daemon set, then waits.
OWNER = textwrap.dedent("""
    import os, subprocess, sys, time
    from harness.core import processes
    os.environ[processes.OWNER_ENV] = processes.identity()
    loose = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    token = processes.record("sleeper cluster", sys.argv[1], ["true"])
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True,
                              env={**os.environ, processes.DAEMONS_ENV: token})
    print(loose.pid, daemon.pid, flush=True)
    time.sleep(600)
""")


def _wait_gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":  # a zombie: dead, waiting for a parent that is gone too
            return True
        time.sleep(0.1)
    return False


def test_what_a_killed_owner_left_is_reaped_and_a_decoy_named_ray_survives(tmp_path, monkeypatch):
    monkeypatch.setenv(processes.STATE_ENV, str(tmp_path / "state"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             env=env)
    # Unrelated, unmarked, with "ray" in its command line (what a name match would have killed)
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "ray", "raylet"],
                             env={k: v for k, v in env.items() if k != processes.OWNER_ENV})
    try:
        assert owner.stdout is not None
        loose, daemon = map(int, owner.stdout.readline().split())
        (record,) = (tmp_path / "state" / "daemons").glob("*.json")
        assert json.loads(record.read_text())["folder"] == str(tmp_path)
        assert processes.leftovers() == []  # the owner lives: nothing is a leftover yet
        owner.kill()  # SIGKILL: no cleanup of its own
        owner.wait(timeout=10)
        out = subprocess.run([sys.executable, "-m", "harness.leftovers", "list"], capture_output=True,
                             text=True, env={**env, processes.STATE_ENV: str(tmp_path / "state")}, timeout=60)
        assert "leftover: sleeper cluster in" in out.stdout and str(daemon) in out.stdout, out.stdout
        assert str(loose) in out.stdout and "is gone" in out.stdout
        reaped = subprocess.run([sys.executable, "-m", "harness.leftovers", "reap"], capture_output=True,
                                text=True, env={**env, processes.STATE_ENV: str(tmp_path / "state")},
                                timeout=120)
        assert reaped.returncode == 0, reaped.stderr
        assert _wait_gone(loose) and _wait_gone(daemon)
        assert decoy.poll() is None  # untouched
        assert processes.leftovers() == [] and not list((tmp_path / "state" / "daemons").glob("*.json"))
    finally:
        for proc in (owner, decoy):
            proc.kill()
            proc.wait(timeout=10)


def test_a_process_is_never_signalled_once_its_pid_belongs_to_another():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        ticks = processes.start_ticks(sleeper.pid)
        assert ticks is not None
        impostor = processes.Process(sleeper.pid, str(int(ticks) - 1), "recorded earlier")  # a reused PID
        assert processes.stop([impostor], grace_s=0.1) == [] and sleeper.poll() is None
        assert processes.stop([processes.Process(sleeper.pid, ticks, "")], grace_s=5) != []
        assert sleeper.wait(timeout=10) != 0
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)


def test_a_pytest_session_that_leaves_a_process_fails_and_names_it(tmp_path):
    test = tmp_path / "test_leaky.py"
    test.write_text(textwrap.dedent("""
        import subprocess, sys
        def test_starts_a_daemon_and_forgets_it():
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "forgotten-daemon"],
                             start_new_session=True)
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO), processes.STATE_ENV: str(tmp_path / "state")}
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.leftovers_plugin", "-o", "addopts=",
                          "-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path), str(test)],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "1 passed" in out.stdout  # the test itself passed: the session fails for what it left
    assert "the tests left processes running (stopped now)" in out.stderr and "forgotten-daemon" in out.stderr
    left = [p for p, _ in processes.marked("PYTHONPATH", str(REPO)) if "forgotten-daemon" in p.command]
    assert left == []


# A test process that started a real team server and real Slurm and Ray clusters, as a test does
OWNER_OF_DAEMONS = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from harness.core import processes
    os.environ[processes.OWNER_ENV] = processes.identity()
    from benchmarks.clusters import LocalCluster
    from benchmarks.team_server import TeamServer
    folder = Path(sys.argv[1])
    TeamServer(folder / "server").start()
    for kind in sys.argv[2:]:
        LocalCluster(kind, folder / kind, cpus=1).start()
    print("up", flush=True)
    time.sleep(600)
""")


def _daemons_missing() -> str | None:
    import importlib.util

    from benchmarks.team_server import pg_bin

    if os.geteuid() != 0 or not Path("/usr/sbin/slurmctld").exists() or pg_bin() is None:
        return "needs root, Slurm and PostgreSQL (.ci/run installs them)"
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("psycopg2") is None:
        return "needs the cluster and team extras"
    return None


@pytest.mark.skipif(_daemons_missing() is not None, reason=_daemons_missing() or "")
def test_a_sigkilled_test_leaves_a_server_and_clusters_that_reap_stops_and_nothing_else():
    folder = Path(tempfile.mkdtemp(prefix="mprec-leftover-test-", dir="/tmp"))
    folder.chmod(0o711)  # PostgreSQL runs as `postgres`, which must enter it
    env = {**os.environ, "PYTHONPATH": str(REPO), processes.STATE_ENV: str(folder / "state")}
    owner = subprocess.Popen([sys.executable, "-c", OWNER_OF_DAEMONS, str(folder), "slurm", "ray"],
                             stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "ray", "slurmd"])
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "up"
        tokens = [(folder / name / "daemons.token").read_text().strip()
                  for name in ("server", "slurm", "ray")]
        daemons = [p for token in tokens for p, _ in processes.marked(processes.DAEMONS_ENV, token)]
        names = " ".join(p.command for p in daemons)
        assert all(n in names for n in ("postgres", "mlflow", "munged", "slurmctld", "slurmd", "ray")), names
        owner.kill()  # SIGKILL: its finally blocks never run, its folders stay
        owner.wait(timeout=10)
        reaped = subprocess.run([sys.executable, "-m", "harness.leftovers", "reap"], capture_output=True,
                                text=True, env=env, timeout=300)
        assert reaped.returncode == 0, reaped.stdout + reaped.stderr
        assert [p for p in daemons if p.alive() and _wait_gone(p.pid, 20) is False] == []
        assert all(processes.marked(processes.DAEMONS_ENV, token) == [] for token in tokens)
        assert decoy.poll() is None  # its command line says "ray" and "slurmd": untouched
    finally:
        for proc in (owner, decoy):
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
