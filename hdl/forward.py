"""On-chip forwarding of GEMM results to the vector units (the MOVE instruction).

:class:`MoveUnit` reads rows of the O scratchpad (``cols`` int32 lanes per line, a row of
``src_row_lines`` lines) and emits them as ``lanes``-wide beats, ``dst_row_lines`` beats per
row: beat ``l`` of a row is lanes ``[(l % k)·lanes, (l % k + 1)·lanes)`` of the row's O line
``l // k``, ``k = cols / lanes``. The vector engine writes the beats to consecutive V lines,
so a GEMM result reaches the softmax (or any vector operation) without a STORE to external
memory and a LOAD back.

One beat per cycle: the O read is synchronous, so the line of a beat is addressed one cycle
before the beat leaves: ``n`` lines take ``n + 1`` cycles (``vit2hw.cyclemodel.move_cycles``),
plus the vector engine's start cycle.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .scratchpad import read_port_signature

__all__ = ["MoveUnit"]


class MoveUnit(wiring.Component):
    """O rows → ``lanes``-wide beats (see the module docstring).

    Members
    -------
    start : In(1)
        Begin with ``src``, ``rows``, ``src_row_lines``, ``dst_row_lines`` (sampled).
    o_rd : Out(read_port_signature(cols·32, o_depth, 1))
        The O scratchpad read port (synchronous).
    valid : Out(1), data : Out(lanes·32)
        One beat per cycle while valid (no back-pressure: V always takes it).
    busy : Out(1)
        Beats are still to be read or sent.
    """

    def __init__(self, cols: int, lanes: int, o_depth: int):
        if cols % lanes:
            raise ValueError(f"MOVE needs cols ({cols}) to be a multiple of lanes ({lanes})")
        self.cols, self.lanes, self.k = cols, lanes, cols // lanes
        super().__init__({
            "start": In(1), "src": In(24), "rows": In(16), "src_row_lines": In(16), "dst_row_lines": In(16),
            "o_rd": Out(read_port_signature(cols * 32, o_depth, 1)),
            "valid": Out(1), "data": Out(lanes * 32), "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        k = self.k
        issuing = Signal()
        base, q = Signal(24), Signal(16)          # the row's first O line, the beat's line in it
        r = Signal(range(k))                      # the beat's lane group in that line
        beat = Signal(16)                         # beat index inside the row
        rows_left = Signal(16)
        srl, drl = Signal(16), Signal(16)
        with m.If(self.start):
            m.d.sync += [issuing.eq((self.rows != 0) & (self.dst_row_lines != 0)), base.eq(self.src),
                         q.eq(0), r.eq(0), beat.eq(0), rows_left.eq(self.rows),
                         srl.eq(self.src_row_lines), drl.eq(self.dst_row_lines)]
        with m.Elif(issuing):
            with m.If(beat == drl - 1):
                m.d.sync += [beat.eq(0), q.eq(0), r.eq(0), base.eq(base + srl), rows_left.eq(rows_left - 1)]
                with m.If(rows_left == 1):
                    m.d.sync += issuing.eq(0)
            with m.Else():
                m.d.sync += beat.eq(beat + 1)
                if k == 1:
                    m.d.sync += q.eq(q + 1)
                else:
                    with m.If(r == k - 1):
                        m.d.sync += [r.eq(0), q.eq(q + 1)]
                    with m.Else():
                        m.d.sync += r.eq(r + 1)
        m.d.comb += self.o_rd.addr.eq(base + q)
        # the line read this cycle arrives next cycle: the beat leaves then, with its lane group
        sending, group = Signal(), Signal(range(k))
        m.d.sync += [sending.eq(issuing & ~self.start), group.eq(r)]
        m.d.comb += [self.valid.eq(sending), self.data.eq(self.o_rd.data[0].word_select(group, self.lanes * 32)),
                     self.busy.eq(issuing | sending)]
        return m
