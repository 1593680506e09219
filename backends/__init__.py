"""One adapter per platform, resolved lazily by name so no optional framework is imported up front.

>>> from backends import adapter_class
>>> adapter_class("cpu").name
'cpu'
"""

from __future__ import annotations

import importlib

from backends.base import Backend, BackendConfig, BackendUnavailable, DeviceInfo

__all__ = ["Backend", "BackendConfig", "BackendUnavailable", "DeviceInfo", "adapter_class", "names",
           "resolve_name"]

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
