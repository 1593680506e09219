"""The bf16 dot interaction in one C pass (harness/workload/interaction.py): the values it promises, where
it runs and where torch's path takes over."""

from __future__ import annotations

import pytest
import torch

from harness.workload import interaction
from harness.workload.device import DeviceCapabilities, configure_for
from harness.workload.dlrm import DotInteraction

runs_here = pytest.mark.skipif(not interaction.available()[0], reason=interaction.available()[1])


def _ascending_k(dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
    """What the kernel promises: the vectors rounded to bf16, each pair's products (exact in float32)
    summed in float32 in ascending k, rounded to bf16 once; the dense vector first."""
    vectors = torch.cat([dense.unsqueeze(1), sparse.to(torch.bfloat16)], 1).float()
    rows, cols = torch.tril_indices(vectors.shape[1], vectors.shape[1], offset=-1)
    acc = torch.zeros(vectors.shape[0], rows.numel())
    for k in range(vectors.shape[2]):
        acc = acc + vectors[:, rows, k] * vectors[:, cols, k]
    return torch.cat([dense, acc.to(torch.bfloat16)], 1)


def _inputs(batch: int, vectors: int, width: int, sparse_dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(batch, width, generator=gen).to(torch.bfloat16)
    sparse = torch.randn(batch, vectors - 1, width, generator=gen) * 3
    return dense, sparse.to(sparse_dtype)


@runs_here
@pytest.mark.parametrize("vectors, width", [(27, 16), (2, 16), (16, 16), (17, 32), (33, 16), (40, 64),
                                            (interaction.MAX_VECTORS, interaction.MAX_WIDTH)])
@pytest.mark.parametrize("sparse_dtype", [torch.float32, torch.bfloat16])
def test_the_kernel_equals_float32_sums_in_ascending_k_bit_for_bit(vectors, width, sparse_dtype):
    # 16, 17, 33: one column block full, one more begun, three blocks (the transposed gathers' edges);
    # 70 samples: more than the kernel's OpenMP threshold (64)
    dense, sparse = _inputs(70, vectors, width, sparse_dtype, seed=vectors)
    out = interaction.dot_interaction(dense, sparse)
    assert out is not None and out.dtype == torch.bfloat16
    assert out.shape == (70, width + vectors * (vectors - 1) // 2)
    assert torch.equal(out, _ascending_k(dense, sparse))


@runs_here
def test_strided_vectors_are_read_where_they_are():
    # DHE's lookup returns [T, B, D] transposed to [B, T, D]: samples and vectors strided, D contiguous
    dense, sparse = _inputs(70, 27, 16, torch.float32, seed=3)
    transposed = sparse.transpose(0, 1).contiguous().transpose(0, 1)
    assert not transposed.is_contiguous() and interaction.fits(dense, transposed)
    assert torch.equal(interaction.dot_interaction(dense, transposed), _ascending_k(dense, sparse))


@runs_here
def test_special_values_round_as_torch_rounds_them():
    dense, sparse = _inputs(4, 27, 16, torch.float32)
    sparse[0, 0, :4] = torch.tensor([float("nan"), float("inf"), -0.0, 1e-39])  # 1e-39: a float32 subnormal
    sparse[1, 3, 5] = 3.0e38  # rounds up to bf16's largest finite value times ~1: products overflow to inf
    sparse[2, 7] = 1.0 + 2.0 ** -8  # a tie: to even (1.0)
    sparse[3, 2, :] = 1.0 + 3 * 2.0 ** -9  # not a tie: up
    out = interaction.dot_interaction(dense, sparse)
    expected = _ascending_k(dense, sparse)
    assert torch.equal(out.isnan(), expected.isnan()) and out.isnan().any()  # a NaN's bits: see the module
    assert torch.equal(out.nan_to_num(), expected.nan_to_num())


@runs_here
def test_the_kernel_agrees_with_torchs_batched_gemm_to_one_bf16_rounding():
    # torch's bf16 GEMM sums in its own order: one unit in the last place apart at most
    dense, sparse = _inputs(300, 27, 16, torch.float32, seed=5)
    reference = DotInteraction(27)
    reference.pair_select = "int16_gather"
    with torch.inference_mode():
        torch_out = reference(dense, sparse)
    ulps = (interaction.dot_interaction(dense, sparse).view(torch.int16).int()
            - torch_out.view(torch.int16).int()).abs()
    assert ulps.max() <= 1 and (ulps == 0).float().mean() > 0.95


def test_inputs_it_does_not_take_go_back_to_torch():
    dense, sparse = _inputs(3, 5, 16, torch.float32)
    assert interaction.fits(dense, sparse)
    assert not interaction.fits(dense.float(), sparse)  # an fp32 path: torch's
    assert not interaction.fits(dense.half(), sparse)
    assert not interaction.fits(dense[:, :8], sparse[..., :8])  # D not a multiple of 16
    assert not interaction.fits(dense[:2], sparse)  # batches differ
    assert not interaction.fits(torch.cat([dense, dense], 1), sparse)  # widths differ
    assert not interaction.fits(dense, sparse[:, 0])  # not [B, F - 1, D]
    assert not interaction.fits(dense, sparse.transpose(1, 2).contiguous().transpose(1, 2))  # D strided
    assert not interaction.fits(dense.requires_grad_(), sparse)  # autograd: torch's
    wide = _inputs(2, interaction.MAX_VECTORS + 1, 16, torch.float32)
    assert not interaction.fits(*wide) and interaction.dot_interaction(*wide) is None


def _configured(caps: DeviceCapabilities) -> DotInteraction:
    module = DotInteraction(27)
    configure_for(module, caps)
    return module


@runs_here
def test_a_cpu_runs_its_bf16_interaction_as_the_kernel(monkeypatch):
    module = _configured(DeviceCapabilities(cpu_kernels=True))
    assert module.kernel == "c_kernel" and module.kernel_choices() == {"bf16_interaction": "C kernel"}
    calls = []
    real = interaction.dot_interaction
    monkeypatch.setattr(interaction, "dot_interaction", lambda *a: calls.append(a[0].dtype) or real(*a))
    dense, sparse = _inputs(8, 27, 16, torch.float32)
    with torch.inference_mode():
        assert torch.equal(module(dense, sparse), _ascending_k(dense, sparse))
        module(dense.float(), sparse)  # fp32: torch's path, the kernel never asked
    assert calls == [torch.bfloat16]
    assert _configured(DeviceCapabilities()).kernel_choices() == {}  # the default device: torch's


def test_without_avx512_torch_computes_it_and_the_run_records_why(monkeypatch):
    if interaction._load()[0] is None:
        pytest.skip("no C compiler")
    monkeypatch.setattr(interaction, "_supported", {interaction._load()[0]: False})
    module = _configured(DeviceCapabilities(cpu_kernels=True))
    why = "torch (the C dot interaction needs AVX-512 (F, BW, VL))"
    assert module.kernel_choices() == {"bf16_interaction": why}
    dense, sparse = _inputs(8, 27, 16, torch.float32)
    torch_path = _configured(DeviceCapabilities())
    with torch.inference_mode():
        assert torch.equal(module(dense, sparse), torch_path(dense, sparse))


@runs_here
def test_built_without_openmp_it_keeps_to_the_batches_one_thread_wins(monkeypatch):
    monkeypatch.setattr(interaction, "_threaded", {interaction._load()[0]: False})
    small = _inputs(interaction.SERIAL_MAX_BATCH, 27, 16, torch.float32)
    assert torch.equal(interaction.dot_interaction(*small), _ascending_k(*small))
    large = _inputs(interaction.SERIAL_MAX_BATCH + 1, 27, 16, torch.float32)
    assert interaction.dot_interaction(*large) is None
