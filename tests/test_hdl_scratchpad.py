"""Scratchpad read timing: reads are registered (block-RAM style), one cycle after the address.

Every reader in ``hdl/controller.py`` and ``hdl/dma.py`` addresses the next cycle's line;
this checks the one-cycle read latency they rely on, and that a read of a line being
written in the same cycle returns the old line (read-first).
"""

from amaranth.sim import Simulator

from hdl.scratchpad import Scratchpad


def _run(bench_fn, dut):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench_fn)
    sim.run()


def test_read_data_arrives_one_cycle_after_address():
    """Line ``a`` of every bank is on ``data`` in the cycle after ``addr = a``, not in the same one."""
    dut = Scratchpad(width=16, depth=8, banks=2, read_ports=2)

    async def bench(ctx):
        for bank in range(2):
            for addr in range(8):
                ctx.set(dut.wr.en, 1)
                ctx.set(dut.wr.bank, bank)
                ctx.set(dut.wr.addr, addr)
                ctx.set(dut.wr.data, 100 * bank + addr + 1)
                await ctx.tick()
        ctx.set(dut.wr.en, 0)
        ctx.set(dut.rd0.addr, 3)
        ctx.set(dut.rd1.addr, 5)
        await ctx.tick()
        ctx.set(dut.rd0.addr, 6)
        ctx.set(dut.rd1.addr, 0)
        # the address just changed; data still holds the lines addressed before the edge
        assert [ctx.get(dut.rd0.data[b]) for b in range(2)] == [4, 104]
        assert [ctx.get(dut.rd1.data[b]) for b in range(2)] == [6, 106]
        await ctx.tick()
        assert [ctx.get(dut.rd0.data[b]) for b in range(2)] == [7, 107]
        assert [ctx.get(dut.rd1.data[b]) for b in range(2)] == [1, 101]

    _run(bench, dut)


def test_read_during_write_returns_old_line():
    """A line read in the cycle it is written yields its previous content (read-first port)."""
    dut = Scratchpad(width=8, depth=4)

    async def bench(ctx):
        ctx.set(dut.wr.en, 1)
        ctx.set(dut.wr.addr, 2)
        ctx.set(dut.wr.data, 11)
        await ctx.tick()
        ctx.set(dut.wr.data, 22)
        ctx.set(dut.rd0.addr, 2)
        await ctx.tick()
        ctx.set(dut.wr.en, 0)
        assert ctx.get(dut.rd0.data[0]) == 11
        await ctx.tick()
        assert ctx.get(dut.rd0.data[0]) == 22

    _run(bench, dut)


def test_split_scratchpad_takes_two_writes_per_cycle_in_different_halves():
    """Two writers, one per half, in the same cycle both land; every read port sees the whole
    depth (odd depth: the low half has ceil(depth/2) lines) one cycle after the address."""
    from hdl.scratchpad import SplitScratchpad
    dut = SplitScratchpad(width=16, depth=7, read_ports=2)
    assert dut.depth_lo == 4

    async def bench(ctx):
        for i in range(4):
            ctx.set(dut.wr0.en, 1)
            ctx.set(dut.wr0.addr, i)                 # low half
            ctx.set(dut.wr0.data, 10 + i)
            ctx.set(dut.wr1.en, i < 3)
            ctx.set(dut.wr1.addr, 4 + i)             # high half, same cycles
            ctx.set(dut.wr1.data, 20 + i)
            await ctx.tick()
        ctx.set(dut.wr0.en, 0)
        ctx.set(dut.wr1.en, 0)
        ctx.set(dut.wr1.addr, 1)                     # a writer may address either half
        ctx.set(dut.wr1.data, 99)
        ctx.set(dut.wr1.en, 1)
        await ctx.tick()
        ctx.set(dut.wr1.en, 0)
        want = [10, 99, 12, 13, 20, 21, 22]
        for addr in range(7):
            ctx.set(dut.rd0.addr, addr)
            ctx.set(dut.rd1.addr, 6 - addr)
            await ctx.tick()
            assert ctx.get(dut.rd0.data[0]) == want[addr]
            assert ctx.get(dut.rd1.data[0]) == want[6 - addr]

    _run(bench, dut)
