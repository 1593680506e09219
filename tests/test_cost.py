"""Analytic cost and the dry run: exact numbers for the full Kaggle table path, without allocating it."""

from __future__ import annotations

import json
import subprocess
import sys

from harness.core.spec import WorkloadSpec
from harness.workload.cost import path_cost
from harness.workload.representations.table import Config as TableConfig

from .conftest import harness_env

KAGGLE_ROWS = 33_762_577
# Hand count of the Kaggle MLPs (weights + biases): bottom 13-512-256-64-16, top 367-512-256-1.
BOTTOM = 13 * 512 + 512 + 512 * 256 + 256 + 256 * 64 + 64 + 64 * 16 + 16
TOP = 367 * 512 + 512 + 512 * 256 + 256 + 256 * 1 + 1


def kaggle(scale=1.0, **kw):
    return WorkloadSpec.from_shape("kaggle", scale, representation=TableConfig(layout="fused",
                                                                               storage="fp32"), **kw)


def test_full_kaggle_table_cost_by_hand():
    cost = path_cost(kaggle())
    assert cost.embedding.param_bytes == KAGGLE_ROWS * 16 * 4 == 2_160_804_928
    assert cost.mlp_param_bytes == (BOTTOM + TOP) * 4
    assert cost.param_bytes == 2_160_804_928 + (BOTTOM + TOP) * 4
    assert cost.embedding.flops_per_sample == 0  # one id per bag: a gather, no adds
    dense_flops = 2 * (13 * 512 + 512 * 256 + 256 * 64 + 64 * 16) + 2 * 27 * 27 * 16 \
        + 2 * (367 * 512 + 512 * 256 + 256)
    assert cost.flops_per_sample == dense_flops
    assert cost.bytes_read_per_sample == 26 * (16 * 4 + 8) + 13 * 4


def test_pooling_costs_adds_and_reads_per_id():
    cost = path_cost(kaggle(0.01, ids_per_lookup=4)).embedding
    assert cost.flops_per_sample == 26 * 3 * 16
    assert cost.bytes_read_per_sample == 26 * 4 * (16 * 4 + 8)


def test_scaling_rounds_up_and_keeps_two_rows():
    spec = kaggle(0.001)
    assert spec.table_rows[8] == 2  # 3 rows x 0.001
    assert spec.table_rows[2] == 10132  # ceil(10131227 x 0.001)


def test_fits_accounts_for_headroom_and_query_size():
    cost = path_cost(kaggle())
    need = cost.memory_needed(4096)
    assert cost.fits(int(need / 0.9) + 1, 4096, headroom=0.1)
    assert not cost.fits(need, 4096, headroom=0.1)
    assert cost.memory_needed(4096) > cost.memory_needed(1) > cost.param_bytes


def _dry_run(*overrides: str):
    # VmHWM is this process's own peak resident memory (ru_maxrss would carry over the parent's peak
    # across fork and exec).
    code = (
        "import runpy, sys; sys.argv = ['harness', *sys.argv[1:]];\n"
        "try:\n    runpy.run_module('harness', run_name='__main__')\n"
        "finally:\n    hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "    print('MAXRSS_KB', hwm, 'TORCH', 'torch' in sys.modules, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, "dry_run=true", "hydra.run.dir=.", *overrides],
                          capture_output=True, text=True, env=harness_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    rss_kb = int(proc.stderr.split("MAXRSS_KB")[1].split()[0])
    torch_loaded = proc.stderr.split("TORCH")[1].split()[0] == "True"
    return json.loads(proc.stdout), rss_kb, torch_loaded


def test_dry_run_plans_the_full_kaggle_table_without_allocating_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report, rss_kb, torch_loaded = _dry_run("+backend=cpu", "dataset.scale=1.0")
    assert report["embedding_param_bytes"] == 2_160_804_928
    assert report["param_bytes"] == 2_160_804_928 + (BOTTOM + TOP) * 4
    assert report["flops_per_sample"] > 0 and report["bytes_read_per_sample"] == 26 * 72 + 52
    assert report["device_capacity_bytes"] > 0 and report["capacity_source"] == "device"
    assert isinstance(report["fits_device"], bool)
    # The 2.16 GB table was never built: the whole process stayed far below its size, and torch was
    # not even imported.
    assert rss_kb * 1024 < 300 * 2**20
    assert not torch_loaded


def test_dry_run_judges_a_device_too_small(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report, _, _ = _dry_run("+backend=cpu", "dataset.scale=1.0", "backend.memory_bytes=1000000000")
    assert report["device_capacity_bytes"] == 1_000_000_000 and report["capacity_source"] == "config"
    assert report["fits_device"] is False
    report, _, _ = _dry_run("+backend=cpu", "dataset.scale=0.01", "backend.memory_bytes=1000000000")
    assert report["fits_device"] is True
