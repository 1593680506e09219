"""Path-selection policies: pure functions of (query size, target, per-device queue wait, profiles).

- static(path): every query to one path (the baseline any single deployment is).
- size_threshold(small, large, threshold): DeepRecSys: queries below `threshold` samples to one path,
  from `threshold` on to another (the crossover: the large path is as fast there).
- mprec: the highest-accuracy path whose predicted completion (its device's queue wait + its profiled
  service time at this size) meets the target, equally accurate ones (one representation on several
  devices) told apart by that completion; if none meets it, the one that completes first. With
  `slack` < 1 a path must finish within slack x target: headroom that keeps a device from being filled
  to the brim with slow, accurate work at high load (slack 1 is the rule as stated).
- mprec_split: as mprec, but a query no single path can finish in time is split across devices (each
  device's fastest path, parts sized by speed) when that finishes sooner.

A choice is a list of (profile, part size): one entry, or one per device for a split.

A policy is declared once, here: a class with a `kind` (its name in conf/serving.yaml's `policies`) and
`instances(profiles, sizes, cfg)` (the policies of that kind a study simulates), listed in `REGISTRY`.
The study and its headline find policies by kind, never by the text of their names.

>>> from harness.serving.profiles import PathProfile
>>> fast = PathProfile("table@cpu", "cpu", 0.75, (1, 100), (1.0, 10.0))
>>> good = PathProfile("dhe@gpu", "gpu", 0.80, (1, 100), (2.0, 4.0))
>>> [p.path for p, _ in MPRec([fast, good]).choose(50, 5.0, {"cpu": 0.0, "gpu": 0.0})]
['dhe@gpu']
>>> [p.path for p, _ in MPRec([fast, good]).choose(50, 5.0, {"cpu": 0.0, "gpu": 9.0})]   # gpu queue too long
['table@cpu']
>>> gpu = PathProfile("table@gpu", "gpu", 0.75, (64, 4096), (0.8, 2.0))   # as accurate as table@cpu
>>> cpu = PathProfile("table@cpu", "cpu", 0.75, (64, 4096), (0.5, 40.0))
>>> [p.path for p, _ in MPRec([cpu, gpu]).choose(4096, 50.0, {})]   # both make it: the sooner done
['table@gpu']
"""

from __future__ import annotations

import math
from typing import Any, Protocol, Sequence

import numpy as np

from harness.serving.profiles import PathProfile

Choice = list[tuple[PathProfile, int]]


class Policy(Protocol):
    """What the simulator and live serving ask of a policy: a name, and for each query where it goes.

    `wait_ms` is each device's queued work (ms) when the query arrives; the choice is one (path, size)
    entry, or one per device when the query is split. A policy never reads a clock or a device.
    """

    name: str
    kind: str  # static, size_threshold, mprec, mprec_split: what the study and its headline match on

    def choose(self, size: int, target_ms: float, wait_ms: dict[str, float]) -> Choice: ...


def _accuracy(p: PathProfile) -> float:
    return -math.inf if p.accuracy is None else p.accuracy


class Static:
    kind = "static"

    def __init__(self, path: PathProfile) -> None:
        self.path = path
        self.name = f"static:{path.name}"

    @classmethod
    def instances(cls, profiles: Sequence[PathProfile], sizes: np.ndarray, cfg: Any) -> list:
        return [cls(p) for p in profiles]

    def choose(self, size: int, target_ms: float, wait_ms: dict[str, float]) -> Choice:
        return [(self.path, size)]


class SizeThreshold:
    kind = "size_threshold"

    def __init__(self, small: PathProfile, large: PathProfile, threshold: int | None) -> None:
        """`threshold`: the first size `large` serves (None: it serves every size, being fastest at all)."""
        self.small, self.large, self.threshold = small, large, threshold
        self.name = (f"threshold:{small.name}|{threshold}|{large.name}" if threshold is not None
                     else f"threshold:{large.name} (fastest at every size)")

    @classmethod
    def instances(cls, profiles: Sequence[PathProfile], sizes: np.ndarray, cfg: Any) -> list:
        """DeepRecSys' rule, chosen from the profiles: large queries to the path fastest at the largest
        size, small ones to the path fastest at size 1 on another device (or another path); the threshold
        is the crossover: the smallest size from which the large path is at least as fast at every size (it
        goes to the large path). Where the large path is fastest at every size the rule is that one path,
        and its name says so."""
        if len(profiles) < 2:
            return []
        largest = int(sizes.max())
        large = min(profiles, key=lambda p: (p.service_ms(largest), p.name))
        others = [p for p in profiles if p.device != large.device] or [p for p in profiles if p is not large]
        small = min(others, key=lambda p: (p.service_ms(1), p.name))
        step = max(1, largest // 512)
        grid = sorted({*range(1, largest + 1, step), largest})  # the largest size included
        crossover = largest
        for q in reversed(grid):  # down from the largest size, while the large path is as fast
            if large.service_ms(q) > small.service_ms(q):
                break
            crossover = q
        return [cls(small, large, None if crossover == 1 else crossover)]

    def choose(self, size: int, target_ms: float, wait_ms: dict[str, float]) -> Choice:
        small = self.threshold is not None and size < self.threshold
        return [(self.small if small else self.large, size)]


class MPRec:
    kind = "mprec"

    def __init__(self, paths: list[PathProfile], slack: float = 1.0) -> None:  # 1: the rule as stated
        self.paths = sorted(paths, key=lambda p: (-_accuracy(p), p.name))  # the order of preference
        self.slack = slack
        self.name = self.kind if slack == 1.0 else f"{self.kind}(slack={slack:g})"

    @classmethod
    def instances(cls, profiles: Sequence[PathProfile], sizes: np.ndarray, cfg: Any) -> list:
        return [cls(list(profiles), slack) for slack in cfg.mprec_slack]

    def choose(self, size: int, target_ms: float, wait_ms: dict[str, float]) -> Choice:
        # Completion at this query's size, queue wait included: a tie in accuracy (one representation on
        # two devices) goes to the device that finishes this query first, not the one fast at some
        # other size. One pass (the simulator's hot loop): `self.paths` is in accuracy order, so the
        # first path in time is the most accurate; later ones of equal accuracy may finish sooner.
        budget = target_ms * self.slack
        chosen, chosen_done, fallback, fallback_done = None, math.inf, self.paths[0], math.inf
        for p in self.paths:
            done = wait_ms.get(p.device, 0.0) + p.service_ms(size)
            if chosen is not None and _accuracy(p) < _accuracy(chosen):
                break  # less accurate than a path in time: never preferred
            if done <= budget and done < chosen_done:
                chosen, chosen_done = p, done
            if done < fallback_done:  # none in time: the soonest done (ties: the more accurate)
                fallback, fallback_done = p, done
        return [(chosen if chosen is not None else fallback, size)]


class MPRecSplit(MPRec):
    kind = "mprec_split"

    def __init__(self, paths: list[PathProfile], min_size: int, slack: float = 1.0) -> None:
        super().__init__(paths, slack)
        self.min_size = min_size
        self.fastest: dict[str, PathProfile] = {}
        for p in paths:  # each device's fastest path at a large size
            if p.device not in self.fastest or p.service_ms(1024) < self.fastest[p.device].service_ms(1024):
                self.fastest[p.device] = p

    def choose(self, size: int, target_ms: float, wait_ms: dict[str, float]) -> Choice:
        single = super().choose(size, target_ms, wait_ms)
        path = single[0][0]
        single_done = wait_ms.get(path.device, 0.0) + path.service_ms(size)
        if single_done <= target_ms * self.slack or size < self.min_size or len(self.fastest) < 2:
            return single
        # Parts in proportion to each device's speed (samples per ms at this size).
        speed = {d: size / p.service_ms(size) for d, p in self.fastest.items()}
        total = sum(speed.values())
        parts, left = [], size
        for i, (d, p) in enumerate(self.fastest.items()):
            part = left if i == len(self.fastest) - 1 else max(1, round(size * speed[d] / total))
            part = min(part, left)
            if part > 0:
                parts.append((p, part))
                left -= part
        split_done = max(wait_ms.get(p.device, 0.0) + p.service_ms(n) for p, n in parts)
        return parts if split_done < single_done else single

    @classmethod
    def instances(cls, profiles: Sequence[PathProfile], sizes: np.ndarray, cfg: Any) -> list:
        if len({p.device for p in profiles}) < 2:
            return []  # nothing to split across
        return [cls(list(profiles), cfg.split_min_size, slack) for slack in cfg.mprec_slack]


# Every policy the study knows, by kind: a new policy is a class above and its kind here (and in the
# `policies` list of conf/serving.yaml to simulate it by default).
REGISTRY = {cls.kind: cls for cls in (Static, SizeThreshold, MPRec, MPRecSplit)}
