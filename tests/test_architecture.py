"""The layers of docs/architecture.md hold: imports point one way, backends see only the contract, and
planning a run (a dry run, a sweep's validation) loads neither torch nor mlflow.

Every import counts, also one inside a function: a lazy import ties two layers as much as a top one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from .conftest import REPO, harness_env

# Each layer and the layers it may import (docs/architecture.md, "Layers"). `backends` stands for every
# adapter module; a layer may always import itself.
ALLOWED: dict[str, set[str]] = {
    "harness.core": set(),
    "harness.workload": {"harness.core"},
    "harness.data": {"harness.core"},
    "backends": {"harness.core", "harness.workload"},
    "harness.tracking": {"harness.core"},
    "harness.pipeline": {"harness.core", "harness.workload", "harness.data", "backends", "harness.tracking"},
    "harness.analysis": {"harness.core", "harness.tracking"},
    "harness.serving": {"harness.core", "harness.workload", "harness.data", "backends", "harness.tracking",
                        "harness.pipeline", "harness.analysis"},
    "harness.app": {"harness.core", "harness.workload", "harness.data", "backends", "harness.tracking",
                    "harness.pipeline", "harness.analysis", "harness.serving"},
    "harness.__main__": {"harness.app"},
    "harness.doctor": {"harness.app"},
    "harness.leftovers": {"harness.app"},
}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "backends":
        return "backends"
    if parts[0] == "harness" and len(parts) > 1:
        return ".".join(parts[:2])
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[tuple[str, str], str]:
    """(layer, imported layer) -> the first place it happens, for every import in harness/ and backends/."""
    edges: dict[tuple[str, str], str] = {}
    for path in sorted([*(REPO / "harness").rglob("*.py"), *(REPO / "backends").rglob("*.py")]):
        module = module_name(path)
        source = layer_of(module)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                dest = layer_of(target)
                if source and dest and dest != source:
                    edges.setdefault((source, dest), f"{path.relative_to(REPO)}:{node.lineno}")
    return edges


def test_every_import_points_down_the_layers():
    wrong = {f"{src} -> {dst} ({where})" for (src, dst), where in imports().items()
             if dst not in ALLOWED.get(src, set())}
    assert not wrong, "imports against docs/architecture.md's layers:\n" + "\n".join(sorted(wrong))


def test_the_layers_have_no_cycle():
    graph = defaultdict(set)
    for src, dst in imports():
        graph[src].add(dst)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start])

    assert not [layer for layer in list(graph) if reaches(layer, layer, set())]


def test_backends_depend_only_on_the_workload_contract():
    used = {dst for (src, dst) in imports() if src == "backends"}
    assert used <= {"harness.core", "harness.workload"}, used


def test_planning_a_run_loads_neither_torch_nor_mlflow():
    code = ("import sys; from harness.core.conf import compose; from harness.pipeline.plan import plan; "
            "p = plan(compose(['+backend=cpu', 'representation=dhe'])); "
            "print(p.path, 'torch' in sys.modules, 'mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=harness_env(),
                         timeout=120, check=True).stdout.split()
    assert out == ["dhe@cpu", "False", "False"]
