"""The MP-Cache stage of a run: pick each DHE table's hottest ids, attach the caches, and measure what
they buy: hit rate per query size and speedup over the same DHE without its cache, in the same run.

Hot ids come from the ids counted while this run trained; if it did not train (quality reused, or no
training), from the dataset's popularity: the synthetic generator's exact Zipf ranks, or counts over the
first `cache.sample_rows` rows of a Criteo file's training split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from harness.pipeline.stability import Ladder
from harness.workload.representations import cache_config
from harness.workload.representations.dhe.cache import DheCache, attach
from harness.workload.representations.dhe.module import DeepHashEmbedding


def cache_enabled(spec) -> bool:
    cache = cache_config(spec.representation)
    return cache is not None and cache.enabled


def _dhe_modules(model) -> list[DeepHashEmbedding]:
    return [m for m in model.modules() if isinstance(m, DeepHashEmbedding)]


class IdCounter:
    """Counts the ids of every DHE feature in the batches it observes (the training stream)."""

    def __init__(self, model) -> None:
        features = sorted({f for m in _dhe_modules(model) for f in m.features})
        self.counts: dict[int, np.ndarray] = {f: np.zeros(0, dtype=np.int64) for f in features}
        self.seen = 0

    def observe(self, batch) -> None:
        self.seen += len(batch.labels)
        for f in self.counts:
            ids = batch.ids[:, f, :].reshape(-1)
            counts = np.bincount(ids, minlength=len(self.counts[f]))
            counts[: len(self.counts[f])] += self.counts[f]
            self.counts[f] = counts

    def hottest(self, feature: int, n: int) -> np.ndarray | None:
        counts = self.counts.get(feature)
        if not self.seen or counts is None or not counts.any():
            return None
        seen = np.flatnonzero(counts)
        return seen[np.argsort(-counts[seen], kind="stable")[:n]]


@dataclass
class Caches:
    modules: list[DeepHashEmbedding]
    source: str

    def caches(self) -> list[DheCache]:
        """The attached caches (every module of a `Caches` has one: `attach_caches` made them)."""
        return [m.cache for m in self.modules if m.cache is not None]

    def summary(self) -> dict[str, float]:
        return {"cache_bytes": float(sum(c.nbytes for c in self.caches())),
                "cache_rows": float(sum(sum(c.rows_per_table) for c in self.caches()))}

    def enable(self, on: bool) -> None:
        for m in self.modules:
            m.cache_enabled = on

    def hit_rate(self, ids: torch.Tensor) -> float:
        hits = lookups = 0.0
        for m in self.modules:
            part = ids[:, m.features, :]
            if m.cache is not None:
                hits += m.cache.hit_rate(part) * part.numel()
            lookups += part.numel()
        return hits / lookups if lookups else 0.0


def attach_caches(model, spec, dataset, counter: IdCounter | None, recorder=None) -> Caches | None:
    """Caches of each DHE table's hottest ids, attached to the model (None without a cache); their size
    is recorded (`cache_bytes`, `cache_rows`) when a recorder is given."""
    cfg = cache_config(spec.representation)
    modules = _dhe_modules(model)
    if cfg is None or not cfg.enabled or not modules:
        return None
    tables = sum(len(m.features) for m in modules)
    rows = cfg.rows_per_table(tables, spec.embedding_dim)
    sources = set()
    for m in modules:
        hot = []
        for f in m.features:
            ids = counter.hottest(f, rows) if counter is not None else None
            sources.add("training counts" if ids is not None else "dataset popularity")
            if ids is None:
                ids = dataset.hot_ids(f, rows, sample_rows=cfg.sample_rows)
            hot.append(torch.as_tensor(np.asarray(ids), dtype=torch.int64))
        attach(m, hot)
    caches = Caches(modules, " and ".join(sorted(sources)))
    if recorder is not None:
        recorder.log_metrics(caches.summary())
    return caches


def cache_comparison(caches: Caches | None, measure_uncached: Callable[[Sequence[int]], Ladder], sizes,
                     make_pool, cached: Ladder) -> tuple[list[tuple[str, float, int]], dict[int, list[str]]]:
    """Metric rows: hit rate per query size, and the uncached ladder's latency and the cache's speedup,
    measured in the same run (none without a cache). `measure_uncached(sizes)` measures the ladder as the
    cached one was (the same load probe, stability rules and re-measurement: harness/pipeline/run.py), so
    the speedup compares two judged figures; `cache_speedup_reliable` is 0 where either side was flagged
    (and `uncached_reliable` says whether the uncached side was). Also returned: why the uncached sizes
    were flagged (the run's tag `uncached_unreliable`)."""
    rows: list[tuple[str, float, int]] = []
    if caches is None:
        return rows, {}
    for q in sizes:
        pool = make_pool(q)
        rows.append(("cache_hit_rate", float(np.mean([caches.hit_rate(b.ids) for b in pool])), q))
    caches.enable(False)
    try:
        uncached = measure_uncached(sizes)
    finally:
        caches.enable(True)
    for with_cache, without in zip(cached.results, uncached.results):
        q = with_cache.query_size
        if with_cache.feasible and without.feasible:
            rows += [("uncached_latency_p50_ms", without.timed.p50_ms, q),
                     ("uncached_latency_p99_ms", without.timed.p99_ms, q),
                     ("uncached_reliable", float(uncached.reliable(q)), q),
                     ("cache_speedup", without.timed.p50_ms / with_cache.timed.p50_ms, q),
                     ("cache_speedup_reliable", float(uncached.reliable(q) and cached.reliable(q)), q)]
    return rows, uncached.reasons
