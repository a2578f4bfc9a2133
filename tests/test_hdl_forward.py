"""MoveUnit (hdl/forward.py): O rows → lane-wide beats for V, with the real O scratchpad.

Checks, in Amaranth's simulator, that the beats are exactly the lanes a MOVE defines (row
``i``'s O lines in column order, ``dst_row_lines`` beats of ``lanes`` lanes, padding lanes
dropped), one per cycle with no gap, and that ``busy`` lasts ``lines + 1`` cycles
(``vit2hw.cyclemodel.move_cycles``).
"""

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hdl.forward import MoveUnit
from hdl.scratchpad import Scratchpad
from vit2hw.cyclemodel import move_cycles


class _Bench(Elaboratable):
    def __init__(self, cols, lanes, depth):
        self.spad = Scratchpad(cols * 32, depth, 1, 1)
        self.mv = MoveUnit(cols, lanes, depth)

    def elaborate(self, platform):
        m = Module()
        m.submodules.spad, m.submodules.mv = self.spad, self.mv
        wiring.connect(m, self.mv.o_rd, self.spad.rd0)
        return m


def _lanes(word: int, n: int) -> list[int]:
    return [((word >> (32 * i)) & 0xFFFFFFFF) for i in range(n)]


@pytest.mark.parametrize("cols,lanes,rows,srl,drl", [(8, 4, 3, 2, 3), (8, 2, 2, 1, 4), (4, 4, 5, 3, 3),
                                                     (12, 4, 2, 2, 5)])
def test_move_beats_and_cycles(cols, lanes, rows, srl, drl):
    """Every beat equals the MOVE definition, beats are back to back, busy = lines + 1 cycles."""
    depth, src = 32, 3
    rng = np.random.default_rng(cols * 100 + drl)
    o = rng.integers(0, 1 << 32, (depth, cols), dtype=np.uint64)
    want = o[src:src + rows * srl].reshape(rows, srl * cols)[:, :drl * lanes].reshape(rows * drl, lanes)
    dut = _Bench(cols, lanes, depth)
    mv, wr = dut.mv, dut.spad.wr
    got, busy_cycles = [], []

    async def bench(ctx):
        for line in range(depth):
            ctx.set(wr.en, 1)
            ctx.set(wr.addr, line)
            ctx.set(wr.data, sum(int(v) << (32 * c) for c, v in enumerate(o[line])))
            await ctx.tick()
        ctx.set(wr.en, 0)
        ctx.set(mv.src, src)
        ctx.set(mv.rows, rows)
        ctx.set(mv.src_row_lines, srl)
        ctx.set(mv.dst_row_lines, drl)
        ctx.set(mv.start, 1)
        await ctx.tick()
        ctx.set(mv.start, 0)
        for cycle in range(rows * drl + 10):
            if ctx.get(mv.busy):
                busy_cycles.append(cycle)
            if ctx.get(mv.valid):
                got.append((cycle, _lanes(ctx.get(mv.data), lanes)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert [g for _, g in got] == want.astype(np.int64).tolist()
    cycles = [c for c, _ in got]
    assert cycles == list(range(cycles[0], cycles[0] + rows * drl))            # no gaps
    assert busy_cycles == list(range(len(busy_cycles))) and len(busy_cycles) == move_cycles(rows * drl)

