"""Bounded retries of the harness's MLflow calls, and the time each call took (docs/sweeps.md).

Every call the harness makes to MLflow goes through `RetryingClient`. A call that fails for a reason
that passes is retried with exponential backoff and jitter until `tracking.retry_s` has passed since it
began; then it raises `TrackingUnavailable`, naming the bound. What passes:

- SQLite's "database is locked": parallel jobs on one file store collide on writes, and SQLite answers
  at once rather than waiting long enough;
- a tracking server restarting or out of reach: connection refused or reset, a timeout, HTTP 408, 429
  or 5xx (the server answers 503 while its PostgreSQL is down);
- a database store whose server is restarting (a `postgresql://` URI used directly).

Anything else (a bad value, a missing run, HTTP 401 or 403) raises at once.

Retrying is safe because every write the harness makes is idempotent (tags and params set to the same
value, metrics with their timestamp fixed before the first try, which MLflow's SQL store does not
insert twice, artifacts overwritten, a run ended twice) except creating a run: `Store.create_run`
passes a `recover` that finds the run a lost answer had created, so a retry never makes a second one.

MLflow retries an HTTP request itself, 7 times with backoff factor 2 (about 4 minutes), and waits 120 s
for an answer; under that, no bound of ours would hold. For a server URI the harness therefore sets
MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 and MLFLOW_HTTP_REQUEST_TIMEOUT=tracking.request_timeout_s, unless
they are set already: one retry loop, and a call gives up within retry_s plus one request's timeout.

With MPREC_TRACKING_CALL_LOG=<file> set, every call appends a JSON line (call, seconds, tries, ok,
time) to that file: how benchmarks/team_server.py measures the harness's MLflow call latency.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import re
import time
from typing import Any, Callable

from harness.tracking.credentials import redact

log = logging.getLogger(__name__)

CALL_LOG_ENV = "MPREC_TRACKING_CALL_LOG"
FIRST_DELAY_S = 0.05
# A server that restarts is back within seconds: waiting longer between tries only delays the job.
MAX_DELAY_S = 4.0
TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
# MLflow wraps whatever `requests` raised (refused, reset, timed out, too many 5xx) in these words...
_REQUEST_FAILED = re.compile(r"API request to \S+ failed with (?:timeout )?exception")
# ...and an error answer that carries no JSON body in these.
_HTTP_ERROR = re.compile(r"API request to endpoint \S+ failed with error code (\d{3})")
# A database (SQLite, or PostgreSQL through SQLAlchemy) that is locked or restarting.
_DATABASE_AWAY = ("database is locked", "database table is locked", "could not connect to server",
                  "connection refused", "server closed the connection unexpectedly",
                  "the database system is starting up", "the database system is shutting down",
                  "terminating connection due to administrator command", "connection reset by peer")
_NEVER_PASSES = ("SSLError", "CERTIFICATE_VERIFY_FAILED")


class TrackingUnavailable(RuntimeError):
    """The tracking store did not answer a call within `tracking.retry_s`."""


def is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


def is_transient(exc: BaseException) -> bool:
    """Whether `exc`, raised by an MLflow call, may pass if the call is tried again."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        import requests
    except ImportError:  # mlflow brings requests; without it, no HTTP store raised this
        pass
    else:
        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return True
    text = str(exc)
    if any(marker in text for marker in _NEVER_PASSES):
        return False
    if _REQUEST_FAILED.search(text):
        return True
    status = _HTTP_ERROR.search(text)
    if status:
        return int(status.group(1)) in TRANSIENT_HTTP
    lowered = text.lower()
    return any(marker in lowered for marker in _DATABASE_AWAY)


def bound_mlflow_http(request_timeout_s: int) -> None:
    """Leave retrying to RetryingClient, so that tracking.retry_s bounds a call (the module's docstring).

    A user's own MLFLOW_HTTP_REQUEST_* settings are kept: the bound then grows by MLflow's retries.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(request_timeout_s)))


def _log_call(name: str, seconds: float, tries: int, ok: bool) -> None:
    path = os.environ.get(CALL_LOG_ENV)
    if not path:
        return
    line = json.dumps({"call": name, "s": round(seconds, 6), "tries": tries, "ok": ok, "t": time.time()})
    with open(path, "a") as out:  # one short append per call: lines of parallel jobs do not interleave
        out.write(line + "\n")


def _short(exc: BaseException, limit: int = 300) -> str:
    text = redact(f"{type(exc).__name__}: {exc}")
    return text if len(text) <= limit else text[:limit] + "..."


class RetryingClient:
    """An MlflowClient whose every call retries what passes, for at most `retry_s` (module docstring).

    `client.<method>(...)` calls the MlflowClient method with retries; `client.call(name, ...,
    recover=fn)` also asks `fn`, after a failed try and before the next, whether the call took effect
    after all (a run created whose answer was lost), and returns what it found if so. `unretried` is the
    plain client (for what must not retry on its own, such as `fn`).
    """

    def __init__(self, client: Any, retry_s: float, where: str) -> None:
        self._client = client
        self._retry_s = float(retry_s)
        self._where = redact(where)

    @property
    def unretried(self) -> Any:
        return self._client

    def __getattr__(self, name: str):
        if name.startswith("_"):  # not delegated (and keeps unpickling from recursing)
            raise AttributeError(name)
        target = getattr(self._client, name)
        if not callable(target):
            return target
        return functools.partial(self.call, name)

    def call(self, name: str, *args: Any, recover: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        target = getattr(self._client, name)
        began = time.monotonic()
        deadline = began + self._retry_s
        delay, tries, warned, ok = FIRST_DELAY_S, 0, False, False
        # After a failed try that may have taken effect, `recover` must answer before the call is tried
        # again: trying while the store cannot say would create a second run once it is back.
        pending = False
        try:
            while True:
                try:
                    if pending and recover is not None:
                        found = recover()
                        if found is not None:
                            ok = True
                            return found
                        pending = False
                    tries += 1
                    result = target(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - what does not pass is raised at once
                    if not is_transient(exc):
                        raise
                    pending = recover is not None
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TrackingUnavailable(
                            f"MLflow call {name} gave up: the tracking store {self._where} stayed "
                            f"unavailable for {self._retry_s:g} s (tracking.retry_s; {tries} tries); last "
                            f"error: {_short(exc)}. Once it is back, the same command resumes (finished "
                            f"jobs are skipped)") from None
                    if not warned and not is_lock_error(exc):  # locks are routine on SQLite: not news
                        log.warning("tracking store %s unavailable (%s); retrying %s for up to %g s "
                                    "(tracking.retry_s)", self._where, _short(exc, 160), name, self._retry_s)
                        warned = True
                    # +-25% jitter: parallel jobs that failed together do not all come back together.
                    time.sleep(min(delay * (0.75 + 0.5 * random.random()), left))
                    delay = min(delay * 2, MAX_DELAY_S)
                    continue
                ok = True
                if warned:
                    log.warning("tracking store %s answered %s again after %.1f s (%d tries)", self._where,
                                name, time.monotonic() - began, tries)
                return result
        finally:
            _log_call(name, time.monotonic() - began, tries, ok)
