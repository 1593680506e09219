"""The CPU's large weights on huge pages (backends/huge_pages.py): values kept, moved once, and the kernel
really backs them with 2 MB pages where its mode allows; the CPU adapter's switch and record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backends import huge_pages


def _anon_huge_bytes() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1]) * 1024
    return 0


class Tables(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(1000, 16))
        self.register_buffer("packed", torch.randint(0, 255, (999, 24), dtype=torch.uint8))
        self.register_buffer("rows_bf16", torch.rand(500, 16).to(torch.bfloat16))
        self.register_buffer("small", torch.arange(10))


@pytest.mark.skipif(not huge_pages.available(), reason=f"no huge pages here: {huge_pages.thp_mode()}")
def test_values_dtypes_shapes_and_parameters_are_kept_and_nothing_moves_twice():
    module = Tables()
    before = {name: t.detach().clone() for name, t in module.state_dict().items()}
    weight, small_at = module.weight, module.small.data_ptr()
    moved = huge_pages.on_huge_pages(module, min_bytes=1024)
    assert moved == 1000 * 16 * 4 + 999 * 24 + 500 * 16 * 2  # `small` (80 bytes) stays
    assert module.small.data_ptr() == small_at and module.weight is weight and weight.requires_grad
    for name, tensor in module.state_dict().items():
        assert tensor.dtype == before[name].dtype and torch.equal(tensor, before[name]), name
        assert tensor.data_ptr() % huge_pages.HUGE_PAGE == 0 or name == "small"
    assert huge_pages.on_huge_pages(module, min_bytes=1024) == 0
    module.weight.data.add_(1)  # still ordinary, writable memory
    assert torch.equal(module.weight, before["weight"] + 1)


@pytest.mark.skipif(not huge_pages.available(), reason=f"no huge pages here: {huge_pages.thp_mode()}")
def test_the_kernel_backs_a_moved_table_with_huge_pages():
    table = torch.nn.Embedding(1 << 20, 16)  # 64 MB
    before = _anon_huge_bytes()
    assert huge_pages.on_huge_pages(table) == 64 << 20
    assert _anon_huge_bytes() - before >= 32 << 20  # at least half of it on 2 MB pages


@pytest.mark.parametrize("switch", [True, False])
def test_the_cpu_adapter_moves_large_weights_when_asked_and_records_it(run_config, switch):
    from backends.cpu import CpuBackend

    run = run_config("+backend=cpu", f"backend.huge_pages={str(switch).lower()}")
    adapter = CpuBackend(run.backend)
    adapter.prepare(torch.nn.Embedding(1 << 20, 16), None)
    params = adapter.run_params()
    expected = 64 << 20 if switch and huge_pages.available() else 0
    assert params["huge_page_bytes"] == expected
    assert params["transparent_huge_pages"] == huge_pages.thp_mode()


def test_the_default_keeps_the_run_keys_recorded_before_the_switch(run_config):
    """A CPU run's key without the new key equals the default's (recorded runs resume); turning huge pages
    off is another measurement, with a key of its own."""
    from harness.core.keys import run_key

    default = run_config("+backend=cpu").as_dict()
    legacy = run_config("+backend=cpu").as_dict()
    del legacy["backend"]["huge_pages"]
    off = run_config("+backend=cpu", "backend.huge_pages=false").as_dict()
    assert run_key(legacy) == run_key(default) != run_key(off)
