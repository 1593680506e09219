"""Doctest collection: skip modules whose optional framework is not installed here."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("tensorflow") else ["backends/tf/model.py"]
