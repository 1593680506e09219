"""A tensor derived from a module's weights (a transposed layout, an fp32 copy), made once and made again
whenever a weight changes.

A weight changes by assignment (another tensor: another address or dtype) or in place (its version
counter moves: an optimizer step, `load_state_dict`, `.mul_()`). The sources are kept (detached views), so
their storage cannot be freed and reused by another weight at the same address, which would pass for the
same weight.

>>> import torch
>>> weight = torch.ones(2, 3)
>>> transposed = Derived(lambda w: w.t().contiguous())
>>> transposed.get(weight).shape
torch.Size([3, 2])
>>> _ = weight.mul_(2); transposed.get(weight)[0, 0].item()   # changed in place: made again
2.0
"""

from __future__ import annotations

from typing import Callable

import torch


class Derived:
    """`make(*sources)`, cached until a source tensor (None allowed) changes."""

    def __init__(self, make: Callable[..., object]) -> None:
        self._make = make
        self._stamp: tuple | None = None
        self._kept: tuple = ()
        self._value: object = None

    def get(self, *sources: torch.Tensor | None):
        stamp = tuple(None if s is None else (s.data_ptr(), s._version, s.dtype) for s in sources)
        if stamp != self._stamp:
            self._kept = tuple(None if s is None else s.detach() for s in sources)
            self._value = self._make(*self._kept)
            self._stamp = stamp
        return self._value
