"""MP-Cache for DHE: the decoder's output for the hottest ids, so they skip hashing and the decoder.

Recommendation ids follow a power law: a few thousand ids per table carry most lookups. A `DheCache`
holds, for chosen ids of every table, the exact vectors the decoder produces for them. A lookup gathers
the hits and sends only the misses through hashing and the decoder (table by table, only tables with
misses), then merges both in place: the output equals the uncached DHE (same weights; fp32 rounding of
differently blocked GEMMs aside, < 1e-6).

A cache is tied to the weights it was computed from: it records each decoder tensor's storage and
version counter (bumped by every in-place update: optimizer steps, load_state_dict), and refuses to serve
once they change (`StaleCache`). In training mode the module bypasses the cache altogether.

>>> import torch
>>> from harness.workload.representations.dhe import Config
>>> from harness.workload.representations.dhe.module import DeepHashEmbedding
>>> dhe = DeepHashEmbedding(range(2), Config(k=8, decoder=[8, 6], m=1000, encoding="uniform",
...     activation="none", batch_norm=False, seed=0), dim=4).eval()
>>> ids = torch.tensor([[[3], [9]], [[5], [9]]])
>>> plain = dhe(ids)
>>> cache = attach(dhe, [torch.tensor([3, 4]), torch.tensor([9])])
>>> bool(torch.allclose(dhe(ids), plain, atol=1e-6)), dhe.cache.hit_rate(ids)
(True, 0.75)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from harness.workload.representations.dhe.module import DeepHashEmbedding

KEY_STRIDE = 1 << 40  # key = table * stride + id: ids below 2^40, tables below 2^23


class StaleCache(RuntimeError):
    """The DHE weights changed after the cache was built: it would serve wrong vectors."""


def fingerprint(dhe: nn.Module) -> tuple:
    tensors = [p for p in dhe.parameters()] + [b for n, b in dhe.named_buffers() if "running_" in n]
    return tuple((t.data_ptr(), t._version) for t in tensors)


class DheCache(nn.Module):
    keys: torch.Tensor  # buffers, declared for the type checker
    vectors: torch.Tensor

    def __init__(self, dhe: DeepHashEmbedding, hot_ids: list[torch.Tensor]) -> None:
        super().__init__()
        if len(hot_ids) != len(dhe.features):
            raise ValueError(f"one id list per DHE table: got {len(hot_ids)} for {len(dhe.features)} tables")
        keys, vectors = [], []
        was_training = dhe.training
        dhe.eval()
        with torch.no_grad():
            for t, ids in enumerate(hot_ids):
                ids = torch.unique(ids.to(torch.int64))
                if ids.numel() == 0:
                    continue
                codes = dhe.encode_flat(ids.view(1, -1), slice(t, t + 1))[0]
                vectors.append(dhe.decode_table(t, codes))
                keys.append(ids + t * KEY_STRIDE)
        dhe.train(was_training)
        dim = dhe.dim
        keys_all = torch.cat(keys) if keys else torch.empty(0, dtype=torch.int64)
        vectors_all = torch.cat(vectors) if vectors else torch.empty(0, dim)
        order = torch.argsort(keys_all)
        self.register_buffer("keys", keys_all[order], persistent=False)
        self.register_buffer("vectors", vectors_all[order], persistent=False)
        self.rows_per_table = [int(torch.unique(ids).numel()) for ids in hot_ids]
        self._fingerprint = fingerprint(dhe)

    @property
    def nbytes(self) -> int:
        return (
            self.keys.numel() * self.keys.element_size() + self.vectors.numel() * self.vectors.element_size()
        )

    def check_fresh(self, dhe: DeepHashEmbedding) -> None:
        if fingerprint(dhe) != self._fingerprint:
            raise StaleCache("the DHE weights changed after its cache was built; rebuild the cache "
                             "(harness.workload.representations.dhe.cache.attach) before serving")

    def _positions(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hit mask, cache row) of every lookup in ids [B, T, L] (flattened)."""
        tables = ids.shape[1]
        offsets = torch.arange(tables, device=ids.device, dtype=torch.int64).view(1, tables, 1) * KEY_STRIDE
        keys = (ids.to(torch.int64) + offsets).reshape(-1)
        if self.keys.numel() == 0:
            return torch.zeros_like(keys, dtype=torch.bool), keys
        row = torch.searchsorted(self.keys, keys).clamp_(max=self.keys.numel() - 1)
        return self.keys[row] == keys, row

    def hit_rate(self, ids: torch.Tensor) -> float:
        hit, _ = self._positions(ids)
        return float(hit.float().mean()) if hit.numel() else 0.0

    def lookup(self, dhe: DeepHashEmbedding, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T, L] -> [B, T, D]: cached rows for hits, the decoder for misses only."""
        self.check_fresh(dhe)
        batch, tables, per_bag = ids.shape
        hit, row = self._positions(ids)
        out = torch.empty(hit.numel(), dhe.dim, dtype=self.vectors.dtype, device=ids.device)
        out[hit] = self.vectors[row[hit]]
        miss = ~hit
        if bool(miss.any()):
            flat_ids = ids.reshape(-1)
            table_of = (torch.arange(tables, device=ids.device).view(1, tables, 1).expand(batch, tables,
                                                                                          per_bag))
            table_of = table_of.reshape(-1)
            for t in torch.unique(table_of[miss]).tolist():
                where = miss & (table_of == t)
                codes = dhe.encode_flat(flat_ids[where].view(1, -1), slice(t, t + 1))[0]
                out[where] = dhe.decode_table(t, codes)
        out = out.view(batch, tables, per_bag, dhe.dim)
        return out.sum(2) if per_bag > 1 else out.squeeze(2)


def attach(dhe: DeepHashEmbedding, hot_ids: list[torch.Tensor]) -> DheCache:
    """Build a cache of `hot_ids` (one tensor per table of `dhe`) and let `dhe` serve from it."""
    cache = DheCache(dhe, hot_ids)
    dhe.cache, dhe.cache_enabled = cache, True
    return cache
