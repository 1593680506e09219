"""Large CPU weights (the embedding tables) on 2 MB pages, where Linux's transparent huge pages allow it.

A random table row costs a DRAM access and, on 4 KB pages, a page walk too: the Kaggle tables' 2.16 GB span
540k pages, far beyond any TLB. Copied into memory advised MADV_HUGEPAGE (the kernel's `madvise` mode, the
usual default, gives huge pages only to regions that ask), they span ~1,100 pages, and the lookup of
q = 4096 took 0.93 instead of 1.57 ms on 2 EPYC cores (1.69x; 1.64x at q = 1024; docs/performance.md). The
weights keep their values, dtype and shape; only their memory moves (`param.data`), once, at prepare.

>>> import torch
>>> table = torch.nn.Embedding(1000, 16)
>>> before = table.weight.detach().clone()
>>> on_huge_pages(table, min_bytes=1) == (64_000 if available() else 0)   # the weight's bytes, moved
True
>>> on_huge_pages(table, min_bytes=1), torch.equal(table.weight, before)  # once only; values kept
(0, True)
"""

from __future__ import annotations

import mmap
import weakref
from pathlib import Path

import numpy as np
import torch

MIN_BYTES = 64 << 20  # smaller tensors stay where they are: they are cache-resident or cheap to walk
HUGE_PAGE = 2 << 20
_SYSFS = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# The tensors moved here, by id (a tensor shared by two models moves once); weak, so a freed tensor's entry
# goes with it and a later tensor at the same address or id is never taken for one already moved.
_moved: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()


def thp_mode() -> str:
    """The kernel's transparent-huge-page mode (always, madvise or never), or why it is unknown."""
    try:
        text = _SYSFS.read_text()
    except OSError:
        return "unknown (no transparent huge pages here)"
    chosen = [word.strip("[]") for word in text.split() if word.startswith("[")]
    return chosen[0] if chosen else text.strip()


def available() -> bool:
    return hasattr(mmap, "MADV_HUGEPAGE") and thp_mode() in ("always", "madvise")


def on_huge_pages(model: torch.nn.Module, min_bytes: int = MIN_BYTES) -> int:
    """Move every contiguous CPU parameter and buffer of `model` of at least `min_bytes` into memory advised
    for huge pages; the bytes moved (0 where the platform has none)."""
    if not available():
        return 0
    moved = 0
    for module in model.modules():
        for slots in (module._parameters, module._buffers):
            for tensor in slots.values():
                if (tensor is None or tensor.device.type != "cpu" or not tensor.is_contiguous()
                        or _moved.get(id(tensor)) is tensor
                        or tensor.numel() * tensor.element_size() < min_bytes):
                    continue
                with torch.no_grad():
                    tensor.data = _advised_copy(tensor)
                _moved[id(tensor)] = tensor
                moved += tensor.numel() * tensor.element_size()
    return moved


def _advised_copy(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`'s values in a fresh anonymous mapping advised MADV_HUGEPAGE before any page is touched, its
    start aligned to 2 MB; the mapping lives as long as the tensor (through the numpy array it views)."""
    nbytes = tensor.numel() * tensor.element_size()
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_HUGEPAGE)
    start = np.frombuffer(region, dtype=np.uint8, count=1).ctypes.data
    offset = -start % HUGE_PAGE
    raw = np.frombuffer(region, dtype=np.uint8, count=nbytes, offset=offset)
    out = torch.from_numpy(raw).view(tensor.dtype).view(tensor.shape)
    out.copy_(tensor)
    return out
