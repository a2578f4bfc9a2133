"""Scratchpad memory: ``banks`` memories of ``width``-bit lines, one write port, N read ports.

A write goes to one bank (``wr.bank``); a read returns the same line of every bank at
once (``rd[i].data[b]`` = bank ``b``). That one shape serves all five scratchpads of the
accelerator (see :class:`vit2hw.isa.Geometry`):

* A and B: ``rows`` / ``cols`` banks of bus-word lines; matrix row ``r`` lives in bank
  ``r % banks``, so one read yields K-step ``k`` of every row of a tile;
* O, V, P: a single bank of wide lines.

Reads are synchronous (registered read ports, read-first): the line addressed in one
cycle is on ``data`` in the next, the pattern FPGA tools map to block RAM (combinational
reads of these sizes become LUT RAM and flip-flops, which does not fit a 16×16 build).
Every reader therefore drives the address of the beat it will use in the *next* cycle,
computed from its counters' next values, so engines still take one beat per cycle and no
cycle is added. A read of a line written in the same cycle returns the old line.
"""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Scratchpad", "SplitScratchpad", "write_port_signature", "read_port_signature"]


def _bits(n: int) -> int:
    return max(1, (n - 1).bit_length())


def write_port_signature(width: int, depth: int, banks: int) -> wiring.Signature:
    """Driver's view of a write port: ``en`` writes ``data`` at ``addr`` of bank ``bank``."""
    return wiring.Signature({"en": Out(1), "bank": Out(_bits(banks)), "addr": Out(_bits(depth)),
                             "data": Out(width)})


def read_port_signature(width: int, depth: int, banks: int) -> wiring.Signature:
    """Driver's view of a read port: ``data`` is line ``addr`` (of the previous cycle) of every bank."""
    return wiring.Signature({"addr": Out(_bits(depth)), "data": In(data.ArrayLayout(width, banks))})


class Scratchpad(wiring.Component):
    """``banks`` × ``depth`` lines of ``width`` bits.

    Members
    -------
    wr : In(write_port_signature(...))
    rd0 .. rd{read_ports-1} : In(read_port_signature(...))
    """

    def __init__(self, width: int, depth: int, banks: int = 1, read_ports: int = 1):
        if width < 1 or depth < 1 or banks < 1 or read_ports < 1:
            raise ValueError("scratchpad width, depth, banks and read ports must be positive")
        self.width, self.depth, self.banks, self.read_ports = width, depth, banks, read_ports
        members = {"wr": In(write_port_signature(width, depth, banks))}
        for i in range(read_ports):
            members[f"rd{i}"] = In(read_port_signature(width, depth, banks))
        super().__init__(members)

    def rd(self, i: int):
        return getattr(self, f"rd{i}")

    def elaborate(self, platform):
        m = Module()
        for b in range(self.banks):
            mem = memory.Memory(shape=self.width, depth=self.depth, init=[])
            m.submodules[f"bank{b}"] = mem
            wp = mem.write_port()
            bank_hit = (self.wr.bank == b) if self.banks > 1 else 1
            m.d.comb += [wp.addr.eq(self.wr.addr), wp.data.eq(self.wr.data),
                         wp.en.eq(self.wr.en & bank_hit)]
            for i in range(self.read_ports):
                rp = mem.read_port(domain="sync")
                port = self.rd(i)
                m.d.comb += [rp.addr.eq(port.addr), port.data[b].eq(rp.data)]
        return m


class SplitScratchpad(wiring.Component):
    """One bank of ``depth`` lines stored as two halves with a write port each, so two writers
    can write in the same cycle as long as they write different halves.

    ``wr0`` and ``wr1`` may each address any line; a line ``< depth_lo`` (``= ceil(depth/2)``)
    is in the low half. Both writing the same half in one cycle is a program error (the V
    write-port rule of :mod:`vit2hw.hazards` prevents it); ``wr0`` then wins. The read ports
    behave as :class:`Scratchpad`'s (synchronous, read-first) over the whole depth.
    """

    def __init__(self, width: int, depth: int, read_ports: int = 1):
        if width < 1 or depth < 2 or read_ports < 1:
            raise ValueError("a split scratchpad needs a positive width, two lines and a read port")
        self.width, self.depth, self.read_ports = width, depth, read_ports
        self.depth_lo = -(-depth // 2)
        members = {"wr0": In(write_port_signature(width, depth, 1)), "wr1": In(write_port_signature(width, depth, 1))}
        for i in range(read_ports):
            members[f"rd{i}"] = In(read_port_signature(width, depth, 1))
        super().__init__(members)

    def rd(self, i: int):
        return getattr(self, f"rd{i}")

    def elaborate(self, platform):
        from amaranth.hdl import Mux, Signal
        m = Module()
        lo = self.depth_lo
        halves = []
        for h, depth in enumerate((lo, self.depth - lo)):
            mem = memory.Memory(shape=self.width, depth=depth, init=[])
            m.submodules[f"half{h}"] = mem
            wp = mem.write_port()
            hit0 = (self.wr0.addr >= lo) if h else (self.wr0.addr < lo)
            hit1 = (self.wr1.addr >= lo) if h else (self.wr1.addr < lo)
            use0 = self.wr0.en & hit0
            m.d.comb += [wp.en.eq(use0 | (self.wr1.en & hit1)),
                         wp.addr.eq(Mux(use0, self.wr0.addr, self.wr1.addr) - (lo if h else 0)),
                         wp.data.eq(Mux(use0, self.wr0.data, self.wr1.data))]
            halves.append(mem)
        for i in range(self.read_ports):
            port = self.rd(i)
            high = Signal(name=f"rd{i}_high")          # which half the previous cycle addressed
            m.d.sync += high.eq(port.addr >= lo)
            outs = []
            for h, mem in enumerate(halves):
                rp = mem.read_port(domain="sync")
                m.d.comb += rp.addr.eq(port.addr - (lo if h else 0))
                outs.append(rp.data)
            m.d.comb += port.data[0].eq(Mux(high, outs[1], outs[0]))
        return m
