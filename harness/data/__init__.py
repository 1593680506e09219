"""Inputs: datasets a run trains and evaluates on (synthetic Criteo-shaped, or real Criteo files), and
the pools of batches the timing loop cycles.

- `sources`: the dataset configs (typed by `dataset.kind`) and the runtime datasets (`open_dataset`).
- `synthetic`: the planted-signal generator; `criteo`: the streaming file reader; `pool`: query pools.
"""
