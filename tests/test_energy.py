"""Energy over a timed phase: RAPL counters (a fake powercap tree), a device counter, and what is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.core.energy import EnergyMeter, RaplZones, wrapped_delta


def zone(root: Path, name: str, label: str, uj: int, range_uj: int = 1_000_000_000) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "name").write_text(label + "\n")
    (folder / "energy_uj").write_text(f"{uj}\n")
    (folder / "max_energy_range_uj").write_text(f"{range_uj}\n")
    return folder


def powercap(tmp_path: Path) -> dict[str, Path]:
    """Two packages, each with a core subzone (inside its package: not added again) and a DRAM zone."""
    root = tmp_path / "powercap"
    return {"pkg0": zone(root, "intel-rapl:0", "package-0", 999_000_000),  # about to wrap
            "core0": zone(root, "intel-rapl:0:0", "core", 5_000_000),
            "dram0": zone(root, "intel-rapl:0:1", "dram", 1_000_000),
            "pkg1": zone(root, "intel-rapl:1", "package-1", 2_000_000),
            "mmio": zone(root, "intel-rapl-mmio:0", "package-0", 7_000_000),  # package-0 again, via MMIO
            "psys": zone(root, "intel-rapl:2", "psys", 3_000_000),  # a laptop's platform: holds the packages
            "root": root}


def advance(folder: Path, uj: int) -> None:
    (folder / "energy_uj").write_text(f"{uj}\n")


def test_packages_and_dram_are_summed_across_a_wrap_and_subzones_are_not_counted_twice(tmp_path):
    tree = powercap(tmp_path)
    meter = EnergyMeter(RaplZones(tree["root"]), None)
    assert meter.available and meter.describe() == "RAPL package-0 + RAPL dram + RAPL package-1"
    meter.start()
    advance(tree["pkg0"], 4_000_000)  # wrapped: 1,000,000 to the range's end, then 4,000,000
    advance(tree["core0"], 9_000_000)  # part of package-0's figure already
    advance(tree["dram0"], 1_500_000)
    advance(tree["pkg1"], 5_000_000)
    advance(tree["mmio"], 12_000_000)  # not added: the same package
    advance(tree["psys"], 30_000_000)  # not added: contains the packages
    assert meter.stop() == pytest.approx(5.0 + 0.5 + 3.0)
    assert wrapped_delta(999_000_000, 4_000_000, 1_000_000_000) == 5_000_000


def test_a_device_counter_adds_to_the_host_and_none_readable_says_why(tmp_path):
    device = iter([100.0, 100.0, 112.5])  # joules: the meter's own look, start, stop
    meter = EnergyMeter(RaplZones(tmp_path / "none"), lambda: next(device))
    assert meter.describe() == "the device's counter (NVML total energy)"
    meter.start()
    assert meter.stop() == pytest.approx(12.5)
    nothing = EnergyMeter(RaplZones(tmp_path / "none"), lambda: None)
    assert not nothing.available and nothing.describe().startswith("not measurable here: no RAPL counters")
    nothing.start()
    assert nothing.stop() is None  # never a zero


def test_a_counter_this_user_cannot_read_is_not_measurable(tmp_path):
    tree = powercap(tmp_path)
    (tree["pkg1"] / "energy_uj").unlink()  # as a non-root user sees it since CVE-2020-8694
    meter = EnergyMeter(RaplZones(tree["root"]), None)
    assert not meter.available and "not readable by this user" in meter.describe()


def test_the_ladder_records_joules_per_sample_over_the_timed_phase(tmp_path):
    from harness.pipeline.timing import LadderSettings, run_ladder

    from .test_measure import AsyncAdapter

    tree = powercap(tmp_path)
    meter = EnergyMeter(RaplZones(tree["root"]), None)
    started = meter.start

    def start():  # the phase spends 8 J on package-1 while it runs
        started()
        advance(tree["pkg1"], 10_000_000)

    meter.start = start  # type: ignore[method-assign]
    settings = LadderSettings(warmup_iters=1, warmup_s=0, min_iters=5, min_time_s=0.01, max_iters=50,
                              max_time_s=1)
    [r] = run_ladder(AsyncAdapter(), [8], lambda q: [None], settings, energy=meter)
    assert r.extra["joules_per_sample"] == pytest.approx(8.0 / (len(r.latencies_s) * 8))
