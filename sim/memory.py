"""cocotb model of the external memory behind one of the accelerator's ports (``mem``,
``imem``; two models given the same ``data`` serve both ports from one memory).

Implements the bus of :mod:`hdl.dma`: a request is accepted in a cycle where
``req_valid`` and ``req_ready`` are high; a read is answered ``latency`` cycles later
(``latency >= 1``) with one ``resp_valid`` cycle, responses in request order; a write
applies ``req_wdata`` under ``req_wstrb`` at once (so requests take effect in order).
``ready_prob < 1`` lowers ``req_ready`` at random to exercise back-pressure.

The contents are a flat little-endian ``bytearray`` filled from numpy arrays, bytes or
:class:`vit2hw.isa.Segment` s and read back the same way.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Iterable

import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["MemoryModel"]


class MemoryModel:
    """Byte-addressed memory of ``size`` bytes serving one accelerator port.

    Parameters
    ----------
    dut : cocotb handle of the top level (ports ``mem__req_*`` / ``mem__resp_*``, ``clk``)
    size : bytes of memory
    latency : cycles from an accepted read to its response (>= 1)
    ready_prob : probability that ``req_ready`` is high in a cycle
    prefix : the port's signal name prefix
    data : the contents to share with another port's model (default: ``size`` zero bytes)
    """

    def __init__(self, dut, size: int, latency: int = 1, ready_prob: float = 1.0, seed: int = 0,
                 prefix: str = "mem__", data: bytearray | None = None):
        if latency < 1:
            raise ValueError("memory latency must be at least one cycle")
        self.dut = dut
        self.p = {n: getattr(dut, prefix + n) for n in (
            "req_valid", "req_ready", "req_addr", "req_we", "req_wdata", "req_wstrb",
            "resp_valid", "resp_rdata")}
        self.bus_bytes = len(self.p["req_wdata"]) // 8
        self.data = bytearray(size) if data is None else data
        self.latency = latency
        self.ready_prob = ready_prob
        self.rng = random.Random(seed)
        self.reads = 0
        self.writes = 0

    # ---------------------------------------------------------------- contents
    def write(self, addr: int, blob: bytes | np.ndarray) -> None:
        if isinstance(blob, np.ndarray):
            blob = blob.tobytes()
        if addr < 0 or addr + len(blob) > len(self.data):
            raise ValueError(f"write [{addr:#x}, {addr + len(blob):#x}) outside the {len(self.data)}-byte memory")
        self.data[addr:addr + len(blob)] = blob

    def load_segments(self, segments: Iterable) -> None:
        for s in segments:
            self.write(s.addr, s.data)

    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.data[addr:addr + n])

    # ---------------------------------------------------------------- bus
    def _word(self, addr: int) -> int:
        if addr % self.bus_bytes or addr + self.bus_bytes > len(self.data):
            raise AssertionError(f"bus access at {addr:#x}: unaligned or outside memory")
        return int.from_bytes(self.data[addr:addr + self.bus_bytes], "little")

    async def run(self) -> None:
        """Serve the port forever (start with ``cocotb.start_soon``)."""
        p = self.p
        pending: deque[tuple[int, int]] = deque()
        cycle = 0
        p["req_ready"].value = 0
        p["resp_valid"].value = 0
        while True:
            await RisingEdge(self.dut.clk)
            cycle += 1
            if pending and pending[0][0] <= cycle:
                _, word = pending.popleft()
                p["resp_valid"].value = 1
                p["resp_rdata"].value = word
            else:
                p["resp_valid"].value = 0
            ready = self.ready_prob >= 1.0 or self.rng.random() < self.ready_prob
            p["req_ready"].value = int(ready)
            await ReadOnly()
            if ready and int(p["req_valid"].value):
                addr = int(p["req_addr"].value)
                if int(p["req_we"].value):
                    self.writes += 1
                    wdata = int(p["req_wdata"].value)
                    strb = int(p["req_wstrb"].value)
                    self._word(addr)
                    for b in range(self.bus_bytes):
                        if strb >> b & 1:
                            self.data[addr + b] = (wdata >> (8 * b)) & 0xFF
                else:
                    self.reads += 1
                    pending.append((cycle + self.latency, self._word(addr)))
