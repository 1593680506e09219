"""Every backend computes the same function: one spec, one set of weights, one batch, outputs within 1e-4.

TF runs wherever tensorflow is installed (CI installs the `tf` extra); torch-xla where it imports
(scripts/xla_check.sh builds that environment and runs these tests with PJRT_DEVICE=CPU).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from harness.data.pool import Batch
from harness.workload.dlrm import build_model
from harness.workload.representations import dhe, hybrid, select, table, tt
from harness.workload.spec import WorkloadSpec

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HAS_TF = importlib.util.find_spec("tensorflow") is not None
HAS_XLA = importlib.util.find_spec("torch_xla") is not None


def _dhe(**kw):
    return dhe.Config(**{"k": 8, "decoder": [8, 6], "m": 1000, "encoding": "uniform", "activation": "none",
                         "batch_norm": False, "seed": 0, **kw})


REPRESENTATIONS = {
    "table": table.Config(layout="fused"),
    "table_per_table": table.Config(layout="per_table"),
    "tt": tt.Config(rank=4, cores=3, min_rows=200, layout="fused"),
    "dhe": _dhe(),
    "dhe_gaussian_bn_mish": _dhe(encoding="gaussian", batch_norm=True, activation="mish"),
    "hybrid": hybrid.Config(layout="fused", dhe=_dhe()),
    "select": select.Config(layout="fused", features=["C3", "C4"], num_largest=5, dhe=_dhe(activation="sigmoid")),
}


def case(name: str, per_bag: int = 1):
    spec = WorkloadSpec.from_shape("kaggle", 0.0001, representation=REPRESENTATIONS[name], ids_per_lookup=per_bag)
    model = build_model(spec, seed=0).eval()
    if name == "dhe_gaussian_bn_mish":  # non-trivial running statistics
        with torch.no_grad():
            for norm in model.sparse_arch.norms:
                norm.running_mean.uniform_(-0.5, 0.5)
                norm.running_var.uniform_(0.5, 2.0)
    gen = torch.Generator().manual_seed(1)
    ids = torch.stack([torch.randint(0, r, (16, per_bag), generator=gen) for r in spec.table_rows], dim=1)
    batch = Batch(torch.rand(16, 13, generator=gen), ids)
    with torch.no_grad():
        expected = model(*batch)
    return model, batch, expected


def run_on(adapter, model, batch) -> torch.Tensor:
    adapter.prepare(model, batch)
    out = adapter.run(adapter.place(batch))
    adapter.synchronize(out)
    return adapter.to_host(out).float()


@pytest.mark.skipif(not HAS_TF, reason="tensorflow is not installed (pip install -e '.[tf]')")
@pytest.mark.parametrize("name, per_bag", [(n, 1) for n in REPRESENTATIONS] + [("table", 3), ("tt", 2), ("dhe", 2)])
def test_tensorflow_matches_torch(run_config, name, per_bag):
    from backends.tf import TfBackend

    model, batch, expected = case(name, per_bag)
    adapter = TfBackend(run_config("+backend=tf").backend)
    torch.testing.assert_close(run_on(adapter, model, batch), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_TF, reason="tensorflow is not installed (pip install -e '.[tf]')")
def test_tensorflow_with_xla_jit_matches_torch(run_config):
    from backends.tf import TfBackend

    model, batch, expected = case("dhe")
    adapter = TfBackend(run_config("+backend=tf", "backend.xla=true").backend)
    torch.testing.assert_close(run_on(adapter, model, batch), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_XLA, reason="torch_xla is not installed (scripts/xla_check.sh)")
@pytest.mark.parametrize("name, per_bag", [(n, 1) for n in REPRESENTATIONS] + [("table", 3)])
def test_xla_matches_torch_without_fallbacks(run_config, name, per_bag, monkeypatch):
    monkeypatch.setenv("PJRT_DEVICE", os.environ.get("PJRT_DEVICE", "CPU"))
    from backends.tpu import TpuBackend

    model, batch, expected = case(name, per_bag)
    adapter = TpuBackend(run_config("+backend=tpu").backend)
    if name == "table_per_table":
        pytest.skip("nn.EmbeddingBag falls back to the host under XLA; use representation.layout=fused there")
    torch.testing.assert_close(run_on(adapter, model, batch), expected, rtol=1e-4, atol=1e-4)
    assert adapter.fallbacks() == {}


def test_cpu_adapter_is_the_reference(run_config):
    from backends.cpu import CpuBackend

    model, batch, expected = case("hybrid")
    torch.testing.assert_close(run_on(CpuBackend(run_config("+backend=cpu").backend), model, batch), expected)
