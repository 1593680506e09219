"""The DLRM model in torch, split into small modules (dense, sparse, interaction, over).

The sparse part is whichever embedding representation the spec names; nothing here knows which one,
nor which backend will run it.

>>> import torch
>>> from harness.core.spec import WorkloadSpec
>>> from harness.workload.representations.table import Config
>>> spec = WorkloadSpec((5, 7, 3), embedding_dim=4, bottom_mlp=(13, 8, 4), top_mlp=(6, 1),
...                     representation=Config(layout="fused", storage="fp32"))
>>> model = build_model(spec)
>>> dense, ids = torch.rand(2, 13), torch.zeros(2, 3, 1, dtype=torch.int64)
>>> model(dense, ids).shape   # one logit per sample
torch.Size([2])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from harness.core.spec import WorkloadSpec, interaction_width
from harness.workload import representations


def _mlp(widths: tuple[int, ...], relu_last: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        linear = nn.Linear(fan_in, fan_out)
        # The DLRM reference's initialisation, so quality numbers are comparable with its runs.
        with torch.no_grad():
            linear.weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))
            linear.bias.normal_(0.0, math.sqrt(1.0 / fan_out))
        layers.append(linear)
        if i < len(widths) - 2 or relu_last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DenseArch(nn.Module):
    """Bottom MLP: dense features [B, 13] -> one vector [B, D] (ReLU after every layer, as DLRM)."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.mlp = _mlp(widths, relu_last=True)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.mlp(dense)


class DotInteraction(nn.Module):
    """Pairwise dot products of all feature vectors, without self-pairs, after the dense vector.

    [B, D] dense and [B, V, D] sparse -> [B, D + F(F-1)/2] with F = V + 1; pairs (i, j), j < i, in row
    order, the same order as the DLRM reference so weights can be exchanged with it.

    >>> import torch
    >>> inter = DotInteraction(num_vectors=3)
    >>> dense = torch.tensor([[1., 2.]]); sparse = torch.tensor([[[3., 4.], [5., 6.]]])
    >>> inter(dense, sparse)   # [dense, <s0,d>, <s1,d>, <s1,s0>] = [1, 2, 11, 17, 39]
    tensor([[ 1.,  2., 11., 17., 39.]])
    """

    pair_index: torch.Tensor  # a buffer, declared for the type checker

    def __init__(self, num_vectors: int) -> None:
        super().__init__()
        rows, cols = torch.tril_indices(num_vectors, num_vectors, offset=-1)
        self.num_vectors = num_vectors
        self.register_buffer("pair_index", rows * num_vectors + cols, persistent=False)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        vectors = torch.cat([dense.unsqueeze(1), sparse], dim=1)
        gram = torch.bmm(vectors, vectors.transpose(1, 2))
        pairs = gram.flatten(1).index_select(1, self.pair_index)
        return torch.cat([dense, pairs], dim=1)


class OverArch(nn.Module):
    """Top MLP: interaction output -> one logit per sample (ReLU on hidden layers only)."""

    def __init__(self, in_width: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.mlp = _mlp((in_width, *widths), relu_last=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).squeeze(-1)


class DLRM(nn.Module):
    """dense [B, 13] float32, ids [B, T, L] int64 -> logits [B] float32.

    In a reduced precision (harness/workload/precision.py sets `compute_dtype`) the dense input and the
    embeddings are cast to it on the way in and the logits back to fp32 on the way out.
    """

    def __init__(self, spec: WorkloadSpec) -> None:
        super().__init__()
        rep = representations.get(spec.representation.name)
        num_vectors = rep.feature_vectors(spec) + 1
        self.spec = spec
        self.dense_arch = DenseArch(spec.bottom_mlp)
        self.sparse_arch = rep.build(spec)
        self.interaction = DotInteraction(num_vectors)
        self.over_arch = OverArch(interaction_width(num_vectors, spec.embedding_dim), spec.top_mlp)
        self.compute_dtype: torch.dtype | None = None  # None: fp32 throughout, no cast at all

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        if dtype is None:
            return self.over_arch(self.interaction(self.dense_arch(dense), self.sparse_arch(ids)))
        x = self.dense_arch(dense.to(dtype))
        return self.over_arch(self.interaction(x, self.sparse_arch(ids).to(dtype))).float()


def build_model(spec: WorkloadSpec, seed: int | None = None) -> DLRM:
    """Build the torch DLRM for `spec`; `seed` makes the initial weights reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
    return DLRM(spec)
