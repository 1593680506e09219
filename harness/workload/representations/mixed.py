"""Representations side by side: each part embeds some features; outputs return in feature order.

>>> import torch
>>> from harness.workload.representations.table.module import build_tables
>>> mixed = MixedEmbedding([([1], build_tables((4,), 2)), ([0, 2], build_tables((3, 5), 2))])
>>> mixed(torch.zeros(1, 3, 1, dtype=torch.int64)).shape
torch.Size([1, 3, 2])
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class MixedEmbedding(nn.Module):
    """parts = [(feature indices, module mapping ids [B, len, L] -> [B, len, D]), ...]."""

    restore: torch.Tensor  # a buffer, declared for the type checker

    def __init__(self, parts: Sequence[tuple[Sequence[int], nn.Module]]) -> None:
        super().__init__()
        order = [f for features, _ in parts for f in features]
        if sorted(order) != list(range(len(order))):
            raise ValueError(f"parts must cover features 0..{len(order) - 1} exactly once, got {order}")
        self.parts = nn.ModuleList(module for _, module in parts)
        for i, (features, _) in enumerate(parts):
            self.register_buffer(f"features_{i}", torch.tensor(list(features), dtype=torch.int64),
                                 persistent=False)
        # Position of feature f in the concatenated outputs, to restore feature order with one gather.
        restore = torch.empty(len(order), dtype=torch.int64)
        restore[torch.tensor(order)] = torch.arange(len(order))
        self.register_buffer("restore", restore, persistent=False)

    def part_features(self, i: int) -> torch.Tensor:
        return getattr(self, f"features_{i}")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        outs = [part(ids.index_select(1, self.part_features(i))) for i, part in enumerate(self.parts)]
        return torch.cat(outs, dim=1).index_select(1, self.restore)
