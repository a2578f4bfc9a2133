"""cocotb testbench of hdl.top.Accelerator: runs programs through the external memory model.

Parameters (``tb_params()``): ``cases``, the path of a JSON list written by the launching
test. Each case names a program file (``vit2hw.isa.Program.to_bytes``), the memory size,
latency and ``ready_prob`` of :class:`sim.memory.MemoryModel`, the output regions to compare
(``addr``, ``rows``, ``cols``, ``ebytes``, ``row_bytes``, ``signed``, ``expected`` computed by
the test with ``vit2hw.intops``) and, optionally, ``expected_cycles`` (the cycle model's
prediction, compared with the ``cycles`` counter of the RTL: equal, or with
``cycles_check: lower_bound`` under memory back-pressure, not below it). All cases run in one
simulation, with a reset between them.
"""

from __future__ import annotations

import json
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from sim.memory import MemoryModel
from sim.runner import tb_params
from vit2hw.isa import Program, unpack_rows


async def _run_case(dut, case: dict) -> None:
    prog = Program.from_bytes(Path(case["program"]).read_bytes())
    mem = MemoryModel(dut, case["mem_size"], latency=case.get("latency", 1),
                      ready_prob=case.get("ready_prob", 1.0), seed=case.get("seed", 0))
    mem.load_segments(prog.image())
    imem = MemoryModel(dut, case["mem_size"], latency=case.get("latency", 1),
                       ready_prob=case.get("ready_prob", 1.0), seed=case.get("seed", 0) + 1000,
                       prefix="imem__", data=mem.data)
    wmem = MemoryModel(dut, case["mem_size"], latency=case.get("latency", 1),
                       ready_prob=case.get("ready_prob", 1.0), seed=case.get("seed", 0) + 2000,
                       prefix="wmem__", data=mem.data)
    dut.rst.value = 1
    dut.start.value = 0
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    servers = [cocotb.start_soon(x.run()) for x in (mem, imem, wmem)]
    await RisingEdge(dut.clk)
    dut.prog_addr.value = prog.entry
    dut.start.value = 1
    await RisingEdge(dut.clk)
    dut.start.value = 0
    limit = case.get("max_cycles", 200_000)
    for _ in range(limit):
        await RisingEdge(dut.clk)
        if int(dut.done.value):
            break
    else:
        raise AssertionError(f"{case['name']}: no done within {limit} cycles")
    for s in servers:
        s.cancel()
    assert not int(dut.error.value), f"{case['name']}: controller stopped on an unknown opcode"
    cycles = int(dut.cycles.value)
    dut._log.info("%s: %d cycles (%d activation reads, %d weight reads, %d instruction reads, %d writes)",
                  case["name"], cycles, mem.reads, wmem.reads, imem.reads, mem.writes)
    for chk in case["checks"]:
        got = unpack_rows(mem.read(chk["addr"], chk["rows"] * chk["row_bytes"]), chk["rows"], chk["cols"],
                          chk["ebytes"], chk["row_bytes"], chk.get("signed", True))
        want = np.asarray(chk["expected"], np.int64)
        bad = np.argwhere(got != want)
        assert bad.size == 0, (f"{case['name']}/{chk.get('what', '')}: {len(bad)} mismatches, first at "
                               f"{bad[:4].tolist()}: got {got[tuple(bad[0])]} want {want[tuple(bad[0])]}")
    want_cycles = case.get("expected_cycles")
    if want_cycles is not None and case.get("cycles_check", "equal") == "equal":
        assert cycles == want_cycles, f"{case['name']}: RTL took {cycles} cycles, the cycle model predicts {want_cycles}"
    elif want_cycles is not None:
        assert cycles >= want_cycles, f"{case['name']}: RTL took {cycles} cycles, below the model's bound {want_cycles}"


@cocotb.test()
async def run_programs(dut):
    """Every case's outputs equal the intops scoreboard; cycles equal the cycle model where given."""
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    cases = json.loads(Path(tb_params()["cases"]).read_text())
    for case in cases:
        await _run_case(dut, case)
