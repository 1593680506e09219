"""Cost and energy per correct prediction (issue 25 item 5): the price table, the simulator's joules, the
serving study's $ per million correct predictions, and the mapping's cheapest path."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from harness.analysis import mapping as mp
from harness.analysis.output import write_analysis
from harness.core import prices
from harness.core.errors import ConfigError
from harness.serving import policies as pol
from harness.serving.profiles import PathProfile
from harness.serving.simulator import Batching, simulate

from .test_analysis import _config as analysis_config
from .test_analysis import record, table_of
from .test_serving import _study_config

CPU = PathProfile("table@cpu", "AMD EPYC", 0.75, (1, 64, 1024), (0.5, 2.0, 20.0), cores=2.0,
                  joules_per_sample=(1e-3, 2e-4, 1e-4))
GPU = PathProfile("dhe@cuda", "NVIDIA H200", 0.80, (1, 64, 1024), (1.0, 1.5, 6.0),
                  joules_per_sample=(5e-3, 1e-4, 2e-5))


def test_the_shipped_price_table_says_where_every_price_comes_from():
    table = prices.load(None)
    assert table and all(p.source and p.date and p.usd_per_hour > 0 for p in table)
    assert prices.rate(table, "NVIDIA H200", "cuda", None) == pytest.approx(5.408)
    cpu = prices.entry_for(table, "AMD EPYC", "cpu")
    assert cpu is not None and cpu.per == "core"
    assert prices.rate(table, "AMD EPYC", "cpu", 4) == pytest.approx(4 * cpu.usd_per_hour)
    assert prices.rate(table, "AMD EPYC", "cpu", None) is None  # per core, cores unknown: no price
    assert prices.rate(table, "Graphcore GC200", "ipu", None) is None


@pytest.mark.parametrize("entry, complaint", [
    ("- {device: H200, usd_per_hour: 5.4, per: device, date: '2025'}", "prices[0]: missing source"),
    ("- {usd_per_hour: 5.4, per: device, source: x, date: '2025'}", "prices[0]: needs `device`"),
    ("- {device: H200, usd_per_hour: -1, per: device, source: x, date: '2025'}", "positive number"),
    ("- {device: H200, usd_per_hour: 1, per: rack, source: x, date: '2025'}", "per must be one of"),
    ("- {device: H200, usd_per_hour: true, per: device, source: x, date: '2025'}", "positive number"),
])
def test_a_bad_price_entry_is_refused_naming_the_file_and_the_entry(tmp_path, entry, complaint):
    file = tmp_path / "prices.yaml"
    file.write_text("prices:\n  " + entry + "\n")
    with pytest.raises(ConfigError, match="prices_file") as err:
        prices.load(file)
    assert str(file) in str(err.value) and complaint in str(err.value)


def test_a_price_file_that_is_not_a_table_is_refused_naming_it(tmp_path):
    file = tmp_path / "prices.yaml"
    file.write_text("- {device: H200, usd_per_hour: 5.4}\n")  # a list, not `prices:`
    with pytest.raises(ConfigError, match="a list under `prices:` is needed"):
        prices.load(file)


def call_energy(profile: PathProfile, samples: int) -> float:
    """A call's energy as measured: energy per sample x size at the measured sizes, straight lines between
    (a call's energy, not its per-sample energy, is what grows with size), per-sample energy held outside."""
    sizes, jps = profile.sizes, profile.joules_per_sample
    if samples < sizes[0] or samples > sizes[-1]:
        return (jps[0] if samples < sizes[0] else jps[-1]) * samples
    return float(np.interp(samples, sizes, [j * s for j, s in zip(jps, sizes)]))


def test_a_calls_energy_grows_with_its_size_between_the_measured_sizes():
    table = GPU.joules_table(4096)
    assert table is not None
    assert all(a <= b for a, b in zip(table[1:], table[2:]))  # never less energy for a larger call
    assert table[64] == pytest.approx(64 * 1e-4) and table[32] < table[64]
    assert replace(GPU, joules_per_sample=(1e-3, math.nan, 1e-4)).joules_table(10) is None


@pytest.mark.parametrize("batching", [None, Batching(4096)])
def test_the_simulator_adds_each_calls_energy_and_counts_correct_predictions_per_joule(batching):
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 700, 400)
    arrivals = np.cumsum(rng.exponential(0.01, 400))
    result = simulate(pol.Static(GPU), [GPU], arrivals, sizes, 50.0, batching)
    # Every call's energy, from the measured sizes' (call_energy); batched calls are larger, and cheaper per
    # sample on this profile.
    expected = sum(call_energy(GPU, s) for _, s in result.calls)
    assert result.joules == pytest.approx(expected)
    assert sum(s for _, s in result.calls) == sizes.sum()
    correct = result.correct_per_s * result.duration_s
    assert result.correct_per_joule == pytest.approx(correct / expected)
    unmeasured = replace(GPU, joules_per_sample=())
    blind = simulate(pol.Static(unmeasured), [unmeasured], arrivals, sizes, 50.0, batching)
    assert math.isnan(blind.joules) and math.isnan(blind.correct_per_joule)  # unknown, never zero


def test_the_serving_study_prices_the_devices_each_policy_kept_busy():
    from harness.serving.study import run_study

    study = run_study(_study_config(target_ms=100), [CPU, GPU])  # every static path meets it
    rows = study.table.set_index("policy")
    cpu_rate = prices.rate(prices.load(None), "AMD EPYC", "cpu", 2.0)
    assert rows.loc["static:table@cpu", "usd_per_hour"] == pytest.approx(cpu_rate)
    assert rows.loc["static:dhe@cuda", "usd_per_hour"] == pytest.approx(5.408)
    mprec = rows.loc["mprec"]
    assert mprec["usd_per_hour"] == pytest.approx(5.408 + cpu_rate)  # it used both devices
    assert mprec["usd_per_million_correct"] == pytest.approx(
        mprec["usd_per_hour"] / 3600 / mprec["correct_per_s"] * 1e6)
    assert rows["correct_per_joule"].gt(0).all()
    # A device without a price: no figure, and the row names it.
    ipu = replace(GPU, path="dhe@ipu", device="Graphcore GC200")
    row = run_study(_study_config(target_ms=100), [CPU, ipu]).table.set_index("policy").loc["static:dhe@ipu"]
    assert math.isnan(row["usd_per_million_correct"]) and row["unpriced"] == "Graphcore GC200"


def test_the_cheapest_path_that_meets_the_target_is_not_the_fastest():
    # A GPU that serves 4x the samples at 100x the CPU's hourly price: fastest is the GPU, cheapest the CPU.
    runs = table_of(record("table@cpu", sizes={64: (2.0, 30_000)}, accuracy=0.78),
                    record("dhe@gpu", sizes={64: (1.5, 120_000)}, accuracy=0.78))
    runs["usd_per_hour"] = runs["backend"].map({"cpu": 0.05, "gpu": 5.0})
    settings = mp.MappingSettings((10.0,), "p99", "correct_throughput")
    assert mp.mapping(runs, settings).iloc[0]["choice"] == "dhe@gpu"
    cheapest = mp.mapping(runs, replace(settings, rank_by="correct_per_dollar")).iloc[0]
    assert cheapest["choice"] == "table@cpu"
    assert cheapest["score"] == pytest.approx(0.78 * 30_000 / (0.05 / 3600))  # correct predictions per $
    assert mp.score_text(cheapest["score"], "correct_per_dollar") == "$0.000594/M correct"


def test_the_analysis_writes_the_cheapest_mapping_beside_the_fastest(tmp_path):
    priced_file = tmp_path / "prices.yaml"
    priced_file.write_text("prices:\n  - {device: CPU, usd_per_hour: 0.05, per: device, "
                           "source: t, date: x}\n")
    records = [record("table@cpu", sizes={64: (2.0, 30_000)}), record("dhe@gpu", sizes={64: (1.5, 120_000)})]
    config = replace(analysis_config(tmp_path), prices_file=str(priced_file))
    write_analysis(records, config, tmp_path, {}, 64e9)
    cheapest = pd.read_csv(tmp_path / "mapping_cheapest.csv")
    # Only the CPU has a price: it is the cheapest wherever it meets the target; the GPU is unrated.
    assert set(cheapest["choice"].dropna()) == {"table@cpu"}
    text = (tmp_path / "mapping.md").read_text()
    assert "# The cheapest path that meets the target" in text and "/M correct" in text
    assert "The cheapest path that meets the target" in (tmp_path / "report.html").read_text()
