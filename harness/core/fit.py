"""The one rule for whether a path's model fits a device's memory: a run (`fits_device` per query size),
a dry run and the analysis (the mapping and the feasibility of devices not present) all use it.

>>> fits(900, 1000, 0.1), fits(901, 1000, 0.1), fits(10, None, 0.1)
(True, False, None)
"""

from __future__ import annotations


def fits(needed_bytes: float, capacity_bytes: float | None, headroom: float) -> bool | None:
    """Parameters plus the activations of the query size (`needed_bytes`) within the capacity less the
    share `headroom` kept free (`workload.memory_headroom`); None when the capacity is not known."""
    if not capacity_bytes or capacity_bytes != capacity_bytes:  # None, 0 or NaN: not known
        return None
    return needed_bytes <= capacity_bytes * (1.0 - headroom)
