"""Nothing the project starts is left running (harness/core/processes.py): what a killed owner left is found
by its mark and stopped, by identity, and nothing unrelated is touched; a pytest session that leaves a
process fails and names it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from harness.core import processes

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
