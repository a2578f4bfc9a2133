"""External-memory plan of a scheduled program: one region per tensor, constants, code.

Every activation tensor of the graph gets its own region (no reuse, so any tensor can
be inspected after a run and the addresses depend only on the graph and the
configuration). A region holds the tensor as a row-major matrix ``[rows, cols]``
(``rows`` = product of the leading axes) of little-endian ``ebytes``-byte elements, each
row padded to whole bus words (``row_stride`` bytes). Two ops are pure views and get no
region of their own:

* ``take_rows``: the output is rows ``start .. start+count`` of the input's region;
* ``prepend_row``: the output region holds the constant row (a data segment) followed
  by the input, so the input's producer writes straight into rows ``1 ..`` of it.

Layout (byte addresses, every region aligned to :data:`REGION_ALIGN`):
``[constants (weights, requantization records, unit constants)] [activations] [code]``.
Regions end with :data:`TAIL_PAD` spare bytes, because vector LOADs read whole V lines
and may read past the last element of the last row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["REGION_ALIGN", "TAIL_PAD", "element_bytes", "Region", "MemoryPlan"]

REGION_ALIGN = 64
TAIL_PAD = 256


def element_bytes(bits: int) -> int:
    """Bytes per element in external memory for a ``bits``-wide integer."""
    if bits <= 8:
        return 1
    if bits <= 16:
        return 2
    if bits <= 32:
        return 4
    raise ValueError(f"{bits}-bit tensors are not supported in external memory")


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Region:
    """A row-major matrix in external memory (a tensor or a view of one)."""
    addr: int
    rows: int
    cols: int
    ebytes: int
    stride: int

    def row(self, r: int) -> int:
        return self.addr + r * self.stride

    def view_rows(self, start: int, count: int) -> "Region":
        if start < 0 or start + count > self.rows:
            raise ValueError(f"rows {start}..{start + count} outside a {self.rows}-row region")
        return Region(self.row(start), count, self.cols, self.ebytes, self.stride)

    def as_dict(self) -> dict[str, Any]:
        return {"addr": self.addr, "rows": self.rows, "cols": self.cols, "ebytes": self.ebytes,
                "stride": self.stride}


@dataclass
class MemoryPlan:
    """Bump allocator over external memory with named, kind-tagged blocks (deterministic)."""
    bus_bytes: int
    next: int = 0
    blocks: list[tuple[str, str, int, int]] = field(default_factory=list)  # (kind, name, addr, size)

    def take(self, size: int, name: str, kind: str) -> int:
        align = max(REGION_ALIGN, self.bus_bytes)
        addr = _ceil(self.next, align) * align
        self.next = addr + max(size, 0)
        self.blocks.append((kind, name, addr, size))
        return addr

    def stride_for(self, cols: int, ebytes: int) -> int:
        return _ceil(cols * ebytes, self.bus_bytes) * self.bus_bytes

    def tensor(self, name: str, rows: int, cols: int, ebytes: int) -> Region:
        stride = self.stride_for(cols, ebytes)
        addr = self.take(rows * stride + TAIL_PAD, name, "activation")
        return Region(addr, rows, cols, ebytes, stride)

    def bytes_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for kind, _, _, size in self.blocks:
            out[kind] = out.get(kind, 0) + size
        return out
