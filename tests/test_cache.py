"""MP-Cache for DHE: exact outputs on hits and misses, never stale, its cost, its measurements."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.core.spec import WorkloadSpec
from harness.core.zipf import ZipfSampler, top_share
from harness.data.synthetic import SyntheticCriteo
from harness.workload.cost import path_cost
from harness.workload.dlrm import build_model
from harness.workload.representations import dhe, hybrid, label, select
from harness.workload.representations.dhe.cache import StaleCache, attach
from harness.workload.representations.dhe.module import DeepHashEmbedding

CACHE = dhe.CacheConfig(rows=0, bytes=None, sample_rows=1000)


def small(**kw) -> dhe.Config:
    base = dict(k=16, decoder=[16, 12], m=100_000, hash="multiply_shift", encoding="uniform",
                activation="none", batch_norm=False, seed=0, cache=CACHE)
    return dhe.Config(**{**base, **kw})


def module(**kw) -> DeepHashEmbedding:
    torch.manual_seed(0)
    return DeepHashEmbedding(range(3), small(**kw), dim=4).eval()


HOT = [torch.tensor([1, 2, 3, 50]), torch.tensor([7]), torch.tensor([], dtype=torch.int64)]


@pytest.mark.parametrize("kw", [{}, {"encoding": "gaussian", "batch_norm": True, "activation": "mish"},
                                {"activation": "sigmoid"}])
@pytest.mark.parametrize("batch, expected_rate", [
    (torch.tensor([[[1], [7], [100]], [[50], [8], [3]]]), 3 / 6),  # hits and misses mixed
    (torch.tensor([[[1], [7]], [[2], [7]]]), 1.0),  # all hits (two tables)
    (torch.tensor([[[99], [98], [97]], [[96], [95], [94]]]), 0.0),  # all misses
    (torch.tensor([[[1, 2], [7, 8], [5, 6]]]), 3 / 6),  # two ids per bag
])
def test_cached_output_equals_the_uncached_dhe(kw, batch, expected_rate):
    dhe_module = module(**kw)
    if dhe_module.norms is not None:
        for norm in dhe_module.norms:
            norm.running_mean.uniform_(-0.2, 0.2)
    tables = batch.shape[1]
    if tables == 2:
        dhe_module = DeepHashEmbedding(range(2), small(**kw), dim=4).eval()
    with torch.no_grad():
        plain = dhe_module(batch)
        cache = attach(dhe_module, HOT[:tables])
        cached = dhe_module(batch)
    torch.testing.assert_close(cached, plain, rtol=1e-6, atol=1e-6)
    assert cache.hit_rate(batch) == pytest.approx(expected_rate)


def test_a_cache_never_serves_stale_vectors():
    dhe_module = module()
    attach(dhe_module, HOT)
    ids = torch.tensor([[[1], [7], [5]]])
    dhe_module(ids)  # fresh: serves
    optimizer = torch.optim.SGD(dhe_module.parameters(), lr=0.1)
    dhe_module.train()
    loss = dhe_module(ids).sum()  # training mode bypasses the cache: gradients reach the decoder
    loss.backward()
    assert all(w.grad is not None for w in dhe_module.weights)
    optimizer.step()
    dhe_module.eval()
    with pytest.raises(StaleCache):
        dhe_module(ids)
    attach(dhe_module, HOT)  # rebuilt: serves again, with the new weights
    with torch.no_grad():
        cached = dhe_module(ids)
        dhe_module.cache_enabled = False
        torch.testing.assert_close(cached, dhe_module(ids), rtol=1e-6, atol=1e-6)
    dhe_module.cache_enabled = True
    dhe_module.load_state_dict(module().state_dict())  # new weights loaded in place
    with pytest.raises(StaleCache):
        dhe_module(ids)


@pytest.mark.parametrize("config",
                         [lambda c: hybrid.Config(layout="fused", storage="fp32", dhe=small(cache=c)),
                          lambda c: select.Config(layout="fused", storage="fp32", features=["C3", "C5"],
                                                  num_largest=5, dhe=small(cache=c))])
def test_hybrid_and_select_with_a_cache_are_exact_and_named(config):
    cache_cfg = dhe.CacheConfig(rows=4, bytes=None, sample_rows=1000)
    spec = WorkloadSpec.from_shape("kaggle", 0.0001, representation=config(cache_cfg))
    model = build_model(spec, seed=0).eval()
    gen = SyntheticCriteo(spec.table_rows, seed=0)
    dense, ids = (torch.from_numpy(a) for a in gen.batch(0, 64))
    with torch.no_grad():
        plain = model(dense, ids)
        for m in model.modules():
            if isinstance(m, DeepHashEmbedding):
                attach(m, [torch.from_numpy(gen.samplers[f].id_of_rank(np.arange(4))) for f in m.features])
        torch.testing.assert_close(model(dense, ids), plain, rtol=1e-6, atol=1e-6)
    assert label(spec.representation).endswith("+cache")


def test_the_cost_model_counts_cache_bytes_and_expected_hits():
    rows = 4096
    spec = WorkloadSpec.from_shape("kaggle", 0.01, representation=small(), extras={"zipf_exponent": 1.05})
    cached_spec = WorkloadSpec.from_shape("kaggle", 0.01, extras={"zipf_exponent": 1.05},
                                          representation=small(cache=dhe.CacheConfig(rows=rows, bytes=None,
                                                                                      sample_rows=1)))
    plain, cached = dhe.cost(spec), dhe.cost(cached_spec)
    expected_bytes = sum(min(rows, r) for r in spec.table_rows) * (16 * 4 + 8)  # a dim-16 vector and a key
    assert cached.param_bytes - plain.param_bytes == expected_bytes == cached.details["cache_bytes"]
    rates = [top_share(r, 1.05, min(rows, r)) for r in spec.table_rows]
    flops_lookup = plain.details["dhe_flops_per_lookup"]
    assert cached.flops_per_sample == round(sum(1 - h for h in rates) * flops_lookup)
    assert 0 < cached.flops_per_sample < plain.flops_per_sample
    assert path_cost(cached_spec).param_bytes > path_cost(spec).param_bytes


def test_expected_hit_rate_matches_sampled_ids():
    sampler = ZipfSampler(rows=200_000, exponent=1.05, seed=3)
    ids = sampler.sample(np.random.default_rng(0), 400_000)
    hot = set(sampler.id_of_rank(np.arange(5000)).tolist())
    sampled = np.isin(ids, list(hot)).mean()
    assert sampled == pytest.approx(top_share(200_000, 1.05, 5000), abs=0.005)


def test_a_byte_budget_sets_the_rows():
    cfg = dhe.CacheConfig(rows=0, bytes=26 * 1000 * (16 * 4 + 8), sample_rows=1)
    assert cfg.enabled and cfg.rows_per_table(26, 16) == 1000


def test_bad_cache_values_name_their_key(run_config):
    from harness.core.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        run_config("representation=dhe", "representation.cache.rows=-1")
    assert info.value.key == "representation.cache.rows"
    with pytest.raises(ConfigError) as info:
        run_config("representation=hybrid", "representation.dhe.cache.bytes=0")
    assert info.value.key == "representation.dhe.cache.bytes"


def test_ids_counted_in_training_pick_the_hot_ids(run_config):
    from harness.data.sources import open_dataset
    from harness.pipeline.cache import IdCounter
    from harness.pipeline.config import workload_spec

    run = run_config("representation=dhe", "dataset.scale=0.001", "representation.k=8",
                     "representation.decoder=[8,6]")
    spec = workload_spec(run)
    model = build_model(spec, seed=0)
    dataset = open_dataset(run.dataset, spec)
    counter = IdCounter(model)
    for _, batch in zip(range(20), dataset.train_batches(512)):
        counter.observe(batch)
    counted = counter.hottest(2, 20)  # C3, a large table
    exact = dataset.hot_ids(2, 20, sample_rows=0)  # the generator knows its ranks: nothing to count
    assert len(set(counted.tolist()) & set(exact.tolist())) >= 15


def test_a_cached_run_logs_size_hit_rates_and_speedup(run_harness, store):
    import mlflow
    from mlflow.tracking import MlflowClient

    # Other processes planted on q=64's timed phases: the uncached ladder is judged as the cached one is.
    run_harness("+backend=cpu", "experiment=smoke", "experiment_name=mprec", "representation=dhe",
                "representation.cache.rows=256", "dataset.scale=0.001", "workload.query_sizes=[1,64]",
                "debug.interference={64: 1.5}", "debug.machine_load=0", store_uri=store)
    mlflow.set_tracking_uri(store)
    [run] = mlflow.search_runs(experiment_names=["mprec"], output_format="list")
    # The cache's budget is a setting the label names (harness/core/paths.py): a budget sweep is many paths.
    assert run.data.tags["path"] == "dhe[cache.rows=256]+cache@cpu"
    assert run.data.tags["representation"] == "dhe"
    assert run.data.metrics["cache_bytes"] > 0
    client = MlflowClient(store)
    for key in ("cache_hit_rate", "cache_speedup", "uncached_latency_p50_ms"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 64], key
    assert all(0 < m.value < 1 for m in client.get_metric_history(run.info.run_id, "cache_hit_rate"))
    by_size = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
               for key in ("uncached_reliable", "cache_speedup_reliable", "reliable")}
    assert by_size["uncached_reliable"][64] == 0.0  # the same probe and rules, not an unwatched ladder
    assert "q=64: other processes used 1.50 cores" in run.data.tags["uncached_unreliable"]
    for q in (1, 64):  # a speedup is trusted only where both of its figures are
        both = by_size["uncached_reliable"][q] and by_size["reliable"][q]
        assert by_size["cache_speedup_reliable"][q] == float(both)
