"""Every backend computes the same function: one spec, one set of weights, one batch, outputs within 1e-4.

TF runs wherever tensorflow is installed (CI installs the `tf` extra); torch-xla where it imports
(scripts/xla_check.sh builds that environment and runs these tests with PJRT_DEVICE=CPU).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from harness.core.spec import WorkloadSpec
from harness.data.pool import Batch
from harness.pipeline.run import prepare_on
from harness.workload.dlrm import build_model
from harness.workload.representations import dhe, hybrid, select, table, tt

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HAS_TF = importlib.util.find_spec("tensorflow") is not None
HAS_XLA = importlib.util.find_spec("torch_xla") is not None


def _dhe(**kw):
    return dhe.Config(**{"k": 8, "decoder": [8, 6], "m": 1000, "hash": "multiply_shift",
                         "encoding": "uniform", "activation": "none", "batch_norm": False, "seed": 0, **kw})


REPRESENTATIONS = {"table": table.Config(layout="fused", storage="fp32"),
                   "table_per_table": table.Config(layout="per_table", storage="fp32"),
                   "tt": tt.Config(rank=4, cores=3, min_rows=200, layout="fused"), "dhe": _dhe(),
                   "dhe_universal": _dhe(hash="universal"),
                   "dhe_gaussian_bn_mish": _dhe(encoding="gaussian", batch_norm=True, activation="mish"),
                   "hybrid": hybrid.Config(layout="fused", storage="fp32", dhe=_dhe()),
                   "select": select.Config(layout="fused", storage="fp32", features=["C3", "C4"],
                                           num_largest=5, dhe=_dhe(activation="sigmoid"))}


def case(name: str, per_bag: int = 1):
    spec = WorkloadSpec.from_shape("kaggle", 0.0001, representation=REPRESENTATIONS[name],
                                   ids_per_lookup=per_bag)
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
    prepare_on(adapter, model, batch)  # configured for what the adapter declares, as a run is
    return adapter.to_host(adapter.serve(batch)).float()


@pytest.mark.skipif(not HAS_TF, reason="tensorflow is not installed (pip install -e '.[tf]')")
@pytest.mark.parametrize("name, per_bag", [(n, 1) for n in REPRESENTATIONS] + [("table", 3), ("tt", 2),
                                                                               ("dhe", 2)])
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


# --- CUDA: runs where torch sees a GPU (scripts/gpu_check.sh runs these on a lent GPU machine) ---
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device (torch.cuda.is_available() is False)")


@needs_cuda
@pytest.mark.parametrize("name, per_bag", [(n, 1) for n in REPRESENTATIONS] + [("table", 3), ("tt", 2),
                                                                               ("dhe", 2)])
def test_cuda_matches_torch_cpu(run_config, name, per_bag):
    from backends.cuda import CudaBackend

    model, batch, expected = case(name, per_bag)
    adapter = CudaBackend(run_config("+backend=cuda").backend)
    torch.testing.assert_close(run_on(adapter, model, batch), expected, rtol=1e-4, atol=1e-4)
    assert adapter.device_time_s() > 0  # the CUDA events bracketed the call


@needs_cuda
def test_cuda_with_torch_compile_matches_torch_cpu(run_config):
    from backends.cuda import CudaBackend

    model, batch, expected = case("dhe")
    adapter = CudaBackend(run_config("+backend=cuda", "backend.compile=true").backend)
    torch.testing.assert_close(run_on(adapter, model, batch), expected, rtol=1e-4, atol=1e-4)
    assert adapter.prepare_metrics()["compile_s"] > 0


@needs_cuda
def test_a_real_cuda_out_of_memory_is_recorded_and_the_ladder_goes_on(run_config):
    """A query size whose forward asks for more than the GPU has raises torch.cuda.OutOfMemoryError;
    the ladder records that size infeasible, empties the cache and measures the next size."""
    from backends.cuda import CudaBackend
    from harness.pipeline.timing import LadderSettings, run_ladder

    class Greedy(torch.nn.Module):
        def forward(self, dense, ids):
            if dense.shape[0] > 8:  # ~4 TB: more than any GPU has
                return torch.empty(2**40, device=dense.device).sum() + dense.sum()
            return dense.sum(1)

    adapter = CudaBackend(run_config("+backend=cuda").backend)
    adapter.prepare(Greedy(), None)
    settings = LadderSettings(warmup_iters=1, warmup_s=0, min_iters=4, min_time_s=0, max_iters=4,
                              max_time_s=5)
    pool = lambda q: [Batch(torch.rand(q, 13), torch.zeros(q, 26, 1, dtype=torch.long))]  # noqa: E731
    results = run_ladder(adapter, [4, 16, 8], pool, settings)
    assert [r.feasible for r in results] == [True, False, True]
    assert results[0].extra["peak_memory_bytes"] > 0 and len(results[2].device_latencies_s) == 4


# Each precision against fp32 on CUDA (tests/test_precision.py does it on the CPU): bf16, fp16 and TF32
# logits within PARITY_TOLERANCE of the fp32 model's on the same weights and batch.
PRECISION_CASES = [(n, 1) for n in REPRESENTATIONS] + [("table", 3), ("tt", 2), ("dhe", 2), ("hybrid", 3)]


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("precision", ["bf16", "fp16", "tf32"])
@pytest.mark.parametrize("name, per_bag", PRECISION_CASES)
def test_cuda_every_representation_in_every_precision_matches_fp32(run_config, precision, name, per_bag):
    from backends.cuda import CudaBackend
    from harness.workload.precision import PARITY_TOLERANCE, apply_precision

    model, batch, expected = case(name, per_bag)
    apply_precision(model, precision)
    adapter = CudaBackend(run_config("+backend=cuda").backend)
    prepare_on(adapter, model, batch, precision)
    out = adapter.to_host(adapter.serve(batch))
    assert out.dtype == torch.float32
    assert float((out - expected).abs().max() / expected.abs().max()) <= PARITY_TOLERANCE[precision]
