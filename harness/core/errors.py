"""Errors that carry what a user must change."""

from __future__ import annotations


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
        return ConfigError(f"{prefix}.{self.key}" if prefix and self.key else prefix or self.key, self.message)
