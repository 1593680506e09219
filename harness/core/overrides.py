"""Command-line overrides checked against the config tree before Hydra composes it.

Hydra answers `workload.query_size=[1,8]` (a typo of `query_sizes`) with advice to append the key with
`+`, which then fails on the schema. Here an override of a key the tree does not have is refused first,
with the closest key that exists:

    error: config key 'workload.query_size' does not exist; did you mean 'workload.query_sizes'?

The known keys are read from the YAML files (conf/), every option of every group included, so a key that
only one option has (`representation.rank` of tt) is known whichever option the command selects; the
schema still refuses values that do not fit the option chosen.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from harness.core.conf import config_dir

GLOBAL_PACKAGE = "# @package _global_"


def _flatten(node, prefix: str, into: set[str]) -> None:
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key == "defaults" and not prefix:
            continue
        path = f"{prefix}{key}"
        into.add(path)
        _flatten(value, path + ".", into)


def _load(path: Path) -> dict:
    # Only the keys matter here: plain YAML parsing, about 5x faster than OmegaConf's (start-up time).
    node = yaml.safe_load(path.read_text())
    return node if isinstance(node, dict) else {}


def known_keys(conf: Path, config_name: str) -> set[str]:
    """Every dotted key the primary config `config_name` and the options of its groups can set.

    Its groups are those of its defaults list (dataset, representation, experiment; serving) and those a
    top-level key of it names (backend, which `+backend=<name>` adds).
    """
    keys: set[str] = set()
    primary = _load(conf / f"{config_name}.yaml")
    _flatten(primary, "", keys)
    named = {k for entry in primary.get("defaults", []) if isinstance(entry, dict) for k in entry}
    groups = [d for d in conf.iterdir() if d.is_dir() and (d.name in named or d.name in primary)]
    for group in groups:
        keys.add(group.name)  # the group itself: representation=dhe
        for option in group.glob("*.yaml"):
            node = _load(option)
            is_global = option.read_text().lstrip().startswith(GLOBAL_PACKAGE)
            _flatten(node, "" if is_global else f"{group.name}.", keys)
            for entry in node.get("defaults", []):
                # `- dhe@dhe` in a representation: that option's keys under representation.dhe
                if isinstance(entry, str) and "@" in entry:
                    source, target = entry.split("@", 1)
                    nested = conf / group.name / f"{source}.yaml"
                    if nested.is_file():
                        _flatten(_load(nested), f"{group.name}.{target}.", keys)
    return keys


def refuse_unknown_keys(argv: list[str], config_name: str) -> None:
    """Exit 2 with one `error:` line if an override names a key the config tree does not have."""
    problem = unknown_override(argv, config_dir(), config_name)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)


def unknown_override(argv: list[str], conf: Path, config_name: str) -> str | None:
    """A message for the first override of a key the tree does not have, or None if all are known.

    Overrides that add (`+key`), delete (`~key`), set Hydra's own keys or choose a group by its path are
    left to Hydra.
    """
    # Hydra's own keys and group paths (hydra/launcher=joblib) are Hydra's to check.
    candidates = [a for a in argv if "=" in a and not a.startswith(("-", "+", "~", "hydra.", "hydra/"))
                  and "/" not in a.split("=", 1)[0]]
    if not candidates:
        return None
    keys = None
    parser = OverridesParser.create()
    for arg in candidates:
        try:
            [override] = parser.parse_overrides([arg])
        except Exception:  # noqa: BLE001 - a malformed override is Hydra's to report
            continue
        key = override.key_or_group
        keys = keys if keys is not None else known_keys(conf, config_name)
        if key in keys:
            continue
        close = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.75)
        hint = (
            f"did you mean '{close[0]}'?"
            if close
            else f"the keys are those of conf/{config_name}.yaml and its groups (--cfg job prints them "
            "composed)"
        )
        return f"config key '{key}' does not exist; {hint}"
    return None
