"""The torch DLRM against a hand computation on a tiny spec."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.core.spec import WorkloadSpec
from harness.workload.dlrm import DotInteraction, build_model
from harness.workload.representations.table import Config as TableConfig


def tiny_spec(layout: str = "fused", ids_per_lookup: int = 1) -> WorkloadSpec:
    return WorkloadSpec((5, 7, 3), embedding_dim=4, bottom_mlp=(13, 8, 4), top_mlp=(6, 1),
                        ids_per_lookup=ids_per_lookup, representation=TableConfig(layout=layout,
                                                                                  storage="fp32"))


def test_output_is_one_logit_per_sample():
    model = build_model(tiny_spec(), seed=0)
    out = model(torch.rand(9, 13), torch.randint(0, 3, (9, 3, 1)))
    assert out.shape == (9,) and out.dtype == torch.float32


def test_interaction_by_hand():
    dense = torch.tensor([[1.0, 0.0, 2.0]])
    sparse = torch.tensor([[[0.0, 1.0, 1.0], [3.0, -1.0, 0.0]]])
    # vectors v0 = dense, v1, v2; pairs (1,0), (2,0), (2,1): 0+0+2 = 2, 3+0+0 = 3, 0-1+0 = -1
    out = DotInteraction(num_vectors=3)(dense, sparse)
    assert out.tolist() == [[1.0, 0.0, 2.0, 2.0, 3.0, -1.0]]


def _numpy_forward(model, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """DLRM by hand: ReLU bottom MLP, gather-sum per table, lower-triangle dots, top MLP."""
    relu = lambda x: np.maximum(x, 0)  # noqa: E731
    linears = [m for m in model.dense_arch.mlp if isinstance(m, torch.nn.Linear)]
    x = dense
    for layer in linears:
        x = relu(x @ layer.weight.detach().numpy().T + layer.bias.detach().numpy())
    tables = model.sparse_arch
    vecs = [x]
    for t in range(ids.shape[1]):
        w = tables.table_weight(t).detach().numpy()
        vecs.append(w[ids[:, t, :]].sum(axis=1))
    feats = np.stack(vecs, axis=1)
    batch, num, _ = feats.shape
    pairs = [np.einsum("bd,bd->b", feats[:, i], feats[:, j]) for i in range(num) for j in range(i)]
    z = np.concatenate([x, np.stack(pairs, axis=1)], axis=1)
    top = [m for m in model.over_arch.mlp if isinstance(m, torch.nn.Linear)]
    for k, layer in enumerate(top):
        z = z @ layer.weight.detach().numpy().T + layer.bias.detach().numpy()
        if k < len(top) - 1:
            z = relu(z)
    return z[:, 0]


@pytest.mark.parametrize("layout", ["fused", "per_table"])
@pytest.mark.parametrize("ids_per_lookup", [1, 3])
def test_forward_equals_hand_computation(layout, ids_per_lookup):
    spec = tiny_spec(layout, ids_per_lookup)
    model = build_model(spec, seed=1).eval()
    gen = np.random.default_rng(0)
    dense = gen.random((6, 13), dtype=np.float32)
    ids = np.stack([gen.integers(0, r, (6, ids_per_lookup)) for r in spec.table_rows], axis=1)
    with torch.no_grad():
        got = model(torch.from_numpy(dense), torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(got, _numpy_forward(model, dense, ids), rtol=1e-5, atol=1e-6)


def test_top_mlp_input_width_is_367_for_kaggle():
    spec = WorkloadSpec.from_shape("kaggle", 0.0001, representation=TableConfig(layout="fused",
                                                                                storage="fp32"))
    model = build_model(spec)
    assert model.over_arch.mlp[0].in_features == 367


def test_same_seed_same_weights():
    a, b = build_model(tiny_spec(), seed=5), build_model(tiny_spec(), seed=5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_the_cpu_fast_paths_compute_the_hand_forward():
    """With a CPU's settings and a query large enough for each fast path (oneDNN linear + ReLU from 256 rows,
    embedding_bag from 4096 one-id bags): the same function as by hand."""
    from harness.workload.device import DeviceCapabilities, configure_for

    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    spec = tiny_spec()
    model = build_model(spec, seed=1).eval().requires_grad_(False)
    settings = configure_for(model, DeviceCapabilities(onednn_linear=True, cpu_kernels=True))
    assert (settings.linear_kernel, settings.one_id_lookup) == ("onednn", "embedding_bag")
    gen = np.random.default_rng(0)
    dense = gen.random((1500, 13), dtype=np.float32)
    ids = np.stack([gen.integers(0, r, (1500, 1)) for r in spec.table_rows], axis=1)
    with torch.profiler.profile() as prof:
        got = model(torch.from_numpy(dense), torch.from_numpy(ids)).numpy()
    ran = {event.key for event in prof.key_averages()}
    assert "mkldnn::_linear_pointwise" in ran
    assert any("embedding_bag" in name for name in ran), ran
    np.testing.assert_allclose(got, _numpy_forward(model, dense, ids), rtol=1e-4, atol=1e-5)
    small = model(torch.from_numpy(dense[:4]), torch.from_numpy(ids[:4]))  # aten below 256 rows: the same
    np.testing.assert_allclose(small.numpy(), got[:4], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_interaction_gathers_the_same_pairs_in_every_dtype_and_trains(dtype):
    gen = torch.Generator().manual_seed(0)
    dense, sparse = torch.randn(80, 4, generator=gen), torch.randn(80, 5, 4, generator=gen)
    from harness.workload.device import DeviceCapabilities, settings_for

    inter = DotInteraction(num_vectors=6)
    inter.configure(settings_for(DeviceCapabilities(cpu_kernels=True)))  # a host CPU's kernels
    vectors = torch.cat([dense.unsqueeze(1), sparse], 1).to(dtype)
    gram = torch.bmm(vectors, vectors.transpose(1, 2)).flatten(1)
    expected = torch.cat([dense.to(dtype), gram.index_select(1, inter.pair_index)], 1)
    with torch.profiler.profile() as prof:
        got = inter(dense.to(dtype), sparse.to(dtype))
    assert torch.equal(got, expected)
    # fp32 vectors from the tables with a reduced-precision dense vector (a bf16 path): cast on the way in
    assert torch.equal(inter(dense.to(dtype), sparse), expected)
    # 16-bit dtypes from 64 rows: the gather on an int16 view (fp32 keeps index_select)
    gathered = any(event.key == "aten::gather" for event in prof.key_averages())
    assert gathered == (dtype != torch.float32)
    # A device without torch's CPU kernels (the default settings) selects them as index_select, the same
    reference = DotInteraction(num_vectors=6)
    with torch.profiler.profile() as prof:
        assert torch.equal(reference(dense.to(dtype), sparse.to(dtype)), expected)
    assert not any(event.key == "aten::gather" for event in prof.key_averages())
    # Under autograd the pairs must stay differentiable (no integer view), in every dtype.
    leaf = dense.to(dtype).requires_grad_(True)
    inter(leaf, sparse.to(dtype)).sum().backward()
    reference = dense.to(dtype).requires_grad_(True)
    vecs = torch.cat([reference.unsqueeze(1), sparse.to(dtype)], 1)
    torch.cat([reference, torch.bmm(vecs, vecs.transpose(1, 2)).flatten(1).index_select(1, inter.pair_index)],
              1).sum().backward()
    assert leaf.grad is not None and torch.allclose(leaf.grad, reference.grad)


def test_a_model_configured_for_onednn_still_trains_even_with_its_first_layer_frozen():
    """oneDNN's fused linear has no derivative: wherever any MLP parameter needs a gradient, the MLPs
    run nn.Linear (a frozen first layer must not hide a trainable second one)."""
    from harness.workload.device import DeviceCapabilities, configure_for

    model = build_model(tiny_spec(), seed=0)
    configure_for(model, DeviceCapabilities(onednn_linear=True))
    model.dense_arch.mlp[0].requires_grad_(False)
    dense, ids = torch.rand(300, 13), torch.randint(0, 3, (300, 3, 1))
    model(dense, ids).sum().backward()
    second = model.dense_arch.mlp[2].weight
    assert second.grad is not None and second.grad.abs().sum() > 0
    assert model.dense_arch.mlp[0].weight.grad is None


def _bf16_mlps():
    from harness.workload.device import DeviceCapabilities, configure_for
    from harness.workload.dlrm import _mlp

    torch.manual_seed(0)
    cpu = _mlp((367, 512, 256, 1), relu_last=False).eval().to(torch.bfloat16)
    aten = _mlp((367, 512, 256, 1), relu_last=False).eval().to(torch.bfloat16)
    aten.load_state_dict(cpu.state_dict())
    configure_for(cpu, DeviceCapabilities(onednn_linear=True, cpu_kernels=True))  # aten's stays unconfigured
    return cpu, aten


@pytest.mark.parametrize("rows", [1, 8, 64, 300])  # fp32 copies: every layer / the 1-wide one / neither
def test_a_cpus_bf16_mlp_computes_what_a_bf16_gemm_computes(rows):
    from harness.workload import onednn

    cpu, aten = _bf16_mlps()
    x = torch.randn(rows, 367, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16)
    with torch.inference_mode():
        ulps = (cpu(x).view(torch.int16).int() - aten(x).view(torch.int16).int()).abs()
    assert ulps.max() <= 1  # the same products, fp32 sums in another order at most
    native = torch.bfloat16 in onednn.native_dtypes()
    copied = sorted(cpu._fp32_copies)  # which layers ran in fp32 on fp32 copies of their bf16 weights
    assert copied == [i for i, (layer, _) in enumerate(cpu.fused)
                      if onednn.bf16_in_fp32(rows, layer.out_features, native)]
    assert (copied == [0, 1, 2]) == (rows < onednn.BF16_MIN_ROWS or not native)


def test_the_fp32_copies_follow_the_weights():
    cpu, aten = _bf16_mlps()
    x = torch.randn(2, 367).to(torch.bfloat16)
    with torch.inference_mode():
        before = cpu(x)
    with torch.no_grad():
        for model in (cpu, aten):
            model[0].weight.mul_(2)  # in place: the version moves
            model[2].bias.add_(1)
    with torch.inference_mode():
        after = cpu(x)
        assert not torch.equal(before, after) and (after.float() - aten(x).float()).abs().max() < 0.05


def test_without_native_bf16_every_bf16_layer_runs_on_fp32_copies(monkeypatch):
    cpu, aten = _bf16_mlps()
    monkeypatch.setattr(cpu, "fused_dtypes", (torch.float32,))  # an AVX2 CPU: oneDNN's bf16 is emulated
    x = torch.randn(300, 367).to(torch.bfloat16)
    with torch.inference_mode():
        assert (cpu(x).view(torch.int16).int() - aten(x).view(torch.int16).int()).abs().max() <= 1
    assert sorted(cpu._fp32_copies) == [0, 1, 2]
