"""`python -m backends`: which backends can run here, why not, on what device, with how much memory."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import backends


def main() -> int:
    table = Table(title="backends", title_justify="left")
    for column in ("backend", "available", "device", "memory", "framework"):
        table.add_column(column, no_wrap=True)
    table.add_column("why / what to install")
    for name in backends.names():
        cls = backends.adapter_class(name)
        ok, reason = cls.available()
        adapter = cls(backends.typed_config(backends.default_config(name)))  # its conf/backend/<name>.yaml
        device, memory, framework = "", "", ""
        try:
            if ok:
                info = adapter.device_info()
                device, framework = info.name, f"{info.framework} {info.framework_version}"
                memory = f"{info.memory_bytes / 2**30:,.1f} GiB"
            elif cls.nominal_memory_bytes:
                memory = f"{cls.nominal_memory_bytes / 2**30:,.2f} GiB (nominal)"
        except Exception as exc:  # noqa: BLE001 - a broken install is reported, not raised
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        table.add_row(name, "yes" if ok else "no", device, memory, framework, escape(reason),
                      style=None if ok else "dim")
    console = Console(width=max(Console().width, 160))
    console.print(table)
    console.print(f"backend.name=auto resolves to: {backends.resolve_name('auto')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
