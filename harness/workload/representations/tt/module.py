"""Torch module for TT-Rec tables: gathered core slices, then a chain of batched small GEMMs.

All TT tables share q (the factors of D) and the ranks, so their cores are stacked per position k into
one weight [sum of p(k) over tables, r(k-1), q(k), r(k)]: one gather per core and one bmm per chain step
serve every TT table at once, as the fused plain tables do.

>>> import torch
>>> from harness.workload.representations.tt import TTFactorization
>>> facts = [TTFactorization.of(1000, 8, cores=3, rank=4), TTFactorization.of(300, 8, cores=3, rank=4)]
>>> tt = TTTables(facts)
>>> ids = torch.tensor([[[999], [5]]])              # [B=1, T=2, L=1]
>>> torch.allclose(tt(ids)[0, 0], tt.full_table(0)[999], atol=1e-6)
True
"""

from __future__ import annotations

import math

import torch
from torch import nn

from harness.workload.representations.mixed import MixedEmbedding
from harness.workload.representations.table.module import build_tables
from harness.workload.representations.tt import TTFactorization, factorizations, split_tables


class TTTables(nn.Module):
    """ids [B, T, L] -> [B, T, D] for T tables stored as tensor trains (same q and ranks)."""

    radix: torch.Tensor  # buffers, declared for the type checker
    strides: torch.Tensor
    core_offsets: torch.Tensor

    def __init__(self, facts: list[TTFactorization]) -> None:
        super().__init__()
        self.facts = facts
        self.q, self.ranks = facts[0].q, facts[0].ranks
        if any(f.q != self.q or f.ranks != self.ranks for f in facts):
            raise ValueError("TT tables stacked together must share q and ranks")
        self.num_cores = len(self.q)
        self.dim = math.prod(self.q)
        self.cores = nn.ParameterList()
        for k in range(self.num_cores):
            rows = sum(f.p[k] for f in facts)
            core = torch.empty(rows, self.ranks[k], self.q[k], self.ranks[k + 1])
            self.cores.append(nn.Parameter(core))
        p = torch.tensor([f.p for f in facts], dtype=torch.int64)  # [T, c]
        # Mixed-radix strides: x = sum_k i_k * prod_{j > k} p_j.
        strides = torch.ones_like(p)
        for k in range(self.num_cores - 2, -1, -1):
            strides[:, k] = strides[:, k + 1] * p[:, k + 1]
        offsets = torch.zeros_like(p)
        offsets[1:] = torch.cumsum(p[:-1], dim=0)
        self.register_buffer("radix", p, persistent=False)
        self.register_buffer("strides", strides, persistent=False)
        self.register_buffer("core_offsets", offsets, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # TT-Rec's aim: entries of the full table with the spread of DLRM's uniform(+-sqrt(1/N)) init,
        # std 1/sqrt(3N). A product of c Gaussian cores summed over R^(c-1) rank paths has variance
        # R^(c-1) * prod(sigma_k^2); equal sigma_k solve it. N is the largest table's row count.
        rows = max(f.rows for f in self.facts)
        target_var = 1.0 / (3.0 * rows)
        paths = math.prod(self.ranks[1:-1])
        sigma = (target_var / paths) ** (1.0 / (2 * self.num_cores))
        with torch.no_grad():
            for core in self.cores:
                core.normal_(0.0, sigma)

    def digits(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [N, T] -> global core rows [c, N, T] (mixed-radix digit + the table's offset)."""
        digits = torch.div(ids.unsqueeze(-1), self.strides, rounding_mode="floor") % self.radix
        return (digits + self.core_offsets).permute(2, 0, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        batch, tables, per_bag = ids.shape
        flat = ids.permute(0, 2, 1).reshape(-1, tables)  # [B*L, T]
        rows = self.digits(flat).reshape(self.num_cores, -1)  # [c, n] with n = B*L*T
        n = rows.shape[1]
        out = self.cores[0].index_select(0, rows[0]).view(n, self.q[0], self.ranks[1])
        for k in range(1, self.num_cores):
            piece = self.cores[k].index_select(0, rows[k])  # [n, r, q_k, r']
            out = torch.bmm(out, piece.view(n, self.ranks[k], -1))  # [n, Q, q_k * r']
            out = out.view(n, -1, self.ranks[k + 1])
        out = out.view(batch, per_bag, tables, self.dim)
        return (out.sum(1) if per_bag > 1 else out.squeeze(1))

    def full_table(self, t: int) -> torch.Tensor:
        """Table t rebuilt densely from its cores, [rows, D] (tests and the dense-rebuild baseline)."""
        f = self.facts[t]
        out: torch.Tensor | None = None
        for k in range(self.num_cores):
            start = int(self.core_offsets[t, k])
            core = self.cores[k][start : start + f.p[k]]  # [p, r, q, r']
            if out is None:
                out = core.reshape(f.p[k], self.q[k], self.ranks[k + 1])  # [P, Q, r]
                continue
            # [P, Q, r] x [p, r, q, r'] -> [P, p, Q, q, r'] -> [P*p, Q*q, r']
            out = torch.einsum("aqr,bros->abqos", out, core)
            out = out.reshape(out.shape[0] * out.shape[1], out.shape[2] * out.shape[3], self.ranks[k + 1])
        assert out is not None  # one core at least
        return out.reshape(-1, self.dim)[: f.rows]


def build_tt(spec) -> nn.Module:
    tt, plain = split_tables(spec)
    facts = factorizations(spec)
    if not tt:
        return build_tables(spec.table_rows, spec.embedding_dim, spec.representation.layout)
    tt_module = TTTables(facts)
    if not plain:
        return tt_module
    tables = build_tables(tuple(spec.table_rows[t] for t in plain), spec.embedding_dim,
                          spec.representation.layout)
    return MixedEmbedding([(tt, tt_module), (plain, tables)])
