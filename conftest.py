"""Doctest collection: skip modules whose optional framework is not installed here."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("tensorflow") else ["backends/tf/model.py"]

# Before the tests, stop what a killed session left; after them, fail if anything they started still runs.
pytest_plugins = ["tests.leftovers_plugin"]
