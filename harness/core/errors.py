"""Errors that carry what a user must change."""

from __future__ import annotations


def printable(text: str, limit: int = 500) -> str:
    """`text` safe for a terminal and an MLflow tag: control characters and undecodable bytes escaped
    (`\\x00`, `\\ufffd`), cut to `limit` characters.

    >>> printable("bad\\x00row\\ufffd: é")
    'bad\\\\x00row\\\\ufffd: é'
    """
    def safe(c: str) -> str:
        if c.isprintable() and c != "\ufffd":
            return c
        return f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"

    out = "".join(safe(c) for c in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


class DataError(ValueError):
    """A data file that cannot be read as asked: the message names the file (and the line, where known)
    in printable text, whatever bytes the file holds."""

    def __init__(self, message: str) -> None:
        super().__init__(printable(message))


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this machine; the message says what is missing and how to install it.

    A run that raises it is recorded FAILED with the error tag `BackendUnavailable: ...`; sweeps and the
    analysis tell such "could not run here" runs apart from real failures (`could_not_run_here`).
    """


def could_not_run_here(error: str | None) -> bool:
    """Whether a run's `error` tag says its backend was not available on the machine that ran it."""
    return bool(error) and str(error).startswith(f"{BackendUnavailable.__name__}:")


class ConfigError(ValueError):
    """A config value that cannot work; `key` is its dotted path, `message` what is wrong with it.

    Sections check their own keys (`ConfigError("query_sizes", ...)`); whoever knows where the section
    sits puts the key under it with `within`, so the message a user reads names the full key:

    >>> str(ConfigError("query_sizes", "must list at least one query size").within("workload"))
    "config key 'workload.query_sizes': must list at least one query size"
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config key '{key}': {message}")
        self.key = key
        self.message = message

    def within(self, prefix: str) -> "ConfigError":
        return ConfigError(f"{prefix}.{self.key}" if prefix and self.key else prefix or self.key,
                           self.message)
