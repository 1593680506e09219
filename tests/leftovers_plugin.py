"""A pytest session leaves the machine as it found it (harness/core/processes.py; the root conftest.py loads
this plugin): before the tests, whatever an earlier, killed session left is stopped; after them, anything
this session's tests started that still runs is named, stopped, and fails the session.

Every process the tests start inherits MPREC_OWNER=<this session's pid:start>, set here before any test (and
before xdist starts its workers, which carry it too and are torn down before the check runs)."""

from __future__ import annotations

import os
import sys
import time

import pytest

from harness.core import processes

_GRACE_S = 15.0  # servers stopped by a test's teardown may take a few seconds to exit
_session: list[pytest.Session] = []


def _controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")  # an xdist worker has workerinput


def pytest_configure(config: pytest.Config) -> None:
    if not _controller(config):
        return
    os.environ[processes.OWNER_ENV] = processes.identity()
    left = processes.leftovers()
    for item in left:
        print(f"stopping what an earlier run left: {processes.describe(item)}", file=sys.stderr)
    processes.reap(left)


def pytest_sessionstart(session: pytest.Session) -> None:
    _session.append(session)


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _controller(config) or processes.OWNER_ENV not in os.environ:
        return
    owner = os.environ[processes.OWNER_ENV]
    deadline = time.monotonic() + _GRACE_S
    left = processes.leftovers(owner)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = processes.leftovers(owner)
    if not left:
        return
    print("\nFAILED: the tests left processes running (stopped now):", file=sys.stderr)
    for item in left:
        print(f"  {processes.describe(item)}", file=sys.stderr)
    processes.reap(left)
    if _session:
        _session[-1].exitstatus = pytest.ExitCode.TESTS_FAILED
