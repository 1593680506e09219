"""One adapter per platform, resolved lazily by name so no optional framework is imported up front.

The registry also types the `backend` config section: each adapter's config dataclass is its schema,
its YAML in conf/backend/ its defaults. Backends depend only on the harness's contract (harness.core
and harness.workload), never on its orchestration (docs/architecture.md).

>>> from backends import adapter_class
>>> adapter_class("cpu").name
'cpu'
"""

from __future__ import annotations

import dataclasses
import importlib

from omegaconf import OmegaConf

from backends.base import Backend, BackendConfig, BackendUnavailable, DeviceInfo
from harness.core.conf import config_dir
from harness.core.errors import ConfigError
from harness.core.schema import typed

__all__ = ["Backend", "BackendConfig", "BackendUnavailable", "DeviceInfo", "adapter_class", "names",
           "resolve_name", "typed_config", "resolve_auto", "default_config"]

# name -> "module:Class". The module must import its framework only inside methods.
ADAPTERS: dict[str, str] = {
    "cpu": "backends.cpu:CpuBackend",
    "cuda": "backends.cuda:CudaBackend",
    "tpu": "backends.tpu:TpuBackend",
    "ipu": "backends.ipu:IpuBackend",
    "tf": "backends.tf:TfBackend",
}
# `backend.name=auto` takes the first available of these.
AUTO_ORDER: tuple[str, ...] = ("cuda", "cpu")


def names() -> list[str]:
    return list(ADAPTERS)


def adapter_class(name: str) -> type[Backend]:
    try:
        target = ADAPTERS[name]
    except KeyError:
        raise KeyError(
            f"backend.name={name!r} is not a known backend; choose one of {names()} or 'auto' "
            "(conf/backend/; select one with +backend=<name>)"
        ) from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def resolve_name(name: str) -> str:
    """`auto` -> the first available backend of AUTO_ORDER; any other name is returned as is."""
    if name != "auto":
        adapter_class(name)  # validates the name
        return name
    for candidate in AUTO_ORDER:
        if adapter_class(candidate).available()[0]:
            return candidate
    return "cpu"


def typed_config(node: dict) -> BackendConfig:
    """The `backend` section as the config dataclass of the adapter `name` selects, checked; `auto`
    stays a bare BackendConfig until `resolve_auto`."""
    name = (node or {}).get("name")
    if name is None:
        raise ConfigError("backend.name", "missing: auto, or a backend selected with +backend=<name>")
    if name == "auto":
        return typed(BackendConfig, node, "backend")
    try:
        schema = adapter_class(name).config_class
    except KeyError as exc:
        raise ConfigError("backend.name", str(exc.args[0])) from None
    return typed(schema, node, "backend")


def default_config(name: str) -> dict:
    """The YAML defaults of backend `name` (conf/backend/<name>.yaml)."""
    path = config_dir() / "backend" / f"{name}.yaml"
    if not path.is_file():
        return {"name": name}
    node = OmegaConf.to_container(OmegaConf.load(path))
    return node if isinstance(node, dict) else {"name": name}


def resolve_auto(config: BackendConfig, name: str) -> BackendConfig:
    """`auto` resolved to `name`: that backend's YAML defaults with the values set inline on top."""
    inline = {k: v for k, v in dataclasses.asdict(config).items() if k != "name" and v is not None}
    return typed_config({**default_config(name), **inline, "name": name})
