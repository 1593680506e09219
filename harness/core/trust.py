"""How far a recorded figure can be trusted, in the words every layer shares: the `unreliable` tag a run
carries (which query sizes broke a stability rule, and why), and the advice a user gets with it.

The pipeline writes the tag (harness/pipeline/stability.py judges), the analysis and serving read it back;
runs recorded before reliability was measured have neither the tag nor the `reliable` metric, and are
"reliability unknown", never taken as reliable or as unreliable.

>>> text = describe({1024: ["other processes used 1.70 cores"], 64: ["robust CV 0.31 > 0.25", "x"]})
>>> text
'q=64: robust CV 0.31 > 0.25; x | q=1024: other processes used 1.70 cores'
>>> parse(text)
{64: 'robust CV 0.31 > 0.25; x', 1024: 'other processes used 1.70 cores'}
"""

from __future__ import annotations

import re
from pathlib import Path

TAG = "unreliable"  # the run's tag: describe() of its unreliable sizes; absent when every size passed
NOT_MEASURABLE_TAG = "interference_not_measurable"  # what the machine or device does not report
_SIZES, _REASONS = " | ", "; "
MAX_TAG = 5000


def describe(reasons: dict[int, list[str]]) -> str:
    """One line naming each unreliable query size and its reasons, smallest size first."""
    text = _SIZES.join(f"q={q}: {_REASONS.join(why)}" for q, why in sorted(reasons.items()))
    return text if len(text) <= MAX_TAG else text[: MAX_TAG - 3] + "..."


def parse(text: str | None) -> dict[int, str]:
    """describe()'s line back: query size -> its reasons ({} for an absent or empty tag)."""
    out: dict[int, str] = {}
    for part in (text or "").split(_SIZES):
        head, _, why = part.partition(": ")
        if head.startswith("q=") and head[2:].isdigit():
            out[int(head[2:])] = why
    return out


def advice(reasons: dict[int, list[str]], results_dir: str = "results") -> str:
    """What to do about these reasons, in one clause per kind of cause (`results_dir`: where the run's
    peak cache is)."""
    text = " ".join(r for why in reasons.values() for r in why)
    steps = []
    if re.search(r"other processes used [0-9.]+ cores", text):
        steps.append(busy_remedy())
    if "other processes used the device" in text:  # GPU contention: host threads are beside the point
        steps.append("stop the other processes on the device (nvidia-smi lists them), or measure on one "
                     "no one else uses")
    if "stole" in text:
        steps.append("the hypervisor gave this VM's cores to others: prefer a dedicated instance")
    if "robust CV" in text or "slower than" in text:
        steps.append("on a laptop or VM, keep it on mains power and idle; pin the run with taskset")
    if "peak" in text:
        steps.append(f"remove {Path(results_dir) / 'device_peaks.json'} to measure the device's peaks again")
    steps.append("then measure again with force=true")
    return "; ".join(steps)


def busy_remedy() -> str:
    """What to do when other processes use the run's cores."""
    return f"close other programs, or {pin_remedy()} (python -m harness.doctor shows what is running)"


def pin_remedy(threads: int = 1) -> str:
    """How to share a machine: pin the run to cores nothing else uses (harness/core/load.py
    `interference` then reads only those, and their SMT siblings)."""
    cores = "0" if threads == 1 else f"0-{threads - 1}"
    return (f"pin the run to cores nothing else uses (e.g. taskset -c {cores} python -m harness "
            f"backend.num_threads={threads}; parallel jobs each on their own cores, as a Slurm cpuset does)")


def unreliable_line(reasons: dict[int, list[str]], sizes: int, results_dir: str = "results") -> str:
    """The summary's one line about flagged sizes (empty when there are none)."""
    if not reasons:
        return ""
    shown = [f"q={q}: {why[0]}" + (f" (+{len(why) - 1} more)" if len(why) > 1 else "")
             for q, why in sorted(reasons.items())]
    return (
        f"unreliable: {len(reasons)} of {sizes} query sizes still broke a stability rule, measured again "
        f"where that could help ({'; '.join(shown)}); {advice(reasons, results_dir)}"
    )
