"""Torch module for the hybrid representation: [table vectors, DHE vectors] along the feature axis."""

from __future__ import annotations

import torch
from torch import nn

from harness.workload.representations.dhe.module import DeepHashEmbedding
from harness.workload.representations.table.module import build_tables


class HybridEmbedding(nn.Module):
    """ids [B, T, L] -> [B, 2T, D]: T table vectors, then T DHE vectors."""

    def __init__(self, spec) -> None:
        super().__init__()
        cfg = spec.representation
        self.tables = build_tables(spec.table_rows, spec.embedding_dim, cfg.layout)
        self.dhe = DeepHashEmbedding(range(spec.num_tables), cfg.dhe, spec.embedding_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tables(ids), self.dhe(ids)], dim=1)
