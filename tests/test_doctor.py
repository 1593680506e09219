"""`python -m harness.doctor`: its findings from planted readings, and the command on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.app import doctor
from harness.core import processes
from harness.core.load import LoadReading
from harness.pipeline.peaks import CACHE_FILE, KERNELS_VERSION

from .conftest import harness_env


def reading(other=0.0, steal=0.0, load=0.2, cores=2) -> LoadReading:
    return LoadReading(2.0, cores, other, steal, load, load, None, 0.02)


def test_other_busy_processes_are_named_with_their_share_and_what_to_do():
    busy = [(4242, "stress", 0.98), (17, "python", 0.91)]
    finding = doctor.other_processes(busy, reading(other=1.9), threads=2, max_other=0.1)
    assert not finding.ok
    assert (
        "other processes used 1.90 of the run's 2 cores over 2 s: stress (pid 4242) 0.98, "
        "python (pid 17) 0.91" in finding.what
    )
    assert "taskset -c 0 python -m harness backend.num_threads=1" in finding.todo  # pin it apart
    assert doctor.other_processes([], reading(other=0.01), threads=2, max_other=0.1).ok
    # The stability judge's own rule: a one-thread run's idle core is not spare (one busy process beside
    # it is flagged); pinned to its own core, only that core is read.
    assert not doctor.other_processes(busy[:1], reading(other=0.98), threads=1, max_other=0.1).ok
    assert doctor.other_processes(busy[:1], reading(other=0.0, cores=1), threads=1, max_other=0.1).ok


def test_steal_and_load_and_what_cannot_be_measured():
    stolen, = [f for f in doctor.load_and_steal(reading(steal=0.4), 0.1) if "steal" in f.what]
    assert not stolen.ok and "dedicated" in stolen.todo
    unknown = doctor.load_and_steal(reading(other=None, steal=None, load=None), 0.1)
    assert all(f.ok and "not measurable here" in f.what for f in unknown)
    # The load average is context where the run's cores were sampled directly: a run pinned to quiet
    # cores of a busy host, or a minute after a burner ended, is fine; it judges only without that sample.
    pinned = doctor.load_and_steal(reading(other=0.0, load=5.0), 0.1)[0]
    assert pinned.ok and "context" in pinned.what
    assert not doctor.load_and_steal(reading(other=None, load=5.0), 0.1)[0].ok


def test_a_peak_cache_from_an_older_kernel_set_or_another_torch_is_reported(tmp_path):
    assert doctor.peak_cache(str(tmp_path)).ok  # none yet
    old = {"cpu|X|torch 2.1|threads=2|scale=1|kernels=3": {"gemm_gflops": 300.0}}
    (tmp_path / CACHE_FILE).write_text(json.dumps(old))
    finding = doctor.peak_cache(str(tmp_path))
    assert not finding.ok and "1 entries measured by an older kernel set (unused" in finding.what
    other = {f"cpu|X|torch 1.0|threads=2|scale=1|kernels={KERNELS_VERSION}":
             {"peaks": {"gemm_gflops": 300.0}, "libraries": {"torch": "1.0.0"}}}
    (tmp_path / CACHE_FILE).write_text(json.dumps(other))
    assert "another torch" in doctor.peak_cache(str(tmp_path)).what


def test_the_verdict_is_one_line():
    quiet = [doctor.Finding(True, "2 cores"), doctor.Finding(True, "other processes used 0.00 cores")]
    assert doctor.verdict(quiet).startswith("doctor: quiet (2 cores; other processes used 0.00 cores")
    busy = quiet + [doctor.Finding(False, "other processes used 1.90 cores", "close them")]
    # the remedy itself, not a pointer back to the doctor
    assert doctor.verdict(busy) == ("doctor: 1 finding before measuring: other processes used 1.90 cores "
                                    "-> close them")


def test_no_peak_cache_after_loaded_runs_says_why_and_how_to_get_one(tmp_path, monkeypatch):
    from harness.core.load import PlantedProbe
    from harness.core.schema import StabilityConfig
    from harness.pipeline import peaks as pk
    from harness.pipeline.stability import Judge

    rules = StabilityConfig(max_other_cores=0.1, max_steal_cores=0.1, max_robust_cv=0.25,
                            order_tolerance=0.05, peak_tolerance=0.05, retries=3, retry_pause_s=0.0,
                            retry_budget=0.5)

    class Kernels:
        name = "fake"

        def run_params(self):
            return {"num_threads": 2}

        def peak_kernels(self, scale, precisions=None):
            return {"copy": (lambda: None, 1e9, "bytes")}

        def synchronize(self, out):
            return None

    class Device:
        backend, name, framework, framework_version = "cpu", "fake cpu", "torch", "0"

    monkeypatch.setattr(pk, "LoadProbe", lambda: PlantedProbe(0.95))  # 0.95 cores: flagged, steal or not
    pk.device_peaks(Kernels(), Device(), tmp_path, 1.0, Judge(rules, host_threads=2).load_reasons)
    finding = doctor.peak_cache(str(tmp_path))
    assert not finding.ok and "not kept, measured under load (other processes used 0.95 cores" in finding.what
    assert "then run python -m harness once" in finding.todo


def test_the_command_examines_this_machine_and_refuses_an_unknown_key(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.doctor", "+backend=cpu", "backend.num_threads=1",
                           f"tracking.results_dir={tmp_path}"], capture_output=True, text=True,
                          env=harness_env(), timeout=120)
    assert proc.returncode in (0, 1), proc.stderr  # 1 where this machine is busy (other tests beside it)
    assert "the run will use 1 threads" in proc.stdout and proc.stdout.splitlines()[-1].startswith("doctor: ")
    bad = subprocess.run([sys.executable, "-m", "harness.doctor", "backend.num_thread=1"],
                         capture_output=True, text=True, env=harness_env(), timeout=120)
    assert bad.returncode == 2 and "error:" in bad.stderr


@pytest.mark.xdist_group("leftovers")  # a process whose owner is gone: tests/test_leftovers.py reaps such
def test_what_the_harness_left_running_is_named_with_the_command_that_stops_it(tmp_path, monkeypatch):
    monkeypatch.setenv(processes.STATE_ENV, str(tmp_path))
    assert doctor.left_running() == [doctor.Finding(True, "nothing the harness started is left running")]
    # A process whose owner (a killed test) is gone: a PID that no process has now
    gone = f"{processes.host()}:999999999:1"
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                              env={**os.environ, processes.OWNER_ENV: gone})
    try:
        [finding] = doctor.left_running()
        assert not finding.ok and str(orphan.pid) in finding.what and "999999999" in finding.what
        assert "python -m harness.leftovers reap" in finding.todo
    finally:
        orphan.kill()
        orphan.wait(timeout=10)
